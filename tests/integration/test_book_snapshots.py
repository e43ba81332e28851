"""`book_snapshots` (infra/store/migrations/0002_order_books.sql) through the book agent's store and the
worker's sink, on a real database: levels round-trip exactly and a snapshot written twice is one row."""

from __future__ import annotations

from decimal import Decimal

import pytest

from infra.store.clickhouse import client_for_url
from infra.store.migrate import apply_migrations
from schemas.events import BookSnapshot
from streams.agents.book import clickhouse_snapshot_store
from streams.core.orderbook import levels
from streams.sinks.clickhouse import ClickHouseSink
from tests.integration import chdb_fixture

chdb_server = chdb_fixture.chdb_server  # pytest finds fixtures by module attribute name

pytestmark = pytest.mark.integration


async def test_snapshots_round_trip_and_a_rewrite_dedupes(chdb_server: str) -> None:
    client_for_url(chdb_server).command("CREATE DATABASE IF NOT EXISTS books")
    apply_migrations(client_for_url(chdb_server, database="books"))
    sink = ClickHouseSink(lambda: client_for_url(chdb_server, database="books"))
    store = clickhouse_snapshot_store(sink)
    snaps = [
        BookSnapshot(venue="binance", symbol="ETH-USDT", event_ts_ns=1723161600123456789 + i * 10**10,
                     recv_ts_ns=1723161601000000000 + i, last_update_id=35346513512 + i,
                     bids=levels([("2683.80000000", "3.02920000"), ("2683.79", "0.0001")]),
                     asks=levels([("2683.81", "31.4395")]))
        for i in range(3)
    ]
    try:
        await store(snaps, 100)
        await store(snaps[1:2], 100)  # written again: a replay, a re-delivered message
    finally:
        sink.close()
    rows = client_for_url(chdb_server, database="books").query(
        "SELECT last_update_id, toUnixTimestamp64Nano(event_ts), depth, bid_prices, bid_sizes, ask_prices, "
        "ask_sizes, bid_prices[1] FROM book_snapshots FINAL ORDER BY event_ts").result_rows
    assert [r[0] for r in rows] == [s.last_update_id for s in snaps]
    first = rows[0]
    assert first[1] == snaps[0].event_ts_ns and first[2] == 100
    assert first[3:7] == ([Decimal("2683.8"), Decimal("2683.79")], [Decimal("3.0292"), Decimal("0.0001")],
                          [Decimal("2683.81")], [Decimal("31.4395")])
    assert first[7] == Decimal("2683.8")  # the best bid is the first element
