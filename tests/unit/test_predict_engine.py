"""The forecasting engine on series whose answers are known: an AR(1) return process (a
predictable component the ensemble must find), a pure random walk (where it must claim no skill
and report its base rate as confidence), and the mechanics: no look-ahead, warm-up countdown,
gaps, re-deliveries, checkpoints."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from streams.core.predict.engine import (
    LOAD_FAILED,
    READY,
    WARMING_UP,
    CheckpointError,
    Forecast,
    PredictConfig,
    StreamPredictor,
    decode_checkpoint,
)
from streams.core.predict.features import Bar
from streams.core.predict.lstm import limit_torch_threads

HOUR = 3600 * 10**9


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> None:
    limit_torch_threads(1)


def ar1_bars(phi: float, n: int, seed: int, sigma: float = 0.006, start: int = 0) -> list[Bar]:
    """Hourly bars whose log returns follow r_t = φ r_{t−1} + ε_t (ε ~ N(0, σ²), from `seed`)."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(n) * sigma
    r = np.zeros(n)
    for i in range(1, n):
        r[i] = phi * r[i - 1] + eps[i]
    closes = 30000.0 * np.exp(np.cumsum(r))
    volumes = rng.lognormal(3.0, 0.5, n)
    out, prev = [], float(closes[0])
    for i in range(n):
        exact = Decimal(f"{closes[i]:.2f}")
        c = float(exact)
        out.append(Bar(start + i * HOUR, prev, max(prev, c) * 1.001, min(prev, c) * 0.999, c, float(volumes[i]), exact))
        prev = c
    return out


def run(bars: list[Bar], **config: object) -> tuple[StreamPredictor, list[Forecast]]:
    predictor = StreamPredictor(PredictConfig(**config))  # type: ignore[arg-type]
    forecasts: list[Forecast] = []
    for bar in bars:
        forecasts.extend(predictor.update(bar).forecasts)
    return predictor, forecasts


def test_ensemble_beats_no_change_by_a_clear_margin_on_an_ar1_process() -> None:
    # φ = 0.5: the best possible 1h forecast has MAE skill 1 − √(1 − φ²) = 0.134 and hits
    # 1/2 + asin(φ)/π = 0.667 of directions; over 4h the predictable share is smaller.
    predictor, _ = run(ar1_bars(0.5, 2000, seed=11), models=("ensemble",), horizons=("1h", "4h"))
    one, four = (predictor.tracks[("ensemble", h)].score.snapshot() for h in ("1h", "4h"))
    assert one.skill is not None and one.skill > 0.09
    assert one.r2 is not None and one.r2 > 0.18
    assert one.hit_rate is not None and one.hit_rate > 0.62
    assert four.skill is not None and four.skill > 0.02
    # the confidence it reports is the hit rate it achieves
    assert one.calibration_error is not None and one.calibration_error < 0.04
    assert one.mean_confidence == pytest.approx(one.hit_rate, abs=0.03)


def test_ensemble_claims_no_skill_on_a_random_walk_and_reports_its_base_rate() -> None:
    predictor, forecasts = run(ar1_bars(0.0, 2500, seed=12), models=("ensemble",))
    for h in ("1h", "4h", "1d"):
        s = predictor.tracks[("ensemble", h)].score.snapshot()
        assert s.skill is not None and -0.02 < s.skill < 0.005, h
        assert s.r2 is not None and s.r2 < 0.005, h
        assert s.calibration_error is not None and s.calibration_error < (0.05 if h != "1d" else 0.08), h
        assert s.mean_confidence == pytest.approx(s.hit_rate, abs=0.03), h
    served = [f.confidence for f in forecasts if f.status == READY and f.confidence is not None]
    assert served and max(served) < 0.6 and min(served) > 0.4  # never 0.85 about a coin flip


def test_lstm_learns_the_ar1_component_online() -> None:
    predictor, _ = run(ar1_bars(0.5, 800, seed=13), models=("lstm",), horizons=("1h",))
    s = predictor.tracks[("lstm", "1h")].score.recent_snapshot()
    assert s.skill is not None and s.skill > 0.05
    assert s.hit_rate is not None and s.hit_rate > 0.6
    assert s.calibration_error is not None and s.calibration_error < 0.06


def test_forecasts_never_depend_on_later_candles() -> None:
    a = ar1_bars(0.5, 400, seed=14)
    b = a[:300] + ar1_bars(0.5, 100, seed=99, start=300 * HOUR)  # same past, another future
    _, fa = run(a, models=("ensemble", "lstm"), horizons=("1h", "4h"))
    _, fb = run(b, models=("ensemble", "lstm"), horizons=("1h", "4h"))
    cut = 300 * HOUR
    past_a = [(f.model, f.horizon, f.as_of_ns, f.log_return, f.confidence) for f in fa if f.as_of_ns <= cut]
    past_b = [(f.model, f.horizon, f.as_of_ns, f.log_return, f.confidence) for f in fb if f.as_of_ns <= cut]
    assert past_a == past_b and len(past_a) == 300 * 4
    assert [f.log_return for f in fa if f.as_of_ns > cut] != [f.log_return for f in fb if f.as_of_ns > cut]


