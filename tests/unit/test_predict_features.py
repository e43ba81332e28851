"""Features of closed candles: each checked against a direct numpy computation, and the
properties the models rely on (scale-free, bounded, ready after the documented warm-up)."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from streams.core.predict.features import Bar, FeatureBuilder, FeatureConfig

HOUR = 3600 * 10**9


def bars(closes: np.ndarray, volumes: np.ndarray, scale: float = 1.0) -> list[Bar]:
    out = []
    prev = closes[0]
    for i, (c, v) in enumerate(zip(closes, volumes, strict=True)):
        hi, lo = max(prev, c) * 1.002, min(prev, c) * 0.998
        exact = Decimal(f"{c * scale:.8f}")
        out.append(Bar(i * HOUR, prev * scale, hi * scale, lo * scale, c * scale, float(v), exact))
        prev = c
    return out


def series(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    closes = 100.0 * np.exp(np.cumsum(rng.standard_normal(n) * 0.01))
    return closes, rng.uniform(1.0, 10.0, n)


def ewm_mean(values: np.ndarray, halflife: float) -> float:
    """Bias-corrected EWM of all values, oldest first (oracle: explicit weights)."""
    alpha = 1 - 0.5 ** (1 / halflife)
    weights = (1 - alpha) ** np.arange(len(values))[::-1]
    return float((weights * values).sum() / weights.sum())


def test_features_match_a_direct_computation() -> None:
    closes, volumes = series()
    config = FeatureConfig(horizons=(1, 4, 24))
    builder = FeatureBuilder(config)
    out = [builder.update(b) for b in bars(closes, volumes)]
    t = len(closes) - 1
    f = out[t]
    assert f is not None
    r = np.diff(np.log(closes))
    assert f.sigma == pytest.approx(math.sqrt(ewm_mean(r**2, config.vol_halflife)), rel=1e-12)
    sigma = math.sqrt(ewm_mean(r[:-1] ** 2, config.vol_halflife))  # features: the volatility before the bar
    assert f.values["r1"] == pytest.approx(r[-1] / sigma)
    assert f.values["r3"] == pytest.approx(r[-3] / sigma)
    assert config.lags == (4, 12, 24)
    for k in config.lags:
        assert f.values[f"mom_{k}"] == pytest.approx(math.log(closes[t] / closes[t - k]) / (sigma * math.sqrt(k)))
    sigma_short = math.sqrt(ewm_mean(r**2, config.vol_short_halflife))
    assert f.values["vol_ratio"] == pytest.approx(math.log(sigma_short / f.sigma))
    mean_volume_before = ewm_mean(volumes[:-1], config.mean_halflife)
    assert f.values["volume"] == pytest.approx(math.log1p(volumes[-1] / mean_volume_before) - math.log(2))
    assert f.values["imbalance"] == 0.0 and f.values["book"] == 0.0
    assert list(f.vector) == pytest.approx([f.values[n] for n in config.names], abs=1e-6)


def test_ready_after_the_documented_warm_up_and_not_before() -> None:
    closes, volumes = series(60)
    config = FeatureConfig(horizons=(1, 4, 24))
    builder = FeatureBuilder(config)
    ready = [builder.update(b) is not None for b in bars(closes, volumes)]
    assert config.warmup_bars == 25
    assert ready.index(True) == config.warmup_bars - 1 and all(ready[config.warmup_bars - 1:])
    # each horizon's own length is a lag: a 1-minute stream with a one-day horizon looks 1440 bars back
    assert FeatureConfig(horizons=(60, 240, 1440)).lags == (4, 12, 24, 60, 240, 1440)


def test_scale_free_prices_and_bounded_values() -> None:
    closes, volumes = series()
    plain, scaled = FeatureBuilder(FeatureConfig(horizons=(1, 4))), FeatureBuilder(FeatureConfig(horizons=(1, 4)))
    a = [plain.update(bar) for bar in bars(closes, volumes)][-1]
    b = [scaled.update(bar) for bar in bars(closes, volumes, scale=1000.0)][-1]
    assert a is not None and b is not None
    for name, value in a.values.items():
        assert b.values[name] == pytest.approx(value, abs=1e-9), name
    # a crash bar is clipped, not passed on at 40 volatilities
    closes[-1] = closes[-2] * 0.5
    c = None
    builder = FeatureBuilder(FeatureConfig(horizons=(1,)))
    for bar in bars(closes, volumes):
        c = builder.update(bar)
    assert c is not None and c.values["r1"] == -8.0


def test_book_imbalance_and_flag() -> None:
    closes, volumes = series(40)
    builder = FeatureBuilder(FeatureConfig(horizons=(1,)))
    seq = bars(closes, volumes)
    for bar in seq[:-1]:
        builder.update(bar)
    f = builder.update(seq[-1], imbalance=0.25)
    assert f is not None and f.values["imbalance"] == 0.25 and f.values["book"] == 1.0
    g = FeatureBuilder(FeatureConfig(horizons=(1,)))
    for bar in seq[:-1]:
        g.update(bar)
    nan = g.update(seq[-1], imbalance=float("nan"))
    assert nan is not None and nan.values["book"] == 0.0


def test_bar_validity_and_flat_fill() -> None:
    bar = Bar.of(0, "10", "11", "9", "10.5", "3")
    assert bar.valid and bar.close_exact == Decimal("10.5")
    flat = bar.flat_after(HOUR)
    assert (flat.open_ns, flat.open, flat.high, flat.low, flat.close, flat.volume) == (HOUR, 10.5, 10.5, 10.5, 10.5, 0)
    assert not Bar.of(0, "10", "11", "9", "0", "3").valid
    assert not Bar.of(0, "10", "11", "9", "NaN", "3").valid
