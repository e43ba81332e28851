"""Rolling risk estimators (streams/core/risk.py) against independent numpy/scipy computations
on recorded returns, the intraday-to-one-day rule, GARCH against `arch`, and gaps.

Tolerances: VaR and volatility 1e-9 relative (the estimators are closed forms of the same
moments; only float rounding differs), expected shortfall 1e-8 relative against scipy's adaptive
quadrature (quad itself is good to ~1e-10 here), GARCH 1e-9 against arch's own numbers.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime

import numpy as np
import pytest
from arch import arch_model
from scipy import integrate, stats

from schemas.risk import RiskMethod
from streams.core.risk import (
    ALPHA,
    DAY_NS,
    Z_ALPHA,
    RiskConfig,
    RollingRisk,
    empirical_tail,
    fit_garch,
    garch_horizon_variance,
    moments_from_sums,
    normal_tail,
    quantise,
    student_t_tail,
)
from tests.shared_data import DATA

HISTORY = DATA / "history"
HOUR = 3600 * 10**9
M = RiskMethod


def load_closes(name: str) -> list[tuple[int, float]]:
    """(open ns, close) from a history CSV, read with csv + datetime only."""
    with (HISTORY / name).open() as f:
        rows = list(csv.DictReader(f))
    return [(int(datetime.fromisoformat(r["timestamp_utc_iso"].replace("Z", "+00:00")).timestamp()) * 10**9,
             float(r["close"])) for r in rows]


@pytest.fixture(scope="module")
def btc_1h() -> list[tuple[int, float]]:
    return load_closes("bitstamp_btcusd_1h.csv")


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def oracle_es(pdf, q: float, price: float) -> float:
    """ES in quote currency: P · E[1 − e^R | R ≤ q] by adaptive quadrature of the density."""
    mass = integrate.quad(lambda x: -math.expm1(x) * pdf(x), -np.inf, q, epsabs=0, epsrel=1e-12, limit=200)[0]
    return price * mass / 0.05


# --- every estimator against numpy/scipy on recorded BTC hourly returns ---------------------


@pytest.fixture(scope="module")
def rolled(btc_1h: list[tuple[int, float]]) -> tuple[RollingRisk, np.ndarray, float]:
    """A 30-day window after 3000 hourly bars (so adds and removes both happened), and the
    oracle's view: the last W+24 closes, from numpy alone."""
    cfg = RiskConfig(interval_ns=HOUR, window_days=30)
    risk = RollingRisk(cfg)
    bars = btc_1h[:3000]
    for open_ns, close in bars:
        risk.update(open_ns, close)
    closes = np.array([c for _, c in bars])
    return risk, closes, closes[-1]


def window_returns(closes: np.ndarray, w: int) -> np.ndarray:
    return np.diff(np.log(closes))[-w:]


def test_parametric_normal_matches_scipy(rolled) -> None:
    risk, closes, price = rolled
    r = window_returns(closes, 720)
    mu, sigma = 24 * r.mean(), math.sqrt(24) * r.std(ddof=1)
    dist = stats.norm(mu, sigma)
    q = dist.ppf(0.05)
    est = risk.estimate(M.PARAMETRIC)
    assert est is not None and est.window == 720
    assert rel(est.var, price * -math.expm1(q)) < 1e-9
    assert rel(est.es, oracle_es(dist.pdf, q, price)) < 1e-8
    assert rel(est.volatility, r.std(ddof=1) * math.sqrt(24 * 365)) < 1e-9


def test_parametric_student_t_matches_scipy(rolled) -> None:
    risk, closes, price = rolled
    r = window_returns(closes, 720)
    kurt = stats.kurtosis(r, fisher=True, bias=True)
    assert kurt > 0  # BTC hours are fat-tailed: the t is really used
    nu = 4 + 6 * 24 / kurt  # one day's kurtosis is the bar's / 24 (i.i.d. bars)
    sigma = math.sqrt(24) * r.std(ddof=1)
    dist = stats.t(nu, loc=24 * r.mean(), scale=sigma * math.sqrt((nu - 2) / nu))
    assert rel(dist.std(), sigma) < 1e-12
    q = dist.ppf(0.05)
    est = risk.estimate(M.PARAMETRIC_T)
    assert est is not None
    assert rel(est.detail["nu"], nu) < 1e-9
    assert rel(est.var, price * -math.expm1(q)) < 1e-9
    assert rel(est.es, oracle_es(dist.pdf, q, price)) < 1e-8


