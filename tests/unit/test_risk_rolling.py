"""The incremental rolling state equals a from-scratch recomputation after every update
(hypothesis), stays bounded, and a restart that replays the stored closes continues exactly
where an uninterrupted run is."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.risk import RiskMethod
from streams.core.risk import (
    DAY_NS,
    RiskConfig,
    RollingRisk,
    empirical_tail,
    moments_from_sums,
    normal_tail,
    quantise,
)

M = RiskMethod
HOUR = 3600 * 10**9
NO_GARCH = (M.HISTORICAL, M.PARAMETRIC, M.PARAMETRIC_T, M.EWMA)


@st.composite
def candle_series(draw: st.DrawFn) -> tuple[RiskConfig, list[tuple[int, float]]]:
    interval = draw(st.sampled_from([HOUR, 6 * HOUR, DAY_NS]))
    per_day = DAY_NS // interval
    window_days = draw(st.integers(2 if per_day == 1 else 1, max(2, 48 // per_day)))
    cfg = RiskConfig(interval_ns=interval, window_days=window_days, min_days=1, methods=NO_GARCH)
    n = draw(st.integers(1, 160))
    # mostly consecutive candles, some gaps (hours without trades), now and then a long one
    gaps = draw(st.lists(st.sampled_from([1, 1, 1, 1, 2, 3, 5, 60]), min_size=n, max_size=n))
    prices = draw(st.lists(st.integers(1, 400), min_size=n, max_size=n))
    t, bars = 1_700_000_000 * 10**9 // DAY_NS * DAY_NS, []
    for gap, price in zip(gaps, prices, strict=True):
        t += gap * interval
        bars.append((t, price / 100.0))
    return cfg, bars


def scratch_returns(cfg: RiskConfig, bars: list[tuple[int, float]]) -> tuple[list[float], list[float]]:
    """(every bar's return, every bar's log close) from the first candle on, an absent candle
    repeating the last close."""
    logs: list[float] = []
    last_open = None
    for open_ns, close in bars:
        if last_open is not None:
            logs += [logs[-1]] * ((open_ns - last_open) // cfg.interval_ns - 1)
        logs.append(math.log(close))
        last_open = open_ns
    return [b - a for a, b in itertools.pairwise(logs)], logs


@settings(max_examples=150, deadline=None)
@given(candle_series())
def test_incremental_state_equals_recomputation_after_every_update(case) -> None:
    cfg, bars = case
    risk = RollingRisk(cfg)
    w, n = cfg.window_bars, cfg.bars_per_day
    lam = cfg.ewma_bar_lambda
    for i, (open_ns, close) in enumerate(bars):
        assert risk.update(open_ns, close)
        returns, logs = scratch_returns(cfg, bars[: i + 1])
        window = returns[-w:] if returns else []
        assert risk.window_returns() == window
        # exact power sums: the moments are the window's, whatever was added and removed
        q = [quantise(r) for r in window]
        assert (risk._s1, risk._s2, risk._s3, risk._s4) == (
            sum(q), sum(x * x for x in q), sum(x**3 for x in q), sum(x**4 for x in q))
        # EWMA: the weighted sum over the window, recomputed
        ew = sum(lam**k * r * r for k, r in enumerate(reversed(window)))
        assert risk._ew == pytest.approx(ew, rel=1e-12, abs=0)  # all terms positive: no cancellation
        # overlapping one-day returns inside the window
        daily = [logs[j] - logs[j - n] for j in range(n, len(logs))][-(w - n + 1):]
        assert risk.sorted_daily() == sorted(daily)
        # and the estimates read from that state equal the ones computed from scratch
        if len(window) >= cfg.min_returns:
            mean, var, _ = moments_from_sums(len(q), sum(q), sum(x * x for x in q), sum(x**3 for x in q),
                                             sum(x**4 for x in q))
            assert var == pytest.approx(float(np.var(window, ddof=1)), rel=1e-9, abs=1e-20)
            est = risk.estimate(M.PARAMETRIC)
            assert est is not None
            v, e = normal_tail(n * mean, math.sqrt(n * var))
            assert (est.var, est.es) == (close * v, close * e)
            hist = risk.estimate(M.HISTORICAL)
            if len(daily) >= 20:
                assert hist is not None
                v, e = empirical_tail(sorted(daily))
                assert (hist.var, hist.es) == (close * v, close * e)
            else:
                assert hist is None
        # bounded: never more than the window (plus nothing: no GARCH here)
        assert len(risk._returns) <= w and len(risk._sorted) <= max(w - n + 1, 1)


@settings(max_examples=60, deadline=None)
@given(candle_series(), st.data())
def test_replaying_the_last_closes_restores_every_estimate(case, data) -> None:
    """A restart loads the last `rebuild_bars` stored candles before the next one and replays
    them: from then on it publishes exactly what the uninterrupted run publishes."""
    cfg, bars = case
    cut = data.draw(st.integers(0, len(bars)))
    live = RollingRisk(cfg)
    for b in bars[:cut]:
        live.update(*b)
    restarted = RollingRisk(cfg)
    restarted.replay(bars[:cut][-cfg.rebuild_bars:])
    for b in bars[cut:]:
        live.update(*b)
        restarted.update(*b)
        for m in (M.HISTORICAL, M.PARAMETRIC, M.PARAMETRIC_T):
            assert restarted.estimate(m) == live.estimate(m)
        a, b_ = restarted.estimate(M.EWMA), live.estimate(M.EWMA)
        assert (a is None) == (b_ is None)
        if a is not None and b_ is not None:
            assert a.var == pytest.approx(b_.var, rel=1e-12) and a.es == pytest.approx(b_.es, rel=1e-12)


def test_garch_restart_refits_where_the_live_run_did() -> None:
    """Live: refit at each UTC midnight, recursion in between. Restart in the middle of a day:
    replaying the last window + one day of closes refits at the same midnight on the same
    returns, so every GARCH estimate after it is identical."""
    rng = np.random.default_rng(9)
    closes = 100 * np.exp(np.cumsum(rng.standard_t(5, 24 * 40) * 0.004))
    bars = [(i * HOUR, float(c)) for i, c in enumerate(closes)]
    cfg = RiskConfig(interval_ns=HOUR, window_days=12, garch_min_returns=200, methods=(M.GARCH,))
    live = RollingRisk(cfg)
    cut = 24 * 30 + 7  # 07:00 on day 30
    for b in bars[:cut]:
        live.update(*b)
    restarted = RollingRisk(cfg)
    restarted.replay(bars[cut - cfg.rebuild_bars : cut])
    assert restarted.garch_fits == 1
    assert restarted.garch_state() == live.garch_state()
    for b in bars[cut:]:
        live.update(*b)
        restarted.update(*b)
        assert restarted.estimate(M.GARCH) == live.estimate(M.GARCH)
    assert live.garch_state() is not None


def test_memory_is_bounded_by_the_window() -> None:
    cfg = RiskConfig(interval_ns=HOUR, window_days=3, garch_min_returns=60)
    risk = RollingRisk(cfg)
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.005, 24 * 20)))
    for i, c in enumerate(closes):
        risk.update(i * HOUR, float(c))
    assert risk.stats()["returns"] == cfg.window_bars + cfg.refit_bars
    assert risk.stats()["in_window"] == cfg.window_bars
    assert risk.stats()["daily"] == cfg.window_bars - 24 + 1