def test_outcomes_score_the_forecast_issued_horizon_bars_earlier() -> None:
    predictor = StreamPredictor(PredictConfig(models=("ensemble",), horizons=("4h",)))
    issued: dict[int, Forecast] = {}
    for bar in ar1_bars(0.3, 120, seed=15):
        update = predictor.update(bar)
        for o in update.outcomes:
            f = issued[o.as_of_ns]
            assert o.target_ns == o.as_of_ns + 4 * HOUR == bar.open_ns + HOUR
            assert o.log_return == f.log_return and o.confidence == f.confidence and o.direction == f.direction
            assert o.realised_log_return == pytest.approx(math.log(bar.close / float(f.price)), rel=1e-6)
            assert o.hit == (o.realised_log_return * o.direction > 0)
        issued.update({f.as_of_ns: f for f in update.forecasts if f.log_return is not None})


def test_warm_up_countdown_is_exact() -> None:
    bars = ar1_bars(0.2, 200, seed=16)
    _, forecasts = run(bars, models=("ensemble",), horizons=("1h", "4h"), min_scored=20, min_independent=8)
    for h, required in (("1h", 20), ("4h", 32)):  # 4h: 8 horizons' worth of overlapping outcomes
        mine = [f for f in forecasts if f.horizon == h]
        assert mine[0].log_return is None and mine[0].status == WARMING_UP  # features still warming
        first_ready = next(i for i, f in enumerate(mine) if f.status == READY)
        assert all(f.status == READY and f.remaining == 0 for f in mine[first_ready:])
        assert mine[first_ready].scores.scored == required
        for i, f in enumerate(mine[:first_ready]):
            if f.log_return is not None:  # once features exist the count is exact
                assert f.remaining == first_ready - i, (h, i)
            else:  # an upper bound before that
                assert f.remaining >= first_ready - i, (h, i)


def test_served_price_is_the_close_times_the_exponential_of_the_log_return() -> None:
    _, forecasts = run(ar1_bars(0.5, 300, seed=17), models=("ensemble",), horizons=("1h",))
    f = forecasts[-1]
    assert f.log_return is not None and f.log_return != 0.0
    assert f.prediction == (f.price * Decimal(repr(math.exp(f.log_return)))).quantize(Decimal("0.00000001"))
    assert abs(f.log_return) <= abs(f.raw_log_return or 0.0)  # shrinkage never amplifies


def test_gaps_are_filled_flat_or_reset_and_redeliveries_change_nothing() -> None:
    bars = ar1_bars(0.2, 200, seed=18)
    predictor = StreamPredictor(PredictConfig(models=("ensemble",), horizons=("1h", "4h")))
    for bar in bars[:100]:
        predictor.update(bar)
    assert predictor.update(bars[99]).forecasts == []  # a re-delivery
    update = predictor.update(bars[103])  # 3 hours without trades
    assert predictor.filled == 3 and predictor.resets == 0
    assert {f.as_of_ns for f in update.forecasts} == {bars[i].open_ns + HOUR for i in range(100, 104)}
    assert all(f.price == bars[99].close_exact for f in update.forecasts[:-2])  # flat: the last close
    predictor.update(bars[150])  # 46 missing hours: too long to call flat
    assert predictor.resets == 1 and predictor.dropped == 1 + 4
    assert all(not q for q in predictor.pending.values())
    update = predictor.update(bars[151])
    assert all(f.log_return is None for f in update.forecasts)  # features warm up again; models are kept


def test_checkpoint_round_trip_continues_exactly() -> None:
    bars = ar1_bars(0.4, 330, seed=19)
    config = PredictConfig(horizons=("1h", "4h"), min_scored=50)
    predictor, _ = run(bars[:300], horizons=("1h", "4h"), min_scored=50)
    restored = decode_checkpoint(predictor.dumps(), config)
    assert restored.last_open_ns == predictor.last_open_ns and restored.load_error is None
    for bar in bars[300:]:
        a, b = predictor.update(bar), restored.update(bar)
        assert a == b


def test_unusable_checkpoints_are_refused_and_a_fresh_predictor_says_why() -> None:
    config = PredictConfig(models=("ensemble",), horizons=("1h",), min_scored=5)
    predictor, _ = run(ar1_bars(0.4, 60, seed=20), models=("ensemble",), horizons=("1h",), min_scored=5)
    assert config.required("1h") == 20
    blob = predictor.dumps()
    with pytest.raises(CheckpointError, match="digest"):
        decode_checkpoint(blob[:-10], config)
    with pytest.raises(CheckpointError, match="format"):
        decode_checkpoint(b"garbage", config)
    with pytest.raises(CheckpointError, match="configuration"):
        decode_checkpoint(blob, PredictConfig(models=("ensemble",), horizons=("1h", "4h"), min_scored=5))
    # serving thresholds may change without throwing the models away
    relaxed = PredictConfig(models=("ensemble",), horizons=("1h",), min_scored=9, min_independent=3)
    assert decode_checkpoint(blob, relaxed).config.min_scored == 9

    fresh = StreamPredictor(config, load_error="checkpoint digest mismatch")
    statuses = {f.status for bar in ar1_bars(0.4, 80, seed=21) for f in fresh.update(bar).forecasts}
    assert statuses == {LOAD_FAILED, READY}


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="horizons"):
        PredictConfig(horizons=("2h",))
    with pytest.raises(ValueError, match="whole number"):
        PredictConfig(interval_ns=7 * 60 * 10**9)
    with pytest.raises(ValueError, match="models"):
        PredictConfig(models=("arima",))
    assert PredictConfig(interval_ns=60 * 10**9).steps("1d") == 1440
    # served after 200 outcomes, and 20 horizons' worth: 20 days of one-day forecasts
    assert [PredictConfig().required(h) for h in ("1h", "4h", "1d")] == [200, 200, 480]
