"""The ClickHouse checkpoint store on its own: what is saved loads back unchanged, the newest
offset of a stream wins (also before the table merges), streams and topics stay apart, and a
checkpoint saved twice is one row."""

from __future__ import annotations

import asyncio

import pytest

from infra.store.clickhouse import make_client
from streams.core.checkpoint import Checkpoint
from streams.sinks.checkpoints import ClickHouseCheckpointStore
from streams.sinks.clickhouse import ClickHouseSink
from tests.integration.conftest import Infra
from tests.integration.pipeline import prepare, scalar

pytestmark = pytest.mark.integration


def test_checkpoints_round_trip_newest_offset_wins(infra: Infra) -> None:
    settings = infra.settings()
    prepare(settings)
    state = {"windows": {"1m": [1, "123.45000000", None]}, "ids": [7, 8, 9], "text": "ünïcode"}

    async def scenario() -> None:
        store = ClickHouseCheckpointStore(ClickHouseSink(lambda: make_client(settings)))
        assert await store.load("md.trades.v1", "binance:BTC-USDT") is None
        first = Checkpoint("md.trades.v1", "binance:BTC-USDT", 3, 41, state)
        newer = Checkpoint("md.trades.v1", "binance:BTC-USDT", 3, 97, {**state, "ids": [10]})
        other_stream = Checkpoint("md.trades.v1", "binance:ETH-USDT", 1, 5, {"x": 1})
        other_topic = Checkpoint("replay.md.trades.v1", "binance:BTC-USDT", 0, 2, {"y": 2})
        await store.save([first, other_stream])
        assert await store.load("md.trades.v1", "binance:BTC-USDT") == first
        await store.save([newer, other_topic])
        await store.save([newer])  # a retry after a lost acknowledgement writes the same row again
        assert await store.load("md.trades.v1", "binance:BTC-USDT") == newer
        assert await store.load("md.trades.v1", "binance:ETH-USDT") == other_stream
        assert await store.load("replay.md.trades.v1", "binance:BTC-USDT") == other_topic
        assert await store.load("md.trades.v1", "kraken:BTC-USD") is None

    asyncio.run(scenario())
    # readers see one row per stream; the disk keeps one once merged
    assert scalar(settings, "SELECT count() FROM candle_checkpoints FINAL") == 3
    client = make_client(settings)
    try:
        client.command("OPTIMIZE TABLE candle_checkpoints FINAL")
    finally:
        client.close()
    assert scalar(settings, "SELECT count() FROM candle_checkpoints") == 3
