"""`entasis replay --from clickhouse`: stored trades republished to a run's raw trade topic, in
trades/s, beside raw confluent-kafka produce of the same messages in the same run.

    python -m tests.bench.bench_replay_store [--trades 300000] [--per-second 1000] [--symbols 2]

Its own embedded Tansu broker and chdb owner. The trades are written straight into a source
database's `trades` table (what the trade sink stores): `--symbols` streams, each with
`--per-second` trades a second of event time (1000: a busy BTC-USDT, ~50 trades per 50 ms
batch), prices on a 0.01 tick, sizes on a 1e-4 lot, ids consecutive. Then, each timed:

- `read`: the query of the replay alone (Arrow over HTTP), rows counted and dropped;
- `replay -> memory`: read, cut into batches and encode (`StoredTradeBatcher`), messages kept
  in a list: everything but the broker;
- `replay -> Kafka`: `replay_stored_into`, the command's own function: read, batch, encode and
  produce to the run's raw trade topic, flushed (the headline figure; target 300k trades/s);
- anchor: raw confluent-kafka produce (the feed's producer configuration) of the very messages
  the replay made, to a fresh topic, flushed.

Reported (BENCH-RESULT lines, tests/bench/report.py), never asserted.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pyarrow as pa

from infra.cli.replay import (
    STORED_TRADES_SQL,
    StoredRequest,
    StoredTradeBatcher,
    TradeColumns,
    replay_stored_into,
    stored_trade_pieces,
)
from infra.config.settings import Settings
from infra.store.clickhouse import ensure_database, make_client
from infra.store.migrate import apply_migrations
from streams.ingest.publisher import Published
from tests.bench.bench_pipeline import create_scratch_topic, embedded, produce_all
from tests.bench.report import report

VENUE = "binance"
START_NS = 1_723_161_600 * 10**9  # 2024-08-09T00:00:00Z
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT")


def stored_trades(n: int, symbols: tuple[str, ...], per_second: float, seed: int = 7) -> pa.Table:
    """`n` trades of `symbols` as rows of the `trades` table, each stream at `per_second` trades a
    second of event time (exponential gaps), interleaved by event time."""
    rng = random.Random(seed)
    rows: list[tuple[int, str, int, int, int, str]] = []
    per_symbol = math.ceil(n / len(symbols))
    for k, symbol in enumerate(symbols):
        t = START_NS
        price = 60_000_00 // (k + 1)
        for i in range(per_symbol):
            t += int(rng.expovariate(per_second) * 1e9) + 1
            price = max(1, price + rng.choice((-2, -1, 0, 0, 1, 2)))
            rows.append((t, symbol, i + 1, price, rng.randint(1, 50_000), rng.choice(("buy", "sell"))))
    rows.sort()
    rows = rows[:n]
    tick, lot = Decimal("0.01"), Decimal("0.0001")
    dec = pa.decimal128(38, 8)
    return pa.table({
        "venue": pa.array([VENUE] * len(rows)),
        "symbol": pa.array([r[1] for r in rows]),
        "trade_id": pa.array([str(r[2]) for r in rows]),
        "price": pa.array([Decimal(r[3]) * tick for r in rows], type=dec),
        "size": pa.array([Decimal(r[4]) * lot for r in rows], type=dec),
        "side": pa.array([r[5] for r in rows]),
        "event_ts": pa.array([r[0] for r in rows], type=pa.timestamp("ns", tz="UTC")),
        "recv_ts": pa.array([r[0] + 1_000_000 for r in rows], type=pa.timestamp("ns", tz="UTC")),
    })


def load_source(settings: Settings, table: pa.Table) -> None:
    ensure_database(settings)
    client = make_client(settings)
    try:
        apply_migrations(client)
        columns = {name for name, *_ in client.query("DESCRIBE TABLE trades").result_rows}
        client.insert_arrow("trades", table.select([c for c in table.column_names if c in columns]))
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--trades", type=int, default=300_000)
    parser.add_argument("--per-second", type=float, default=1000.0, help="trades a second of event time per symbol")
    parser.add_argument("--symbols", type=int, default=2, choices=range(1, len(SYMBOLS) + 1))
    parser.add_argument("--repeat", type=int, default=2, help="runs of each timed step; the best is reported")
    args = parser.parse_args(argv)
    symbols = SYMBOLS[: args.symbols]
    work = Path(tempfile.mkdtemp(prefix="bench-replay-store-"))
    with embedded(work) as (bootstrap, clickhouse_url, _pids, _children):
        tag = uuid.uuid4().hex[:8]
        source = Settings(kafka_bootstrap=bootstrap, broker_flavour="tansu", clickhouse_url=clickhouse_url,
                          clickhouse_database=f"bench_src_{tag}", data_dir=work)
        started = time.perf_counter()
        table = stored_trades(args.trades, symbols, args.per_second)
        load_source(source, table)
        print(f"{table.num_rows:,} trades of {', '.join(symbols)} stored in {time.perf_counter() - started:.1f}s "
              f"({args.per_second:g}/s of event time per symbol)", flush=True)
        span_ns = table.column("event_ts").cast(pa.int64()).to_pylist()
        request = StoredRequest(source.clickhouse.database, VENUE, symbols, span_ns[0], span_ns[-1] + 1)
        params = {"venue": VENUE, "symbols": list(symbols), "start": request.start_ns, "end": request.end_ns}

        def read() -> int:
            client = make_client(source)
            try:
                with client.query_arrow_stream(STORED_TRADES_SQL, parameters=params) as blocks:
                    return sum(block.num_rows for block in blocks)
            finally:
                client.close()

        def to_memory() -> list[tuple[bytes, bytes]]:
            client = make_client(source)
            try:
                batcher = StoredTradeBatcher(VENUE)
                out = []
                for piece in stored_trade_pieces(client, params):
                    out += batcher.add(piece)
                out += batcher.add(TradeColumns.from_rows([]), last=True)
                return [(f"{VENUE}:{m[1]}".encode(), m[2]) for m in out]
            finally:
                client.close()

        def best(step: object, what: str) -> tuple[float, object]:
            times, value = [], None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                value = step()  # type: ignore[operator]
                times.append(time.perf_counter() - t0)
            print(f"  {what}: {', '.join(f'{t:.2f}s' for t in times)}", flush=True)
            return min(times), value

        n = table.num_rows
        read_s, rows = best(read, "read (Arrow over HTTP)")
        assert rows == n, (rows, n)
        memory_s, messages = best(to_memory, "replay -> memory (read, batch, encode)")
        assert isinstance(messages, list)

        def to_kafka() -> None:
            run = source.model_copy(update={"topic_namespace": f"run-bench_{uuid.uuid4().hex[:6]}."})
            prepare_topics(run)
            result = replay_stored_into(run, request)
            assert result.trades_published == n, result

        kafka_s, _ = best(to_kafka, "replay -> Kafka (replay_stored_into)")

        def raw() -> None:
            topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
            create_scratch_topic(bootstrap, topic)
            produce_all(bootstrap, topic, [Published(topic, k, v) for k, v in messages])

        raw_s, _ = best(raw, "raw confluent-kafka produce of the same messages")
    per_message = n / len(messages)
    print(f"\n{n:,} trades in {len(messages):,} messages ({per_message:.1f} trades a message)")
    rates = {"read": n / read_s, "memory": n / memory_s, "kafka": n / kafka_s, "raw": n / raw_s}
    for name, rate in rates.items():
        print(f"  {name:8s} {rate:12,.0f} trades/s")
    report("replay store", f"{n:,} stored trades -> raw topic ({per_message:.0f} a message)", rates["kafka"],
           "trades/s", anchor="raw confluent-kafka produce of the same messages", anchor_value=rates["raw"],
           target=">= 300,000 trades/s")
    report("replay store", "read, batch and encode (no broker)", rates["memory"], "trades/s",
           anchor="the query alone (Arrow)", anchor_value=rates["read"])
    return 0


def prepare_topics(settings: Settings) -> None:
    from infra.cli.topics import create_topics

    create_topics(settings.kafka_bootstrap, settings.topic_namespace, replication=settings.topic_replication)


if __name__ == "__main__":
    sys.exit(main())
