"""VaR backtests: the coverage tests against independent formulations, breach counting, the
long-run breach rate on simulated returns of known distribution, and the portfolio math."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from schemas.risk import RiskMethod
from streams.core.risk import DAY_NS, RiskConfig, RollingRisk
from streams.core.risk_backtest import (
    backtest,
    christoffersen_independence,
    conditional_coverage,
    kupiec_pof,
    transition_counts,
)
from streams.core.risk_portfolio import portfolio_risk

M = RiskMethod
HOUR = 3600 * 10**9


# --- the statistics ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "x"), [(250, 12), (250, 25), (1000, 31), (500, 0), (40, 40), (1, 1)])
def test_kupiec_is_twice_the_binomial_log_likelihood_ratio(n: int, x: int) -> None:
    """LR_pof = 2 [ln Bin(x; n, x/n) − ln Bin(x; n, 0.05)]: the binomial coefficient cancels."""
    expected = 2 * (stats.binom.logpmf(x, n, x / n) - stats.binom.logpmf(x, n, 0.05))
    result = kupiec_pof(n, x)
    assert result.statistic == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert result.p_value == pytest.approx(stats.chi2.sf(expected, 1), rel=1e-9, abs=1e-300)


def test_kupiec_worked_example() -> None:
    # 250 days at 99 %, 8 exceptions (2.5 expected), by hand:
    # −2[242 ln 0.99 + 8 ln 0.01] + 2[242 ln(242/250) + 8 ln(8/250)] = 7.7336: rejected at 1 %
    result = kupiec_pof(250, 8, p=0.01)
    assert result.statistic == pytest.approx(7.7336, abs=1e-4)
    assert result.p_value == pytest.approx(0.00542, abs=1e-5)


def markov_loglik(hits: list[bool], first_order: bool) -> float:
    """Log-likelihood of the hit sequence after its first element, observation by observation:
    under a first-order Markov chain with transition probabilities estimated from the data,
    or under independence with one probability."""
    pairs = list(itertools.pairwise(hits))
    if first_order:
        prob = {}
        for state in (False, True):
            nxt = [b for a, b in pairs if a == state]
            prob[state] = sum(nxt) / len(nxt) if nxt else 0.0
        p_of = [prob[a] for a, _ in pairs]
    else:
        pi = sum(b for _, b in pairs) / len(pairs)
        p_of = [pi] * len(pairs)
    total = 0.0
    for p, (_, b) in zip(p_of, pairs, strict=True):
        q = p if b else 1 - p
        total += math.log(q) if q > 0 else 0.0
    return total


@pytest.mark.parametrize("seed", range(6))
def test_christoffersen_is_the_markov_likelihood_ratio(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hits = list(rng.random(300) < (0.05 + 0.1 * (seed % 3)))
    if seed == 5:  # clustered breaches
        hits = [False] * 100 + [True] * 5 + [False] * 100 + [True, True, False] * 4
    expected = 2 * (markov_loglik(hits, True) - markov_loglik(hits, False))
    result = christoffersen_independence(hits)
    assert result.statistic == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert result.p_value == pytest.approx(stats.chi2.sf(expected, 1), rel=1e-9, abs=1e-300)
    cc = conditional_coverage(kupiec_pof(len(hits), sum(hits)), result)
    assert cc.p_value == pytest.approx(stats.chi2.sf(cc.statistic, 2), rel=1e-9, abs=1e-300)


def test_clustered_breaches_fail_independence_and_counts() -> None:
    hits = [False] * 190 + [True] * 10
    assert transition_counts(hits) == (189, 1, 0, 9)
    assert christoffersen_independence(hits).p_value < 1e-6
    assert kupiec_pof(200, 10).p_value > 0.9  # the right number of breaches, all at once
    assert math.isnan(christoffersen_independence([True]).statistic)
    assert math.isnan(kupiec_pof(0, 0).p_value)


# --- the protocol -----------------------------------------------------------------------


def test_breaches_are_next_day_losses_above_the_forecast() -> None:
    """Daily bars: the forecast as of each close is compared with the next close; checked
    against a loop over the estimator by hand."""
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(7).standard_t(4, 400) * 0.02))
    bars = [(i * DAY_NS, float(c)) for i, c in enumerate(closes)]
    cfg = RiskConfig(interval_ns=DAY_NS, window_days=60, methods=(M.PARAMETRIC, M.HISTORICAL))
    rows = {r.method: r for r in backtest(bars, cfg)}
    risk = RollingRisk(cfg)
    expected: dict[RiskMethod, list[bool]] = {m: [] for m in cfg.methods}
    for i, (open_ns, close) in enumerate(bars[:-1]):
        risk.update(open_ns, close)
        for m in cfg.methods:
            est = risk.estimate(m)
            if est is not None:
                expected[m].append(close - bars[i + 1][1] > est.var)
    for m in cfg.methods:
        assert rows[m].observations == len(expected[m]) > 300
        assert rows[m].breaches == sum(expected[m])
        assert rows[m].expected == pytest.approx(0.05 * len(expected[m]))


def test_intraday_forecasts_are_taken_at_midnight_and_realised_a_day_later() -> None:
    """Hourly bars: one forecast per UTC day, loss = close at midnight − close 24 h later; a
    missing hour counts at the previous close (as a realised price) and a day whose midnight
    candle is missing has no forecast; `start`/`end` bound the as-of times."""
    rng = np.random.default_rng(3)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, 24 * 30)))
    bars = [(i * HOUR, float(c)) for i, c in enumerate(closes) if i != 24 * 20 - 1]  # 23:00 of day 19 absent
    cfg = RiskConfig(interval_ns=HOUR, window_days=7, methods=(M.PARAMETRIC,))
    row = backtest(bars, cfg, start_ns=10 * DAY_NS, end_ns=25 * DAY_NS)[0]
    assert row.first_ns == 10 * DAY_NS and row.last_ns == 24 * DAY_NS
    assert row.observations == 14  # 15 midnights in [day 10, day 25), day 20's candle absent
    risk = RollingRisk(cfg)
    by_close = {o + HOUR: c for o, c in bars}
    by_close[20 * DAY_NS] = by_close[20 * DAY_NS - HOUR]  # the absent bar's close: the previous one
    hits = []
    for open_ns, close in bars:
        risk.update(open_ns, close)
        as_of = open_ns + HOUR
        if as_of % DAY_NS == 0 and 10 * DAY_NS <= as_of < 25 * DAY_NS:
            assert as_of != 20 * DAY_NS
            est = risk.estimate(M.PARAMETRIC)
            assert est is not None
            hits.append(close - by_close[as_of + DAY_NS] > est.var)
    assert row.breaches == sum(hits)


# --- long-run breach rates on simulated returns of known distribution ------------------------


def binomial_99(n: int) -> tuple[float, float]:
    return stats.binom.ppf(0.005, n, 0.05), stats.binom.ppf(0.995, n, 0.05)


def simulate_garch(n: int, seed: int, omega: float = 1e-5, alpha: float = 0.08, beta: float = 0.9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, var = np.empty(n), omega / (1 - alpha - beta)
    for i in range(n):
        out[i] = math.sqrt(var) * rng.standard_normal()
        var = omega + alpha * out[i] ** 2 + beta * var
    return out


def bars_of(returns: np.ndarray, step: int) -> list[tuple[int, float]]:
    closes = 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))
    return [(i * step, float(c)) for i, c in enumerate(closes)]


def assert_in_binomial_interval(rows) -> None:
    for row in rows:
        lo, hi = binomial_99(row.observations)
        assert lo <= row.breaches <= hi, (row.method, row.breaches, row.observations, lo, hi)


def test_breach_rate_daily_iid_normal() -> None:
    """6000 days of N(0, 3 %²): the window methods' breach rates are 5 % within the 99 %
    binomial interval ([256, 343] breaches of ~5970)."""
    returns = np.random.default_rng(1).normal(0, 0.03, 6000)
    cfg = RiskConfig(interval_ns=DAY_NS, window_days=250, methods=(M.HISTORICAL, M.PARAMETRIC, M.PARAMETRIC_T))
    rows = backtest(bars_of(returns, DAY_NS), cfg)
    assert all(r.observations > 5900 for r in rows)
    assert_in_binomial_interval(rows)


def test_breach_rate_hourly_iid_normal_and_student_t_scaled_to_one_day() -> None:
    """1500 days of i.i.d. hours: forecasts from hourly bars, realised over whole days. This
    holds only if the hour-to-day rule is right (for every method, both distributions)."""
    methods = (M.HISTORICAL, M.PARAMETRIC, M.PARAMETRIC_T, M.EWMA)
    cfg = RiskConfig(interval_ns=HOUR, window_days=30, methods=methods)
    rng = np.random.default_rng(1)
    normal = rng.normal(0, 0.006, 1500 * 24)
    student = rng.standard_t(4, 1500 * 24) * 0.006 / math.sqrt(2)
    for returns in (normal, student):
        rows = backtest(bars_of(returns, HOUR), cfg)
        assert all(r.observations > 1450 for r in rows)
        assert_in_binomial_interval(rows)


def test_breach_rate_on_a_garch_process() -> None:
    """3000 days of a GARCH(1,1) with normal shocks: EWMA and GARCH (the models for it) and the
    window methods stay within the interval. GARCH refits every 5 days to keep the test short."""
    cfg = RiskConfig(interval_ns=DAY_NS, window_days=500, garch_refit_ns=5 * DAY_NS,
                     methods=(M.HISTORICAL, M.PARAMETRIC, M.EWMA, M.GARCH))
    rows = backtest(bars_of(simulate_garch(3000, seed=1), DAY_NS), cfg)
    assert {r.method for r in rows if r.observations > 2500} == set(cfg.methods)
    assert_in_binomial_interval(rows)


# --- portfolio math ---------------------------------------------------------------------


def test_one_long_unit_is_the_single_asset_historical_var() -> None:
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(4).normal(0, 0.005, 24 * 30)))
    risk = RollingRisk(RiskConfig(interval_ns=HOUR, window_days=30, methods=(M.HISTORICAL,)))
    for i, c in enumerate(closes):
        risk.update(i * HOUR, float(c))
    est = risk.estimate(M.HISTORICAL)
    assert est is not None
    daily = np.array(risk.sorted_daily())[:, None]
    result = portfolio_risk(np.array([risk.price]), daily, "historical")
    assert result.var == pytest.approx(est.var, rel=1e-12)
    assert result.es == pytest.approx(est.es, rel=1e-12)


def test_parametric_portfolio_against_numpy() -> None:
    rng = np.random.default_rng(6)
    cov = np.array([[4e-4, 2e-4, -1e-4], [2e-4, 9e-4, 0.0], [-1e-4, 0.0, 1e-4]])
    r = rng.multivariate_normal([0.001, 0.0, -0.0005], cov, size=400)
    v = np.array([65_000.0, -3_000.0 * 2, 1_000.0])  # long BTC, short 2 ETH, long a stable-ish asset
    result = portfolio_risk(v, r, "parametric")
    sample = np.cov(r.T)
    sigma = math.sqrt(v @ sample @ v)
    mu = v @ r.mean(axis=0)
    assert result.var == pytest.approx(-(mu + stats.norm.ppf(0.05) * sigma), rel=1e-10)
    assert result.es == pytest.approx(-mu + sigma * stats.norm.pdf(stats.norm.ppf(0.05)) / 0.05, rel=1e-10)
    assert result.volatility == pytest.approx(sigma * math.sqrt(365) / np.abs(v).sum(), rel=1e-10)
    assert np.allclose(result.correlation, np.corrcoef(r.T), atol=1e-12)
    hist = portfolio_risk(v, r, "historical")
    pnl = np.sort((np.exp(r) - 1) @ v)
    assert hist.var == pytest.approx(-np.quantile(pnl, 0.05, method="inverted_cdf"), rel=1e-12)


def test_hedged_positions_diversify() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(0, 0.03, 500)
    r = np.column_stack([a, a * 0.98 + rng.normal(0, 0.003, 500)])
    single = portfolio_risk(np.array([1000.0]), r[:, :1], "parametric")
    hedged = portfolio_risk(np.array([1000.0, -1000.0]), r, "parametric")
    assert hedged.var < 0.2 * single.var
    with pytest.raises(ValueError):
        portfolio_risk(np.array([1.0, 2.0]), r[:, :1])
