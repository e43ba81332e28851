"""Binance parser throughput on the recorded captures: `python -m tests.bench.bench_parser`.

Lines are decompressed and sorted by channel before timing, so the figures are the parser's
alone (orjson decode included); `orjson.loads` on the same lines is the baseline. Reported,
never asserted (docs/decisions.md, "Benchmarks report, tests never time").
"""

from __future__ import annotations

import argparse
import gzip
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from streams.core.venues.binance import Market, parse_line
from streams.ingest.publisher import ListPublisher
from streams.ingest.replay import capture_from_path, line_channel, replay

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "binance"
CHANNELS = ("trade", "depth", "bookTicker")


def load(data_dir: Path) -> dict[tuple[Market, str], list[tuple[bytes, str]]]:
    """(market, channel) -> [(line, Binance symbol)] over every capture in `data_dir`."""
    lines: dict[tuple[Market, str], list[tuple[bytes, str]]] = {}
    for path in sorted(data_dir.glob("*.gz")):
        capture = capture_from_path(path)
        with gzip.open(path, "rb") as fh:
            for line in fh.read().splitlines():
                channel = line_channel(line) or "other"
                lines.setdefault((capture.market, channel), []).append((line, capture.symbol))
    return lines


def best_rate(work: Callable[[], int], repeat: int) -> float:
    """Items per second of the fastest of `repeat` runs."""
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        items = work()
        best = max(best, items / (time.perf_counter() - started))
    return best


def parse_all(lines: list[tuple[bytes, str]], market: Market) -> Callable[[], int]:
    def work() -> int:
        for line, symbol in lines:
            parse_line(line, market, symbol)
        return len(lines)

    return work


def decode_only(lines: list[tuple[bytes, str]]) -> Callable[[], int]:
    def work() -> int:
        for line, _ in lines:
            orjson.loads(line.partition(b" ")[2])
        return len(lines)

    return work


def bench_parser(lines: dict[tuple[Market, str], list[tuple[bytes, str]]], repeat: int) -> None:
    print(f"{'market':6} {'channel':10} {'lines':>7} {'parsed/s':>12} {'orjson only/s':>14} {'ratio':>6}")
    totals: dict[str, list[float]] = {}
    for channel in CHANNELS:
        for market in ("spot", "usdm", "cm"):
            group = lines.get((market, channel), [])
            if not group:
                continue
            rate = best_rate(parse_all(group, market), repeat)
            baseline = best_rate(decode_only(group), repeat)
            totals.setdefault(channel, []).extend([len(group), len(group) / rate])
            print(f"{market:6} {channel:10} {len(group):7d} {rate:12,.0f} {baseline:14,.0f} {rate / baseline:6.2f}")
    for channel, pairs in totals.items():
        count, seconds = sum(pairs[0::2]), sum(pairs[1::2])
        print(f"{'all':6} {channel:10} {int(count):7d} {count / seconds:12,.0f}")


def bench_replay(data_dir: Path) -> None:
    for channels in (["trade"], list(CHANNELS)):
        summary = replay([data_dir], ListPublisher(), channels=channels, progress=False)
        read = summary.lines + summary.skipped
        print(
            f"replay {'+'.join(channels):24} into a list: {read:,} lines read, "
            f"{summary.trades:,} trades, {summary.messages:,} messages in {summary.elapsed_s:.2f} s "
            f"= {summary.trades_per_s:,.0f} trades/s, {read / summary.elapsed_s:,.0f} lines/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory of Binance captures")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is reported")
    args = parser.parse_args()
    lines = load(args.data)
    bench_parser(lines, args.repeat)
    bench_replay(args.data)


if __name__ == "__main__":
    main()
