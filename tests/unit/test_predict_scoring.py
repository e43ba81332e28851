"""Prequential scores against numpy recomputations, and the shrinkage and confidence
calibration on data whose right answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.predict.scoring import BINS, DirectionCalibrator, RunningScore, Shrink


def oracle(pred: np.ndarray, real: np.ndarray, direction: np.ndarray, conf: np.ndarray) -> dict[str, float]:
    err = pred - real
    hit = (real * direction > 0).astype(float)
    bins = np.minimum((conf * BINS).astype(int), BINS - 1)
    ece = sum(abs(conf[bins == b].sum() - hit[bins == b].sum()) for b in range(BINS)) / len(pred)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-flat outcomes: skill undefined
        return {
            "mae": np.abs(err).mean(), "mae_naive": np.abs(real).mean(),
            "skill": 1 - np.abs(err).mean() / np.abs(real).mean(), "r2": 1 - (err**2).sum() / (real**2).sum(),
            "hit_rate": hit.mean(), "up_rate": (real > 0).mean(), "mean_confidence": conf.mean(),
            "calibration_error": ece,
        }


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.integers(min_value=1, max_value=60), st.integers(0, 2**32 - 1))
def test_scores_equal_a_recomputation_over_all_and_the_recent_window(n: int, window: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred, real = rng.standard_normal(n) * 0.01, rng.standard_normal(n) * 0.01
    real[rng.random(n) < 0.1] = 0.0  # flat outcomes: a miss for either direction
    direction = np.where(rng.random(n) < 0.5, 1, -1)
    conf = rng.random(n)
    score = RunningScore(window)
    for p, r, d, c in zip(pred, real, direction, conf, strict=True):
        score.add(float(p), float(r), int(d), float(c))
    for snap, sl in ((score.snapshot(), slice(None)), (score.recent_snapshot(), slice(-window, None))):
        want = oracle(pred[sl], real[sl], direction[sl], conf[sl])
        assert snap.scored == len(pred[sl])
        for name, value in want.items():
            got = getattr(snap, name)
            if math.isfinite(value):
                assert got == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_empty_scores_are_null() -> None:
    snap = RunningScore(10).snapshot()
    assert snap.scored == 0 and snap.mae is None and snap.skill is None and snap.hit_rate is None


def test_shrink_is_one_for_a_perfect_forecast_zero_for_noise_and_never_amplifies() -> None:
    rng = np.random.default_rng(1)
    perfect, noise, timid = Shrink(), Shrink(), Shrink()
    for _ in range(3000):
        y = float(rng.standard_normal())
        perfect.add(y, y)
        noise.add(float(rng.standard_normal()), y)
        timid.add(0.1 * y, y)  # the right sign, a tenth of the size: least squares says 10
    decay = 0.5 ** (1 / 500)
    assert perfect.n == pytest.approx((1 - decay**3000) / (1 - decay))  # ~711 outcomes of memory
    assert perfect.beta == pytest.approx(perfect.n / (perfect.n + 20)) and perfect.beta > 0.97
    assert noise.beta < 0.1
    assert timid.beta == 1.0
    anti = Shrink()
    for _ in range(500):
        y = float(rng.standard_normal())
        anti.add(-y, y)
    assert anti.beta == 0.0  # a model that is reliably wrong serves no-change, not its opposite


def test_shrink_does_not_trust_a_slope_fitted_on_few_independent_outcomes() -> None:
    daily = Shrink(halflife=500 * 24, weight=1 / 24)  # one-day outcomes of hourly bars
    for i in range(240):  # ten days: 240 overlapping outcomes, all bearing the forecasts out
        y = 0.5 if i % 2 else -0.5
        daily.add(y, y)
    assert daily.n == pytest.approx(10, rel=0.01)
    assert daily.beta == pytest.approx(10 / 30, rel=0.01)


def test_calibrator_recovers_a_known_logistic_curve() -> None:
    rng = np.random.default_rng(2)
    cal = DirectionCalibrator(window=4000)
    a, b = -0.2, 0.8
    for _ in range(8000):
        z = float(rng.exponential(0.7))
        cal.add(z, bool(rng.random() < 1 / (1 + math.exp(-(a + b * z)))))
    assert cal.a == pytest.approx(a, abs=0.12) and cal.b == pytest.approx(b, abs=0.15)
    assert cal.probability(1.0) == pytest.approx(1 / (1 + math.exp(-(a + b))), abs=0.03)


def test_calibrator_without_skill_reports_the_base_rate_whatever_the_signal() -> None:
    rng = np.random.default_rng(3)
    cal = DirectionCalibrator()
    hits = rng.random(3000) < 0.46  # e.g. flat outcomes make "right direction" rarer than a coin
    for z, hit in zip(rng.exponential(1.0, 3000), hits, strict=True):
        cal.add(float(z), bool(hit))
    assert cal.b >= 0.0
    base = hits[-1000:].mean()
    for z in (0.0, 0.5, 2.0, 4.0):
        assert cal.probability(z) == pytest.approx(base, abs=0.03)


def test_calibrator_is_monotone_and_starts_at_one_half() -> None:
    cal = DirectionCalibrator()
    assert cal.probability(3.0) == 0.5
    for i in range(200):  # strong signals miss, weak ones hit: a negative slope is refused
        cal.add(3.0 if i % 2 else 0.1, hit=not i % 2)
    assert cal.b == 0.0


def test_overlapping_outcomes_weigh_less_against_the_prior() -> None:
    one, overlapping = DirectionCalibrator(), DirectionCalibrator(weight=1 / 24)
    for _ in range(30):
        one.add(1.0, True)
        overlapping.add(1.0, True)
    assert 0.5 < overlapping.probability(1.0) < one.probability(1.0)
