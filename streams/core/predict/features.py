"""Features of closed candles for the forecasting models (version `FEATURES_VERSION`). Pure logic.

Every feature is scale-free, so one model serves any asset, price level and candle interval:
returns are divided by the per-bar volatility σ known before the bar (and by √k for a k-bar
return), the
volume is relative to its own running mean, the order-book imbalance is a ratio in [−1, 1].
The models predict the log return over a horizon divided by σ√h (see `engine.py`), so a
model's weights mean "how many volatilities" rather than "how many dollars".

Features (names as in `FeatureConfig.names`, all clipped to ±`clip`):
- `r1`, `r2`, `r3`: the last three one-bar log returns ln(C_t/C_{t−1}), ln(C_{t−1}/C_{t−2}), … / σ;
- `mom_k` for k in `lags`: the k-bar log return ln(C_t/C_{t−k}) / (σ√k): momentum or reversal
  at several scales (4, 12, 24 bars and each horizon's own length);
- `vol_ratio`: ln(σ_short/σ): is volatility rising or falling (half-lives 6 and 48 bars);
- `range`: ln(H/L)/σ of the last bar minus its running mean (intrabar range, Parkinson);
- `volume`: ln(1 + V/V̄) − ln 2, V̄ the running mean volume (0 for an average bar, −0.69 for a
  bar without trades);
- `imbalance`, `book`: mean top-of-book size imbalance (Σbid − Σask)/(Σbid + Σask) of the book
  snapshots seen during the bar, and 1 when there were any (0 and 0 otherwise).

σ is an exponentially weighted mean of squared one-bar returns (half-life `vol_halflife`
bars), bias-corrected at the start like Adam's moments, and floored at `sigma_floor` so flat
stretches (bars without trades) cannot divide by zero.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

FEATURES_VERSION = "f1"


@dataclass(frozen=True, slots=True)
class Bar:
    """A closed candle. `close_exact` is the candle's own decimal close, echoed in the events."""

    open_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    close_exact: Decimal

    @classmethod
    def of(cls, open_ns: int, open: Decimal | str, high: Decimal | str, low: Decimal | str, close: Decimal | str,
           volume: Decimal | str) -> Bar:
        c = Decimal(close)
        return cls(open_ns, float(open), float(high), float(low), float(c), float(volume), c)

    def flat_after(self, open_ns: int) -> Bar:
        """The bar of an interval without trades after this one: the price did not move."""
        return Bar(open_ns, self.close, self.close, self.close, self.close, 0.0, self.close_exact)

    @property
    def valid(self) -> bool:
        prices = (self.open, self.high, self.low, self.close)
        return all(math.isfinite(p) and p > 0.0 for p in prices) and math.isfinite(self.volume) and self.volume >= 0


def _alpha(halflife: float) -> float:
    return 1.0 - 0.5 ** (1.0 / halflife)


@dataclass(frozen=True)
class FeatureConfig:
    horizons: tuple[int, ...]  # horizon lengths in bars
    base_lags: tuple[int, ...] = (4, 12, 24)
    vol_halflife: float = 48.0
    vol_short_halflife: float = 6.0
    mean_halflife: float = 24.0  # running means of volume and range
    min_returns: int = 24  # σ is trusted after this many returns
    clip: float = 8.0
    sigma_floor: float = 1e-6

    @property
    def lags(self) -> tuple[int, ...]:
        return tuple(sorted({*self.base_lags, *(h for h in self.horizons if h > 1)}))

    @property
    def names(self) -> tuple[str, ...]:
        return ("r1", "r2", "r3", *(f"mom_{k}" for k in self.lags), "vol_ratio", "range", "volume", "imbalance",
                "book")

    @property
    def warmup_bars(self) -> int:
        """Bars before the first feature vector: the longest lag and σ's warm-up."""
        return max(max(self.lags), self.min_returns) + 1


@dataclass(frozen=True, slots=True)
class Features:
    """One bar's features. Kept until the forecasts issued with them are scored (a day of 1m
    bars for a 1d horizon), so only the float32 vector is stored; river gets a dict view."""

    names: tuple[str, ...]  # `FeatureConfig.names`: one shared tuple
    vector: np.ndarray  # float32 in `names` order, for the recurrent network
    sigma: float  # per-bar volatility including this bar: the unit of the targets issued here

    @property
    def values(self) -> dict[str, float]:
        """By name, for river."""
        return dict(zip(self.names, self.vector.tolist(), strict=True))


