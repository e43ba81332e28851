"""Candle core throughput: `python -m tests.bench.bench_candles [--repeat 3] [--trades 1000000]`.

Two paths, on two data sets, against the targets (docs/architecture.md, "Performance targets"):
- decoded: `CandleBuilder.update` over `TradeRow` batches already in memory (target ≥ 1M trades/s);
- raw: `decode_trade_batch` + `CandleBuilder.update` from `trade_batch.v1` bytes, as the candles
  agent does per Kafka message (target ≥ 400k trades/s).
The data: the recorded Binance spot trades repeated (each copy shifted past the previous one in
time and trade id, so windows keep closing as in a live feed) until there are `--trades`; and the
simulated feed with the pipeline benchmark's batching (~100 trades a message).

Decode alone and `orjson.loads` alone are printed too, so a miss shows where the time goes; and
decode with its remembered values forgotten before every message (the floor: the recorded day
is repeated, so past its first copy every price and size is one decode has seen).
Every figure is the best of `--repeat` runs. Reported, never asserted (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import orjson

from schemas.codecs.trades import forget_known_values
from schemas.symbols import stream_key
from schemas.wire import TRADE_BATCH, TradeRow, decode_trade_batch, encode_trade_batch
from streams.core.candle_stream import CandleStream
from streams.core.candles import CandleBuilder
from streams.core.simulation import TradeSimulator, default_symbol
from tests.bench.report import report
from tests.shared_data import raw_spot_trades

DECODED_TARGET = 1_000_000
RAW_TARGET = 400_000
LATENESS_NS = 2 * 10**9  # the worker's default (Settings.candle_lateness_ms)
BATCH = 100  # trades per raw message, as the simulated feed and the replay batch them
SIM_RATE = 20_000.0  # trades/s per symbol: with 50 ms windows, ~100 trades a message (see bench_pipeline)
SIM_START_NS = (1_723_161_600 - 5) * 10**9  # 5 s before a minute ends, so a window closes early


@dataclass
class Stream:
    """One data set: per message, its stream key, decoded rows and raw bytes."""

    name: str
    keys: list[str]
    rows: list[list[TradeRow]]
    raws: list[bytes]

    @property
    def trades(self) -> int:
        return sum(len(r) for r in self.rows)


def spot_stream(min_trades: int) -> Stream:
    base = [
        TradeRow(str(t["t"]), Decimal(t["p"]), Decimal(t["q"]), "sell" if t["m"] else "buy", t["T"] * 10**6,
                 t["E"] * 10**6)
        for t in raw_spot_trades()
    ]
    # Shift each copy by whole minutes past the recording's span so candles stay aligned and the
    # stream stays in event-time order, like a longer recording of the same market.
    span_ns = base[-1].event_ts_ns - base[0].event_ts_ns
    shift_ns = (span_ns // 60_000_000_000 + 1) * 60_000_000_000
    id_shift = int(base[-1].trade_id) - int(base[0].trade_id) + 1
    rows: list[TradeRow] = []
    copy = 0
    while len(rows) < min_trades:
        dt, di = copy * shift_ns, copy * id_shift
        rows += [r._replace(trade_id=str(int(r.trade_id) + di), event_ts_ns=r.event_ts_ns + dt,
                            recv_ts_ns=r.recv_ts_ns + dt) for r in base]
        copy += 1
    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    raws = [_encode_rows("binance", "ETH-USDT", b) for b in batches]
    return Stream(f"recorded spot ×{copy}", [stream_key("binance", "ETH-USDT")] * len(batches), batches, raws)


def _encode_rows(venue: str, symbol: str, rows: list[TradeRow]) -> bytes:
    # The wire layout of schemas.wire.encode_trade_batch, from rows instead of Trade models.
    trades = [[r.trade_id, format(r.price, "f"), format(r.size, "f"), r.side, r.event_ts_ns, r.recv_ts_ns]
              for r in rows]
    return orjson.dumps({"schema": TRADE_BATCH, "venue": venue, "symbol": symbol, "trades": trades})


def simulated_stream(min_trades: int) -> Stream:
    sim = TradeSimulator([default_symbol("BTC-USDT", SIM_RATE), default_symbol("ETH-USDT", SIM_RATE)],
                         seed=7, start_ns=SIM_START_NS, max_batch=BATCH)
    keys, rows, raws, n = [], [], [], 0
    while n < min_trades:
        for batch in sim.next_window():
            raw = encode_trade_batch(batch.venue, batch.symbol, batch.trades)
            keys.append(stream_key(batch.venue, batch.symbol))
            rows.append(decode_trade_batch(raw)[2])
            raws.append(raw)
            n += len(batch.trades)
    return Stream("simulated 2 symbols", keys, rows, raws)


def best_rate(work: Callable[[], int], trades: int, repeat: int) -> tuple[float, int]:
    """(trades/s of the fastest run, what `work` returned)."""
    best, result = 0.0, 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        best = max(best, trades / (time.perf_counter() - started))
    return best, result


def candles_from_rows(stream: Stream) -> Callable[[], int]:
    def work() -> int:
        builders: dict[str, CandleBuilder] = {}
        emitted = 0
        for key, rows in zip(stream.keys, stream.rows, strict=True):
            builder = builders.get(key)
            if builder is None:
                venue, symbol = key.split(":", 1)
                builder = builders[key] = CandleBuilder(venue, symbol, "1m", LATENESS_NS)
            emitted += len(builder.update(rows).candles)
        return emitted

    return work


def candles_from_raw(stream: Stream) -> Callable[[], int]:
    def work() -> int:
        builders: dict[tuple[str, str], CandleBuilder] = {}
        emitted = 0
        for raw in stream.raws:
            venue, symbol, rows = decode_trade_batch(raw)
            builder = builders.get((venue, symbol))
            if builder is None:
                builder = builders[(venue, symbol)] = CandleBuilder(venue, symbol, "1m", LATENESS_NS)
            emitted += len(builder.update(rows).candles)
        return emitted

    return work


def candle_stream_from_raw(stream: Stream) -> Callable[[], int]:
    """What the candles agent runs per message: every interval (1m, 5m, 1h, 1d) plus duplicate
    detection, from raw bytes. Not one of the performance targets; shows what the agent pays beyond 1m."""

    def work() -> int:
        streams: dict[tuple[str, str], CandleStream] = {}
        emitted = 0
        for raw in stream.raws:
            venue, symbol, rows = decode_trade_batch(raw)
            candles = streams.get((venue, symbol))
            if candles is None:
                candles = streams[(venue, symbol)] = CandleStream(venue, symbol, lateness_ns=LATENESS_NS)
            emitted += len(candles.update(rows).candles)
        return emitted

    return work


def decode_only(stream: Stream) -> Callable[[], int]:
    def work() -> int:
        for raw in stream.raws:
            decode_trade_batch(raw)
        return 0

    return work


def decode_unseen(stream: Stream) -> Callable[[], int]:
    """decode with its remembered prices and sizes forgotten before every message: each message's
    values read as if never seen (only repeats inside the message hit). The recorded stream is one
    day repeated, so after its first copy every value is a remembered one; this is the floor."""

    def work() -> int:
        for raw in stream.raws:
            forget_known_values()
            decode_trade_batch(raw)
        return 0

    return work


def orjson_only(stream: Stream) -> Callable[[], int]:
    def work() -> int:
        for raw in stream.raws:
            orjson.loads(raw)
        return 0

    return work


def bench(stream: Stream, repeat: int) -> dict[str, float]:
    n = stream.trades
    decoded, candles = best_rate(candles_from_rows(stream), n, repeat)
    raw, _ = best_rate(candles_from_raw(stream), n, repeat)
    decode, _ = best_rate(decode_only(stream), n, repeat)
    loads, _ = best_rate(orjson_only(stream), n, repeat)
    unseen, _ = best_rate(decode_unseen(stream), n, repeat)
    stream_raw, _ = best_rate(candle_stream_from_raw(stream), n, repeat)
    print(f"{stream.name}: {n:,} trades in {len(stream.raws):,} messages ({n / len(stream.raws):.1f} a message), "
          f"{candles:,} candles emitted")
    print(f"  {'path':34} {'trades/s':>12} {'target':>10} {'ratio':>6}")
    print(f"  {'candles from decoded TradeRows':34} {decoded:12,.0f} {DECODED_TARGET:10,} "
          f"{decoded / DECODED_TARGET:6.2f}")
    print(f"  {'candles from raw (decode + update)':34} {raw:12,.0f} {RAW_TARGET:10,} {raw / RAW_TARGET:6.2f}")
    print(f"  {'CandleStream, 4 intervals, raw':34} {stream_raw:12,.0f}")
    print(f"  {'decode_trade_batch only':34} {decode:12,.0f}")
    print(f"  {'decode, values unseen (floor)':34} {unseen:12,.0f}")
    print(f"  {'orjson.loads only':34} {loads:12,.0f}")
    # Per trade: the raw path's time is decode's plus the candle update's; printing both shares
    # tells which one a miss must come from.
    per_trade_ns = 1e9 / raw
    print(f"  per trade: {per_trade_ns:,.0f} ns = decode {1e9 / decode:,.0f} ns (orjson {1e9 / loads:,.0f} ns) "
          f"+ update {1e9 / decoded:,.0f} ns")
    report("candles", f"{stream.name}: candles from raw messages", raw, "trades/s",
           anchor="orjson.loads alone", anchor_value=loads, target=f">= {RAW_TARGET:,}")
    return {"trades": n, "messages": len(stream.raws), "candles": candles, "decoded_trades_per_s": decoded,
            "raw_trades_per_s": raw, "decode_only_trades_per_s": decode, "orjson_only_trades_per_s": loads,
            "decode_unseen_trades_per_s": unseen,
            "candle_stream_raw_trades_per_s": stream_raw,
            "decoded_ratio": decoded / DECODED_TARGET, "raw_ratio": raw / RAW_TARGET}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trades", type=int, default=1_000_000, help="at least this many trades per data set")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    args = parser.parse_args(argv)
    results = {}
    for make in (spot_stream, simulated_stream):
        stream = make(args.trades)
        results[stream.name] = bench(stream, args.repeat)
        print()
    line = orjson.dumps({"bench": "candles", "results": results})
    if args.json:
        with open(args.json, "wb") as fh:
            fh.write(line + b"\n")
    print(line.decode())


if __name__ == "__main__":
    main()
