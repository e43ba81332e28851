"""Forecast evaluation and cost: `python -m tests.bench.bench_predict [--only NAME ...] [--limit N]`.

Runs `StreamPredictor` (streams/core/predict) over each series exactly as the agent does,
one model at a time, and prints per model and horizon the prequential scores of the SERVED
forecasts (predict, wait for the horizon, score, then learn) next to the no-change forecast:
MAE, naive MAE, skill = 1 − MAE/naive MAE, out-of-sample R², directional accuracy (hit), the
share of up moves (what "always up" would hit), mean confidence and its calibration error
(ECE, 10 bins). Scores count every forecast from the first one, warm-up included.

Series:
- `ar1`: synthetic AR(1) hourly log returns, φ = 0.5 (seed 1): a known predictable component;
- `ar1-weak`: the same with φ = 0.1 (closer to what markets leave);
- `rw`: a pure random walk (φ = 0): any skill reported here is a bug;
- `btc-1h`: ../shared/data/history/bitstamp_btcusd_1h.csv (24 943 bars, 2018-05..2021-03);
- `btc-1d`, `eth-1d`: the daily Bitstamp files (horizon 1d only), defect rows masked as flat;
- `btcusdt-1m`: binanceus_btcusdt_1m.csv with 1-minute candles as the agent's interval;
- `binance-eth-1m`: the 12 reference 1m candles of the recorded Binance stream: too short for
  any horizon (reported as such).
Then: learning cost per candle per model (mean wall time of `update`, one torch thread) and
the memory of a predictor after one day of 1m candles and later (checkpoint bytes, and Python
heap held by the predictor via tracemalloc; torch's own tensor storage is outside Python's heap
but inside the checkpoint).
Reported, never asserted (docs/decisions.md, "Benchmarks report, tests never time").
"""

from __future__ import annotations

import argparse
import csv
import gc
import math
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np

from streams.core.predict.engine import HOUR_NS, PredictConfig, StreamPredictor
from streams.core.predict.features import Bar
from streams.core.predict.lstm import limit_torch_threads
from tests.shared_data import DATA, REFERENCE_CANDLES

HISTORY = DATA / "history"
MINUTE_NS = 60 * 10**9
DAY_NS = 24 * HOUR_NS