class _Ewm:
    """Bias-corrected exponentially weighted mean."""

    __slots__ = ("alpha", "total", "weight")

    def __init__(self, halflife: float) -> None:
        self.alpha = _alpha(halflife)
        self.total = 0.0
        self.weight = 0.0

    def add(self, value: float) -> None:
        self.total = (1.0 - self.alpha) * self.total + self.alpha * value
        self.weight = (1.0 - self.alpha) * self.weight + self.alpha

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight > 0.0 else 0.0


@dataclass
class FeatureBuilder:
    config: FeatureConfig
    closes: deque[float] = field(init=False)
    returns: int = 0
    var_long: _Ewm = field(init=False)
    var_short: _Ewm = field(init=False)
    mean_volume: _Ewm = field(init=False)
    mean_range: _Ewm = field(init=False)
    _names: tuple[str, ...] = field(init=False, repr=False)  # one tuple shared by every Features

    def __post_init__(self) -> None:
        self._names = self.config.names
        self.reset()

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def reset(self) -> None:
        """Forget the price history (after a gap too long to fill): features start over."""
        cfg = self.config
        self.closes = deque(maxlen=max(cfg.lags) + 1)
        self.returns = 0
        self.var_long = _Ewm(cfg.vol_halflife)
        self.var_short = _Ewm(cfg.vol_short_halflife)
        self.mean_volume = _Ewm(cfg.mean_halflife)
        self.mean_range = _Ewm(cfg.mean_halflife)

    def bars_until_ready(self) -> int:
        return max(0, self.config.warmup_bars - max(len(self.closes), self.returns + 1))

    def update(self, bar: Bar, imbalance: float | None = None) -> Features | None:
        """Fold a closed bar in; its features once there is enough history, else None."""
        cfg = self.config
        closes = self.closes
        # Features are in units of the volatility known BEFORE this bar, so a shock shows as the
        # many-sigma move it is; the targets issued here use the volatility including it.
        unit = max(math.sqrt(self.var_long.value), cfg.sigma_floor)
        if closes:
            r = math.log(bar.close / closes[-1])
            self.var_long.add(r * r)
            self.var_short.add(r * r)
            self.returns += 1
        closes.append(bar.close)
        volume_mean = self.mean_volume.value
        self.mean_volume.add(bar.volume)
        sigma = max(math.sqrt(self.var_long.value), cfg.sigma_floor)
        bar_range = math.log(bar.high / bar.low) / unit if bar.high >= bar.low else 0.0
        range_mean = self.mean_range.value
        self.mean_range.add(bar_range)
        if self.returns < cfg.min_returns or len(closes) < closes.maxlen:  # type: ignore[operator]
            return None

        clip = cfg.clip
        last = len(closes) - 1
        log_c = math.log(closes[last])
        values: dict[str, float] = {}
        for i, name in enumerate(("r1", "r2", "r3")):
            values[name] = math.log(closes[last - i] / closes[last - i - 1]) / unit
        for k in cfg.lags:
            values[f"mom_{k}"] = (log_c - math.log(closes[last - k])) / (unit * math.sqrt(k))
        sigma_short = max(math.sqrt(self.var_short.value), cfg.sigma_floor)
        values["vol_ratio"] = math.log(sigma_short / sigma)
        values["range"] = bar_range - range_mean
        values["volume"] = math.log1p(bar.volume / volume_mean) - math.log(2.0) if volume_mean > 0.0 else 0.0
        if imbalance is not None and math.isfinite(imbalance):
            values["imbalance"], values["book"] = max(-1.0, min(1.0, imbalance)), 1.0
        else:
            values["imbalance"], values["book"] = 0.0, 0.0
        for name, value in values.items():
            values[name] = max(-clip, min(clip, value))
        names = self.names
        return Features(names, np.fromiter((values[n] for n in names), dtype=np.float32, count=len(names)), sigma)
