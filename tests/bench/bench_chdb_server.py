"""The chdb owner process over HTTP versus chdb opened in-process: insert_arrow throughput and the
latency of point queries (`SELECT 1` and a last-price `ORDER BY ts DESC LIMIT 1` over ~1M rows).

    python -m tests.bench.bench_chdb_server [--batches 50] [--rows 10000] [--queries 500]

Prints rows/s, the p50/p90/p99 latency of each point query through both paths (the table merged
into one part first) and their ratios. A report, never a pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from infra.store.clickhouse import client_for_url
from tests.bench.report import report
from tests.integration.chdb_fixture import start_chdb_server

DDL = """
CREATE TABLE IF NOT EXISTS trades (
    id UInt64,
    price Decimal(38, 8),
    size Decimal(38, 8),
    ts DateTime64(9, 'UTC'),
    symbol LowCardinality(String)
) ENGINE = MergeTree ORDER BY (symbol, ts)
"""
DATABASE = "bench"
# What the API's last-price lookup does (infra/store/repository.py), on this table's columns.
LAST_PRICE_SQL = "SELECT price, ts FROM trades WHERE symbol = {symbol:String} ORDER BY ts DESC LIMIT 1"


def make_batch(first_id: int, rows: int) -> pa.Table:
    start_ns = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1e9)
    ids = range(first_id, first_id + rows)
    return pa.table(
        {
            "id": pa.array(ids, pa.uint64()),
            "price": pa.array([Decimal(i % 100_000) / 100 for i in ids], pa.decimal128(38, 8)),
            "size": pa.array([Decimal(i % 997) / 1000 for i in ids], pa.decimal128(38, 8)),
            "ts": pa.array([start_ns + i * 1_000_000 for i in ids], pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array([("BTC-USD", "ETH-USD", "SOL-USD")[i % 3] for i in ids]),
        }
    )


def insert_rate(client: Client, batches: list[pa.Table]) -> float:
    """Rows per second of insert_arrow, one batch per call, after one warm-up call."""
    client.command(DDL)
    client.insert_arrow("trades", batches[0])
    started = time.perf_counter()
    for batch in batches[1:]:
        client.insert_arrow("trades", batch)
    elapsed = time.perf_counter() - started
    inserted = sum(batch.num_rows for batch in batches[1:])
    assert client.command("SELECT count() FROM trades") == inserted + batches[0].num_rows
    return inserted / elapsed


def latencies_ms(call: Callable[[], object], queries: int) -> list[float]:
    """Wall time of each call in ms, after a few warm-up calls."""
    for _ in range(min(20, queries)):
        call()
    out = []
    for _ in range(queries):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def point_queries(client: Client, queries: int) -> dict[str, list[float]]:
    # One part on both paths: background merges would otherwise leave each path a different number of
    # parts, and the last-price query reads one granule per part.
    client.command("OPTIMIZE TABLE trades FINAL")
    expected = client.query(LAST_PRICE_SQL, parameters={"symbol": "BTC-USD"}).result_rows
    assert len(expected) == 1

    def last_price() -> None:
        assert client.query(LAST_PRICE_SQL, parameters={"symbol": "BTC-USD"}).result_rows == expected

    def select_one() -> None:
        assert client.command("SELECT 1") == 1

    return {"SELECT 1": latencies_ms(select_one, queries), "last price": latencies_ms(last_price, queries)}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=100, help="timed batches (one more warms up)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows per batch")
    parser.add_argument("--queries", type=int, default=500, help="timed calls of each point query")
    args = parser.parse_args(argv)
    batches = [make_batch(n * args.rows, args.rows) for n in range(args.batches + 1)]
    total_rows = (args.batches + 1) * args.rows

    with tempfile.TemporaryDirectory(prefix="bench-chdb-") as tmp:
        # The server process starts before this process opens chdb itself: never fork after opening it.
        server = start_chdb_server(Path(tmp) / "served")
        try:
            client_for_url(server.url).command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            http_client = client_for_url(server.url, database=DATABASE)
            http_rate = insert_rate(http_client, batches)
            http_points = point_queries(http_client, args.queries)
        finally:
            server.stop()
        in_process = client_for_url(f"chdb://{Path(tmp) / 'in-process'}", database=DATABASE)
        try:
            local_rate = insert_rate(in_process, batches)
            local_points = point_queries(in_process, args.queries)
        finally:
            in_process.close()

    print(f"insert_arrow, {args.batches} batches of {args.rows} rows (Decimal(38,8) x2, DateTime64(9), LowCardinality)")
    print(f"  HTTP via infra.dev.chdb_server : {http_rate:12,.0f} rows/s")
    print(f"  in-process chdb client         : {local_rate:12,.0f} rows/s")
    print(f"  HTTP / in-process              : {http_rate / local_rate:12.2f}")
    print(f"point queries, {args.queries} calls each, table of {total_rows:,} rows; latency in ms (p50 / p90 / p99)")
    for name in http_points:
        http, local = http_points[name], local_points[name]
        paths = (("HTTP", http), ("in-process", local))
        figures = [(label, [percentile(v, q) for q in (50, 90, 99)]) for label, v in paths]
        for label, (p50, p90, p99) in figures:
            print(f"  {name:<10} {label:<10} : {p50:7.3f} / {p90:7.3f} / {p99:7.3f}")
        print(f"  {name:<10} HTTP / in-process p50: {figures[0][1][0] / figures[1][1][0]:.2f}")
        report("chdb owner", f"point query `{name}` p50 over HTTP", figures[0][1][0], "ms",
               anchor="chdb in process", anchor_value=figures[1][1][0], target="< 2 ms", higher_is_better=False)


if __name__ == "__main__":
    main()
