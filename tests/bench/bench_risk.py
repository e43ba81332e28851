"""Risk core cost per closed candle: `python -m tests.bench.bench_risk [--repeat 3] [--json PATH]`.

What the risk agent does per final candle, per method: `RollingRisk.update` (fold the close in)
then `estimate(method)` (read VaR, ES and volatility), timed over recorded series after a
warm-up of one window (untimed), so every timed candle has a full window:
- Bitstamp BTC/USD 1h (the agent's default: 1h candles, 90-day window = 2160 returns);
- Binance.US BTC/USDT 1m (7-day window = 10080 returns; the file holds 21 days).
GARCH's cost is split: its refit (arch, once per UTC day) and the recursion between refits; the
per-candle figure is the amortised total. "all" is every method on one state, as the agent runs.
The agent's full path (decode the candle.v1 JSON, fold, build and encode every `RiskEstimate`)
is timed too. Every figure is the best of `--repeat` runs. Reported, never asserted (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from schemas.events import Candle, Interval
from schemas.risk import RiskMethod
from schemas.wire import encode_event
from streams.agents.risk import RiskAgentConfig, RiskAgentState, decode_candle
from streams.core.risk import DAY_NS, RiskConfig, RollingRisk
from tests.shared_data import DATA

SERIES = {
    "1h": ("bitstamp_btcusd_1h.csv", 90),
    "1m": ("binanceus_btcusdt_1m.csv", 7),
}


def load(name: str) -> list[tuple[int, float, str]]:
    with (DATA / "history" / name).open() as f:
        return [(int(datetime.fromisoformat(r["timestamp_utc_iso"].replace("Z", "+00:00")).timestamp()) * 10**9,
                 float(r["close"]), r["close"]) for r in csv.DictReader(f)]


class TimedRisk(RollingRisk):
    """Accounts the time spent in GARCH refits, so the recursion's share can be told apart."""

    fit_seconds = 0.0

    def _refit_at(self, i: int) -> str:
        start = time.perf_counter()
        try:
            return super()._refit_at(i)
        finally:
            self.fit_seconds += time.perf_counter() - start


def run_core(bars: list[tuple[int, float, str]], cfg: RiskConfig, methods: tuple[RiskMethod, ...]) -> dict[str, Any]:
    risk = TimedRisk(cfg)
    warm = cfg.rebuild_bars
    for open_ns, close, _ in bars[:warm]:
        risk.update(open_ns, close)
    timed = bars[warm:]
    fits_before, fit_seconds_before = risk.garch_fits, risk.fit_seconds
    start = time.perf_counter()
    for open_ns, close, _ in timed:
        risk.update(open_ns, close)
        for m in methods:
            risk.estimate(m)
    elapsed = time.perf_counter() - start
    return {"candles": len(timed), "seconds": elapsed, "fits": risk.garch_fits - fits_before,
            "fit_seconds": risk.fit_seconds - fit_seconds_before}


def agent_path(bars: list[tuple[int, float, str]], window_days: int, interval: str) -> tuple[int, float]:
    """decode + fold + RiskEstimate + encode per candle, all methods, as the agent does."""
    step = 3600 * 10**9 if interval == "1h" else 60 * 10**9
    raws = [encode_event(Candle(
        venue="bitstamp", symbol="BTC-USD", interval=Interval(interval), open_ts_ns=o, open=Decimal(c),
        high=Decimal(c), low=Decimal(c), close=Decimal(c), volume=Decimal(1), trades=1, first_trade_id="a",
        last_trade_id="b", revision=0, is_final=True, event_ts_ns=o + step - 1, recv_ts_ns=o + step))
        for o, _, c in bars]
    state = RiskAgentState(RiskAgentConfig(intervals=(interval,), window_days=window_days), offload=False)
    warm = state.config.core(interval).rebuild_bars

    async def go() -> tuple[int, float]:
        for raw in raws[:warm]:
            await state.fold(decode_candle(raw))
        start = time.perf_counter()
        for raw in raws[warm:]:
            for e in await state.fold(decode_candle(raw)):
                encode_event(e)
        return len(raws) - warm, time.perf_counter() - start

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    for interval, (name, window_days) in SERIES.items():
        bars = load(name)
        step = 3600 * 10**9 if interval == "1h" else 60 * 10**9
        print(f"\n{name}: {len(bars)} {interval} candles, window {window_days} days "
              f"({window_days * DAY_NS // step} returns)")
        print(f"  {'method':<14} {'µs/candle':>10} {'candles/s':>11}  notes")
        rows: dict[str, Any] = {}
        for label, methods in [*((m.value, (m,)) for m in RiskMethod), ("all", tuple(RiskMethod))]:
            cfg = RiskConfig(interval_ns=step, window_days=window_days, methods=methods)
            best: dict[str, Any] | None = None
            for _ in range(1 if RiskMethod.GARCH in methods else args.repeat):
                result = run_core(bars, cfg, methods)
                if best is None or result["seconds"] < best["seconds"]:
                    best = result
            assert best is not None
            per = best["seconds"] / best["candles"]
            note = ""
            if RiskMethod.GARCH in methods:
                fit = best["fit_seconds"] / max(best["fits"], 1)
                between = (best["seconds"] - best["fit_seconds"]) / best["candles"]
                note = f"{best['fits']} refits × {fit * 1e3:.1f} ms; between refits {between * 1e6:.1f} µs/candle"
                rows[label] = {"us_per_candle": per * 1e6, "fit_ms": fit * 1e3, "refits": best["fits"],
                               "us_between_refits": between * 1e6}
            else:
                rows[label] = {"us_per_candle": per * 1e6}
            print(f"  {label:<14} {per * 1e6:>10.1f} {1 / per:>11,.0f}  {note}")
        n, seconds = agent_path(bars, window_days, interval)
        rows["agent_path_all"] = {"us_per_candle": seconds / n * 1e6}
        print(f"  {'agent path':<14} {seconds / n * 1e6:>10.1f} {n / seconds:>11,.0f}  "
              "decode candle.v1 + fold + build and encode every estimate (all methods)")
        report[interval] = rows
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