def test_historical_uses_overlapping_daily_returns(rolled) -> None:
    risk, closes, price = rolled
    logp = np.log(closes)
    daily = (logp[24:] - logp[:-24])[-(720 - 24 + 1):]  # one-day returns ending inside the window
    q = np.quantile(daily, 0.05, method="inverted_cdf")
    est = risk.estimate(M.HISTORICAL)
    assert est is not None and est.detail["observations"] == len(daily) == 697
    assert rel(est.var, price * -math.expm1(q)) < 1e-9
    assert rel(est.es, price * np.mean(-np.expm1(daily[daily <= q]))) < 1e-9
    assert rel(est.volatility, np.diff(logp)[-720:].std(ddof=1) * math.sqrt(24 * 365)) < 1e-9


def test_ewma_is_riskmetrics_with_daily_lambda(rolled) -> None:
    risk, closes, price = rolled
    r = window_returns(closes, 720)
    lam = 0.94 ** (1 / 24)
    weights = lam ** np.arange(len(r))[::-1]  # newest return weight 1
    bar_var = float(weights @ (r * r)) * (1 - lam) / (1 - lam ** len(r))
    sigma = math.sqrt(24 * bar_var)
    est = risk.estimate(M.EWMA)
    assert est is not None
    assert rel(est.var, price * -math.expm1(stats.norm.ppf(0.05, 0, sigma))) < 1e-9
    assert rel(est.es, oracle_es(stats.norm(0, sigma).pdf, stats.norm.ppf(0.05, 0, sigma), price)) < 1e-8
    assert rel(est.volatility, sigma * math.sqrt(365)) < 1e-9
    # the truncation at the window is what RiskMetrics' infinite recursion gives, up to λ^W
    full = np.diff(np.log(closes))
    s2 = float(np.mean(full[:24] ** 2))
    for x in full[24:]:
        s2 = lam * s2 + (1 - lam) * x * x
    assert rel(24 * s2, sigma**2) < 0.94**30 * 2


def test_every_half_day_of_a_long_run_matches_numpy(btc_1h) -> None:
    """Removals over many windows: the incremental moments stay exact."""
    risk = RollingRisk(RiskConfig(interval_ns=HOUR, window_days=7, methods=(M.PARAMETRIC,)))
    closes = np.array([c for _, c in btc_1h[:6000]])
    logr = np.diff(np.log(closes))
    for i, (open_ns, close) in enumerate(btc_1h[:6000]):
        risk.update(open_ns, close)
        if i >= 168 and i % 12 == 0:
            r = logr[i - 168 : i]
            mean, var, kurt = risk.bar_moments()
            assert rel(mean, r.mean()) < 1e-9 or abs(mean - r.mean()) < 1e-15
            assert rel(var, r.var(ddof=1)) < 1e-9
            assert kurt is not None and rel(kurt, stats.kurtosis(r, bias=True)) < 1e-9


# --- tails ------------------------------------------------------------------------------


@pytest.mark.parametrize("nu", [4.01, 4.5, 6.0, 10.0, 50.0, 500.0])
@pytest.mark.parametrize("sigma", [0.004, 0.04, 0.3])
def test_student_t_tail_against_quadrature(nu: float, sigma: float) -> None:
    mu = 0.001
    dist = stats.t(nu, loc=mu, scale=sigma * math.sqrt((nu - 2) / nu))
    q = dist.ppf(0.05)
    var, es = student_t_tail(mu, sigma, nu)
    assert rel(var, -math.expm1(q)) < 1e-10
    assert rel(es, oracle_es(dist.pdf, q, 1.0)) < 1e-8