def synthetic(phi: float, n: int, seed: int = 1, sigma: float = 0.006) -> list[Bar]:
    """Hourly bars whose log returns follow r_t = φ r_{t−1} + ε_t, ε ~ N(0, σ²)."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(n) * sigma
    r = np.zeros(n)
    for i in range(1, n):
        r[i] = phi * r[i - 1] + eps[i]
    closes = 30000.0 * np.exp(np.cumsum(r))
    volumes = rng.lognormal(3.0, 0.5, n)
    bars = []
    prev = closes[0]
    for i in range(n):
        c = float(closes[i])
        wiggle = abs(float(rng.standard_normal())) * sigma * 0.5
        bars.append(Bar(i * HOUR_NS, float(prev), max(prev, c) * (1 + wiggle), min(prev, c) * (1 - wiggle), c,
                        float(volumes[i]), Decimal(f"{c:.2f}")))
        prev = c
    return bars


def _iso_ns(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()) * 10**9


def csv_bars(path: Path, masked: frozenset[str] = frozenset()) -> list[Bar]:
    """`timestamp_utc_iso,open,high,low,close,volume` rows; `masked` dates are left out (a
    missing bar: the predictor fills it as flat)."""
    bars = []
    with path.open() as f:
        for row in csv.DictReader(f):
            ts = row["timestamp_utc_iso"]
            if ts[:10] in masked:
                continue
            bars.append(Bar.of(_iso_ns(ts), row["open"], row["high"], row["low"], row["close"], row["volume"]))
    return bars


# history/README.md, section 2: rows of the daily files that are not full-day candles.
DAILY_DEFECTS = frozenset({"2018-08-11", "2018-08-12", "2018-10-16", "2019-03-19", "2018-12-11", "2019-05-07"})


def reference_bars() -> list[Bar]:
    with REFERENCE_CANDLES.open() as f:
        return [Bar.of(_iso_ns(r["minute_start_utc_iso"]), r["open"], r["high"], r["low"], r["close"], r["volume"])
                for r in csv.DictReader(f)]


@dataclass
class Series:
    name: str
    interval_ns: int
    horizons: tuple[str, ...]
    bars: list[Bar]


def series(limit: int | None) -> Iterator[Series]:
    def cut(bars: list[Bar]) -> list[Bar]:
        return bars[:limit] if limit else bars

    yield Series("ar1", HOUR_NS, ("1h", "4h", "1d"), cut(synthetic(0.5, 6000)))
    yield Series("ar1-weak", HOUR_NS, ("1h", "4h", "1d"), cut(synthetic(0.1, 6000, seed=2)))
    yield Series("rw", HOUR_NS, ("1h", "4h", "1d"), cut(synthetic(0.0, 6000, seed=3)))
    yield Series("btc-1h", HOUR_NS, ("1h", "4h", "1d"), cut(csv_bars(HISTORY / "bitstamp_btcusd_1h.csv")))
    yield Series("btc-1d", DAY_NS, ("1d",), cut(csv_bars(HISTORY / "bitstamp_btcusd_1d.csv", DAILY_DEFECTS)))
    yield Series("eth-1d", DAY_NS, ("1d",), cut(csv_bars(HISTORY / "bitstamp_ethusd_1d.csv", DAILY_DEFECTS)))
    yield Series("btcusdt-1m", MINUTE_NS, ("1h", "4h", "1d"), cut(csv_bars(HISTORY / "binanceus_btcusdt_1m.csv")))
    yield Series("binance-eth-1m", MINUTE_NS, ("1h", "4h", "1d"), reference_bars())


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def evaluate(s: Series, model: str) -> tuple[StreamPredictor, float]:
    predictor = StreamPredictor(PredictConfig(interval_ns=s.interval_ns, horizons=s.horizons, models=(model,)))
    start = time.perf_counter()
    for bar in s.bars:
        predictor.update(bar)
    return predictor, (time.perf_counter() - start) / max(1, len(s.bars))


def report(s: Series, results: dict[str, tuple[StreamPredictor, float]]) -> None:
    span = (s.bars[-1].open_ns - s.bars[0].open_ns) / DAY_NS if s.bars else 0.0
    print(f"\n### {s.name}: {len(s.bars)} bars of {s.interval_ns // MINUTE_NS} min ({span:.0f} days)")
    print("| model | horizon | scored | MAE | naive MAE | skill | R² | hit | up rate | mean conf | ECE | served |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, (predictor, _) in results.items():
        for h in s.horizons:
            track = predictor.tracks[(model, h)]
            sc = track.score.snapshot()
            ready = "yes" if sc.scored >= predictor.config.required(h) else "no"
            print(f"| {model} | {h} | {sc.scored} | {_f(sc.mae, 5)} | {_f(sc.mae_naive, 5)} | {_f(sc.skill)} | "
                  f"{_f(sc.r2)} | {_f(sc.hit_rate, 3)} | {_f(sc.up_rate, 3)} | {_f(sc.mean_confidence, 3)} | "
                  f"{_f(sc.calibration_error, 3)} | {ready} |")
    costs = ", ".join(f"{m} {cost * 1e3:.2f} ms" for m, (_, cost) in results.items())
    print(f"learning cost per candle (predict + score + learn, all horizons): {costs}")


def _held(interval_ns: int, model: str, bars: list[Bar], marks: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(bars folded, checkpoint bytes, Python heap held by the predictor) at each mark."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    predictor = StreamPredictor(PredictConfig(interval_ns=interval_ns, models=(model,)))
    out = []
    for i, bar in enumerate(bars[: max(marks)], 1):
        predictor.update(bar)
        if i in marks:
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
            out.append((i, len(predictor.dumps()), held))
    tracemalloc.stop()
    return out


def memory_after_one_day() -> None:
    """A 1m predictor looks back a day (the 1d horizon's momentum feature), so after its first
    day it is still warming up: memory is shown after one day and after three (steady state:
    every buffer is full, nothing grows after that). The default 1h predictor is shown after a
    day of candles and after 90 days."""
    minute = csv_bars(HISTORY / "binanceus_btcusdt_1m.csv")[: 3 * 1440]
    hourly = csv_bars(HISTORY / "bitstamp_btcusd_1h.csv")[: 90 * 24]
    print("\n### memory of one stream's predictor (horizons 1h/4h/1d)")
    print("| model | candles | folded | checkpoint bytes | Python heap held (tracemalloc) |")
    print("|---|---|---|---|---|")
    warm = StreamPredictor(PredictConfig(horizons=("1h",)))  # imports (river, torch) are not the model's memory
    for bar in hourly[:60]:
        warm.update(bar)
    runs = ((MINUTE_NS, minute, (1440, 4320), "1m"), (HOUR_NS, hourly, (24, 2160), "1h"))
    for model in ("ensemble", "lstm"):
        for interval, bars, marks, label in runs:
            for folded, blob, held in _held(interval, model, bars, marks):
                print(f"| {model} | {label} | {folded} ({folded * interval // DAY_NS} d) | {blob:,} | {held:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="series names to run (default: all)")
    parser.add_argument("--models", nargs="*", default=["ensemble", "lstm"])
    parser.add_argument("--limit", type=int, default=None, help="at most this many bars per series")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    args = parser.parse_args()
    limit_torch_threads(1)
    for s in [] if args.memory_only else series(args.limit):
        if args.only and s.name not in args.only:
            continue
        results = {m: evaluate(s, m) for m in args.models}
        report(s, results)
    if not args.no_memory:
        memory_after_one_day()


if __name__ == "__main__":
    main()
