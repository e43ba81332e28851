"""Order-book core throughput: `python -m tests.bench.bench_orderbook [--repeat 5] [--json PATH]`.

Per market (the recorded Binance ETH captures: spot 08+09, usdm 08, cm 08+09), the depth stream
(diffs and the snapshot, in file order) through `BinanceBookSync`, reading the top after every
update, against the DESIGN.md targets:
- decoded: `update` over `BookDelta`/`BookSnapshot` events already parsed, then `best()` (the top
  of book) — target ≥ 30k updates/s; the same reading `top(20)` (the agent's default depth) too.
  The events are parsed afresh (untimed) before every run: a `Decimal` computes its hash on
  first use (~0.3-0.4 µs, the largest single cost of a level) and keeps it, so feeding the same
  objects again would leave that cost out. That flattering figure is printed too ("warm");
- raw: `parse_line` of the recorded JSON line + `update` + `best()` — target ≥ 12k updates/s;
- wire: `decode_book_message` of `book_batch.v1` bytes (what the agent reads from Kafka, one
  update a message, as the replay writes them) + `update` + `best()`, reported only.
`parse_line` alone and `update` alone are printed too, so a miss shows where the time goes.
Levels per diff differ a lot by market (spot ~31, usdm ~65, cm ~8), and so do the rates.
Every figure is the best of `--repeat` runs on one core. Reported, never asserted (DESIGN.md).
"""

from __future__ import annotations

import argparse
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from schemas.events import BookDelta, BookSnapshot
from schemas.wire import encode_book_batch
from schemas.wire_book import decode_book_message
from streams.core.orderbook import BinanceBookSync, rules_for_venue
from streams.core.venues.binance import Market, parse_line
from tests.shared_data import BINANCE

DECODED_TARGET = 30_000
RAW_TARGET = 12_000
CAPTURES: dict[Market, tuple[tuple[str, ...], str]] = {
    "spot": (("spot_ethusdt_20240808.gz", "spot_ethusdt_20240809.gz"), "ETHUSDT"),
    "usdm": (("usdm_ethusdt_20240808.gz",), "ETHUSDT"),
    "cm": (("cm_ethusd_perp_20240808.gz", "cm_ethusd_perp_20240809.gz"), "ETHUSD_PERP"),
}


@dataclass
class DepthStream:
    market: Market
    symbol: str
    lines: list[bytes]  # recorded lines `<recv_ns> <json>`
    events: list[BookDelta | BookSnapshot]
    frames: list[bytes]  # book_batch.v1, one update each

    @property
    def levels_per_diff(self) -> float:
        diffs = [e for e in self.events if isinstance(e, BookDelta)]
        return sum(len(d.bids) + len(d.asks) for d in diffs) / len(diffs)

    def new_sync(self) -> BinanceBookSync:
        first = self.events[0]
        rules = rules_for_venue(first.venue)
        assert rules is not None
        return BinanceBookSync(first.venue, first.symbol, rules)


def load(market: Market) -> DepthStream:
    files, symbol = CAPTURES[market]
    lines: list[bytes] = []
    for name in files:
        with gzip.open(BINANCE / name, "rb") as f:
            # depth diffs (`@depth@...`) and REST snapshots (`lastUpdateId`), judged on the line head
            lines += [ln.rstrip(b"\n") for ln in f if b"@depth" in ln[:80] or b'{"lastUpdateId"' in ln[:40]]
    events: list[BookDelta | BookSnapshot] = []
    for line in lines:
        events += [e for e in parse_line(line, market, symbol) if isinstance(e, BookDelta | BookSnapshot)]
    frames = [encode_book_batch(e.venue, e.symbol, [e]) for e in events]
    return DepthStream(market, symbol, lines, events, frames)


def best_rate(work: Callable[[], int], n: int, repeat: int, prepare: Callable[[], None] | None = None) -> float:
    """Updates/s of the fastest of `repeat` runs; `prepare` runs untimed before each."""
    best = 0.0
    for _ in range(repeat):
        if prepare is not None:
            prepare()
        started = time.perf_counter()
        work()
        best = max(best, n / (time.perf_counter() - started))
    return best


