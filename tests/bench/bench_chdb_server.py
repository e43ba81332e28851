"""insert_arrow throughput: through the chdb owner process over HTTP versus chdb opened in-process.

    python -m tests.bench.bench_chdb_server [--batches 50] [--rows 10000]

Prints rows/s for both paths and their ratio. A report, never a pass/fail.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from infra.store.clickhouse import client_for_url
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=50, help="timed batches (one more warms up)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows per batch")
    args = parser.parse_args(argv)
    batches = [make_batch(n * args.rows, args.rows) for n in range(args.batches + 1)]

    with tempfile.TemporaryDirectory(prefix="bench-chdb-") as tmp:
        # The server process starts before this process opens chdb itself: never fork after opening it.
        server = start_chdb_server(Path(tmp) / "served")
        try:
            client_for_url(server.url).command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            http_rate = insert_rate(client_for_url(server.url, database=DATABASE), batches)
        finally:
            server.stop()
        in_process = client_for_url(f"chdb://{Path(tmp) / 'in-process'}", database=DATABASE)
        try:
            local_rate = insert_rate(in_process, batches)
        finally:
            in_process.close()

    print(f"insert_arrow, {args.batches} batches of {args.rows} rows (Decimal(38,8) x2, DateTime64(9), LowCardinality)")
    print(f"  HTTP via infra.dev.chdb_server : {http_rate:12,.0f} rows/s")
    print(f"  in-process chdb client     : {local_rate:12,.0f} rows/s")
    print(f"  HTTP / in-process          : {http_rate / local_rate:12.2f}")


if __name__ == "__main__":
    main()