def test_normal_tail_closed_form_against_quadrature() -> None:
    for mu, sigma in [(0.0, 0.01), (0.002, 0.05), (-0.01, 0.4)]:
        dist = stats.norm(mu, sigma)
        var, es = normal_tail(mu, sigma)
        assert rel(var, -math.expm1(dist.ppf(0.05))) < 1e-12
        assert rel(es, oracle_es(dist.pdf, dist.ppf(0.05), 1.0)) < 1e-9


def test_the_written_out_normal_quantile_is_scipys() -> None:
    assert float(stats.norm.ppf(ALPHA)) == Z_ALPHA  # exactly: every parametric estimate starts from it


def test_amounts_are_floored_at_zero_and_es_dominates_var() -> None:
    assert normal_tail(0.5, 0.01) == (0.0, 0.0)  # a 5 % tail that still gains loses nothing
    var, es = empirical_tail([0.01 * i - 0.1 for i in range(40)])
    assert es >= var > 0


def test_moments_from_exact_sums() -> None:
    r = np.random.default_rng(3).standard_t(5, 500) * 0.01
    q = [quantise(float(x)) for x in r]
    mean, var, kurt = moments_from_sums(len(q), sum(q), sum(x * x for x in q), sum(x**3 for x in q),
                                        sum(x**4 for x in q))
    assert rel(mean, r.mean()) < 1e-12 and rel(var, r.var(ddof=1)) < 1e-12
    assert kurt is not None and rel(kurt, stats.kurtosis(r, bias=True)) < 1e-10


# --- from bars to one day: the rule, and why -------------------------------------------------


def simulated(returns: np.ndarray, step_ns: int = HOUR) -> list[tuple[int, float]]:
    closes = 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))
    return [(i * step_ns, float(c)) for i, c in enumerate(closes)]


def test_hourly_normal_returns_scale_to_the_true_one_day_var() -> None:
    """i.i.d. normal hours with σ_h: the one-day return is N(0, 24σ_h²), so every method's VaR
    must approach P(1 − e^{z σ_h √24}) (sampling error of a 90-day window: a few per cent)."""
    sigma_h = 0.006
    bars = simulated(np.random.default_rng(11).normal(0.0, sigma_h, 90 * 24))
    risk = RollingRisk(RiskConfig(interval_ns=HOUR, window_days=90, methods=(M.HISTORICAL, M.PARAMETRIC, M.EWMA)))
    for b in bars:
        risk.update(*b)
    truth = risk.price * -math.expm1(stats.norm.ppf(0.05) * sigma_h * math.sqrt(24))
    for method, tolerance in [(M.PARAMETRIC, 0.06), (M.HISTORICAL, 0.15), (M.EWMA, 0.15)]:
        est = risk.estimate(method)
        assert est is not None
        assert rel(est.var, truth) < tolerance, method
        assert rel(est.volatility, sigma_h * math.sqrt(24 * 365)) < tolerance, method


def test_historical_aggregates_fat_tailed_hours_where_root_time_scaling_fails() -> None:
    """Student-t(3) hours: the 5 % quantile of one day (24 hours summed, by Monte Carlo) is
    matched by the overlapping one-day returns; √24 × the hourly 5 % quantile is not (a fat-
    tailed hour's 5 % quantile is only ~1.36σ, a day's is near the normal 1.64σ)."""
    rng = np.random.default_rng(5)
    hours = rng.standard_t(3, 2000 * 24) * 0.004  # 2000 days: the 5 % quantile to ~3 %
    bars = simulated(hours)
    risk = RollingRisk(RiskConfig(interval_ns=HOUR, window_days=2000, methods=(M.HISTORICAL,)))
    for b in bars:
        risk.update(*b)
    day_q = np.quantile(rng.standard_t(3, (200_000, 24)).sum(axis=1) * 0.004, 0.05)
    true_var = risk.price * -math.expm1(day_q)
    est = risk.estimate(M.HISTORICAL)
    assert est is not None and rel(est.var, true_var) < 0.08
    root_time = risk.price * -math.expm1(math.sqrt(24) * np.quantile(hours, 0.05))
    assert root_time < 0.88 * true_var  # what the rule we did not take would have said