def reparse(s: DepthStream) -> Callable[[], None]:
    """New event objects (fresh Decimals, no hash cached yet), as the parser hands them over."""

    def prepare() -> None:
        events: list[BookDelta | BookSnapshot] = []
        for line in s.lines:
            events += [e for e in parse_line(line, s.market, s.symbol) if isinstance(e, BookDelta | BookSnapshot)]
        s.events = events

    return prepare


def decoded_best(s: DepthStream) -> Callable[[], int]:
    def work() -> int:
        sync = s.new_sync()
        update, best = sync.update, sync.best
        for e in s.events:
            update(e)
            best()
        return sync.applied

    return work


def decoded_top(s: DepthStream, n: int) -> Callable[[], int]:
    def work() -> int:
        sync = s.new_sync()
        update, top = sync.update, sync.top
        for e in s.events:
            update(e)
            top(n)
        return sync.applied

    return work


def update_only(s: DepthStream) -> Callable[[], int]:
    def work() -> int:
        sync = s.new_sync()
        for e in s.events:
            sync.update(e)
        return sync.applied

    return work


def raw_best(s: DepthStream) -> Callable[[], int]:
    def work() -> int:
        sync = s.new_sync()
        update, best = sync.update, sync.best
        market, symbol = s.market, s.symbol
        for line in s.lines:
            for e in parse_line(line, market, symbol):
                update(e)  # type: ignore[arg-type]  # depth lines only: diffs and snapshots
            best()
        return sync.applied

    return work


def parse_only(s: DepthStream) -> Callable[[], int]:
    def work() -> int:
        for line in s.lines:
            parse_line(line, s.market, s.symbol)
        return 0

    return work


def wire_best(s: DepthStream) -> Callable[[], int]:
    def work() -> int:
        sync = s.new_sync()
        for raw in s.frames:
            for e in decode_book_message(raw)[2]:
                sync.update(e)  # type: ignore[arg-type]  # book_batch.v1: diffs and snapshots only
            sync.best()
        return sync.applied

    return work


def bench(s: DepthStream, repeat: int) -> dict[str, float]:
    n = len(s.events)
    applied = update_only(s)()
    fresh = reparse(s)
    figures = {
        "decoded_best": best_rate(decoded_best(s), n, repeat, fresh),
        "decoded_top20": best_rate(decoded_top(s, 20), n, repeat, fresh),
        "update_only": best_rate(update_only(s), n, repeat, fresh),
        "decoded_best_warm": best_rate(decoded_best(s), n, repeat),  # the same objects again: hashes cached
        "raw_best": best_rate(raw_best(s), n, repeat),
        "parse_only": best_rate(parse_only(s), n, repeat),
        "wire_best": best_rate(wire_best(s), n, repeat),
    }
    print(f"{s.market}: {n:,} updates ({applied:,} applied), {s.levels_per_diff:.1f} levels a diff")
    print(f"  {'path':48} {'updates/s':>10} {'target':>8} {'ratio':>6}")
    rows = [
        ("decoded: update + best()", "decoded_best", DECODED_TARGET),
        ("decoded: update + top(20)", "decoded_top20", DECODED_TARGET),
        ("raw JSON: parse_line + update + best()", "raw_best", RAW_TARGET),
        ("decoded, warm (hashes cached): update + best()", "decoded_best_warm", None),
        ("update only", "update_only", None),
        ("parse_line only", "parse_only", None),
        ("wire: decode_book_message + update + best()", "wire_best", None),
    ]
    for label, key, target in rows:
        rate = figures[key]
        tail = f" {target:8,} {rate / target:6.2f}" if target else ""
        print(f"  {label:48} {rate:10,.0f}{tail}")
    figures.update(updates=n, applied=applied, levels_per_diff=s.levels_per_diff,
                   decoded_ratio=figures["decoded_best"] / DECODED_TARGET, raw_ratio=figures["raw_best"] / RAW_TARGET)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is reported")
    parser.add_argument("--market", choices=list(CAPTURES), action="append", help="default: all")
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    args = parser.parse_args(argv)
    results = {}
    for market in args.market or list(CAPTURES):
        results[market] = bench(load(market), args.repeat)
        print()
    line = orjson.dumps({"bench": "orderbook", "results": results})
    if args.json:
        with open(args.json, "wb") as fh:
            fh.write(line + b"\n")
    print(line.decode())


if __name__ == "__main__":
    main()