def test_daily_candles_use_the_returns_themselves() -> None:
    r = np.random.default_rng(2).normal(0, 0.03, 60)
    risk = RollingRisk(RiskConfig(interval_ns=DAY_NS, window_days=60, methods=(M.HISTORICAL, M.PARAMETRIC)))
    for b in simulated(r, DAY_NS):
        risk.update(*b)
    assert risk.sorted_daily() == pytest.approx(sorted(r), abs=1e-12)
    est = risk.estimate(M.PARAMETRIC)
    assert est is not None and rel(est.volatility, r.std(ddof=1) * math.sqrt(365)) < 1e-9


def test_t_degrees_of_freedom_grow_with_aggregation() -> None:
    """Cumulants add over i.i.d. bars: one day of hours has 1/24 of the hourly excess kurtosis."""
    hours = np.random.default_rng(8).standard_t(5, 60 * 24) * 0.005
    hourly = RollingRisk(RiskConfig(interval_ns=HOUR, window_days=60, methods=(M.PARAMETRIC_T,)))
    for b in simulated(hours):
        hourly.update(*b)
    est = hourly.estimate(M.PARAMETRIC_T)
    assert est is not None
    kurt = stats.kurtosis(hours, bias=True)
    assert rel(est.detail["nu"], 4 + 6 * 24 / kurt) < 1e-9


# --- gaps, re-deliveries, warm-up ------------------------------------------------------------


def test_missing_candles_are_unchanged_prices_and_redeliveries_change_nothing() -> None:
    cfg = RiskConfig(interval_ns=HOUR, window_days=2, min_days=1, methods=(M.HISTORICAL, M.PARAMETRIC, M.EWMA))
    gappy, full = RollingRisk(cfg), RollingRisk(cfg)
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(4).normal(0, 0.01, 80)))
    # every 7th hour had no trade: absent for `gappy`, its previous close repeated for `full`
    for i, c in enumerate(closes):
        filled = float(closes[i - 1]) if i % 7 == 3 else float(c)
        full.update(i * HOUR, filled)
        if i % 7 != 3:
            gappy.update(i * HOUR, float(c))
    assert gappy.window_returns() == full.window_returns()
    for m in cfg.methods:
        assert gappy.estimate(m) == full.estimate(m)
    before = gappy.estimate(M.PARAMETRIC)
    assert not gappy.update(79 * HOUR, 1.0)  # the last candle again (a re-delivery)
    assert not gappy.update(10 * HOUR, 1.0)  # an old one
    assert gappy.estimate(M.PARAMETRIC) == before


def test_a_gap_longer_than_the_window_leaves_a_window_of_zeros() -> None:
    cfg = RiskConfig(interval_ns=HOUR, window_days=1, min_days=1, methods=(M.PARAMETRIC, M.HISTORICAL))
    risk = RollingRisk(cfg)
    risk.update(0, 100.0)
    risk.update(HOUR, 101.0)
    risk.update(1000 * HOUR, 101.0)  # 998 silent hours
    assert risk.window_returns() == [0.0] * 24
    est = risk.estimate(M.PARAMETRIC)
    assert est is not None and est.var == 0.0 and est.volatility == 0.0


def test_no_estimate_before_the_minimum_history() -> None:
    cfg = RiskConfig(interval_ns=HOUR, window_days=30, min_days=7)
    risk = RollingRisk(cfg)
    bars = simulated(np.random.default_rng(1).normal(0, 0.01, 7 * 24))
    for b in bars[:-1]:
        risk.update(*b)
    assert risk.estimates() == []
    risk.update(*bars[-1])
    assert {e.method for e in risk.estimates()} == {M.HISTORICAL, M.PARAMETRIC, M.PARAMETRIC_T, M.EWMA}
    assert risk.estimate(M.GARCH) is None  # needs 250 returns


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        RiskConfig(interval_ns=7 * HOUR)
    with pytest.raises(ValueError):
        RiskConfig(ewma_lambda=1.0)
    assert RiskConfig().rebuild_bars == 90 * 24 + 24 + 1
    assert RiskConfig(methods=(M.EWMA,)).rebuild_bars == 90 * 24 + 1


# --- GARCH(1,1) against arch ------------------------------------------------------------


def test_garch_fit_on_a_reference_series_matches_arch(btc_1h) -> None:
    """At a UTC midnight with a full window the agent's fit is arch's own fit of the same
    returns (zero mean, normal, scaled by 100·√24), and its one-day variance is the sum of
    arch's 24 hourly variance forecasts."""
    cfg = RiskConfig(interval_ns=HOUR, window_days=30, methods=(M.GARCH,))
    risk = RollingRisk(cfg)
    bars = btc_1h[:2000]
    last_midnight = max(i for i, (o, _) in enumerate(bars) if (o + HOUR) % DAY_NS == 0)
    for b in bars[: last_midnight + 1]:
        risk.update(*b)
    state = risk.garch_state()
    assert state is not None
    fit, next_var = state
    scale = 100 * math.sqrt(24)
    r = window_returns(np.array([c for _, c in bars[: last_midnight + 1]]), 720) * scale
    res = arch_model(r, mean="Zero", vol="GARCH", p=1, q=1, dist="normal", rescale=False).fit(disp="off")
    assert fit.omega == pytest.approx(res.params["omega"], rel=1e-9)
    assert fit.alpha == pytest.approx(res.params["alpha[1]"], rel=1e-9)
    assert fit.beta == pytest.approx(res.params["beta[1]"], rel=1e-9)
    forecast = res.forecast(horizon=24, reindex=False).variance.to_numpy()[-1]
    assert next_var == pytest.approx(forecast[0], rel=1e-9)
    est = risk.estimate(M.GARCH)
    assert est is not None
    sigma = math.sqrt(forecast.sum()) / scale
    assert rel(est.var, risk.price * -math.expm1(stats.norm.ppf(0.05) * sigma)) < 1e-8
    assert rel(est.volatility, sigma * math.sqrt(365)) < 1e-8

    # between refits: the GARCH recursion with the fitted parameters, in plain numpy
    more = bars[last_midnight + 1 : last_midnight + 11]
    var = next_var
    prev = bars[last_midnight][1]
    for open_ns, close in more:
        risk.update(open_ns, close)
        eps = math.log(close / prev) * scale
        var = fit.omega + fit.alpha * eps * eps + fit.beta * var
        prev = close
    state = risk.garch_state()
    assert state is not None and state[0] == fit and state[1] == pytest.approx(var, rel=1e-12)


def test_garch_recovers_known_parameters() -> None:
    """Simulated GARCH(1,1): the fit lands near the truth (sampling error of 5000 draws)."""
    rng = np.random.default_rng(21)
    omega, alpha, beta = 0.05, 0.1, 0.85
    eps, var = np.empty(5000), omega / (1 - alpha - beta)
    for i in range(len(eps)):
        eps[i] = math.sqrt(var) * rng.standard_normal()
        var = omega + alpha * eps[i] ** 2 + beta * var
    fit = fit_garch(eps)
    assert fit.converged
    assert abs(fit.alpha - alpha) < 0.03 and abs(fit.beta - beta) < 0.05 and abs(fit.omega - omega) < 0.05


def test_garch_horizon_variance_sums_the_recursion() -> None:
    fit = fit_garch(np.random.default_rng(2).standard_normal(400) * 1.5)
    expected, v = 0.0, 2.0
    for _ in range(24):
        expected += v
        v = fit.omega + (fit.alpha + fit.beta) * v
    assert garch_horizon_variance(fit, 2.0, 24) == pytest.approx(expected, rel=1e-12)
    unit = fit._replace(omega=0.1, alpha=0.2, beta=0.8)  # α + β = 1: the integrated case
    assert garch_horizon_variance(unit, 2.0, 3) == pytest.approx(2.0 + 2.1 + 2.2, rel=1e-12)
