"""Prequential scores, point-forecast shrinkage and confidence calibration of one model on one
horizon. Pure logic, O(1) per scored forecast (the calibrator: O(window) numpy work).

Every quantity here is fed only with forecasts whose horizon has passed, in the order they
were issued: predict, wait for the horizon, score, then learn. Nothing sees a realised value
before the forecast it judges was published.

Definitions (the README repeats them):
- error e = ŷ − y in log-return units, ŷ the SERVED forecast, y = ln(C_{t+h}/C_t) realised;
- `mae` = mean |e|; `mae_naive` = mean |y|, the MAE of the no-change forecast (ŷ = 0);
- `skill` = 1 − mae/mae_naive: > 0 beats no-change, 0 is no better, < 0 is worse;
- `r2` = 1 − Σe²/Σy²: out-of-sample R² against the no-change forecast (squared-error skill);
- `hit_rate` (directional accuracy) = share of forecasts whose direction (up/down) the price
  took; a flat outcome (y = 0, e.g. a minute without trades) is a miss for either direction;
- `up_rate` = share of outcomes strictly up: "always up" would have this hit rate;
- `mean_confidence` and `calibration_error`: the mean confidence, and the expected calibration
  error Σ_b (n_b/n)·|mean confidence_b − hit rate_b| over ten equal-width confidence bins.
Each is reported twice: over every scored forecast since the model started ("all") and over
the last `window` ("recent").
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

BINS = 10


@dataclass(frozen=True, slots=True)
class ScoreSnapshot:
    scored: int
    mae: float | None
    mae_naive: float | None
    skill: float | None
    r2: float | None
    hit_rate: float | None
    up_rate: float | None
    mean_confidence: float | None
    calibration_error: float | None


class _Sums:
    __slots__ = ("ae", "ae0", "bin_conf", "bin_hit", "bin_n", "conf", "hits", "n", "se", "se0", "ups")

    def __init__(self) -> None:
        self.n = 0
        self.ae = self.ae0 = self.se = self.se0 = self.conf = 0.0
        self.hits = self.ups = 0
        self.bin_n = [0] * BINS
        self.bin_conf = [0.0] * BINS
        self.bin_hit = [0] * BINS

    def add(self, row: tuple[float, float, int, int, float], sign: int = 1) -> None:
        err, realised, hit, up, conf = row
        self.n += sign
        self.ae += sign * abs(err)
        self.ae0 += sign * abs(realised)
        self.se += sign * err * err
        self.se0 += sign * realised * realised
        self.hits += sign * hit
        self.ups += sign * up
        self.conf += sign * conf
        b = min(BINS - 1, int(conf * BINS))
        self.bin_n[b] += sign
        self.bin_conf[b] += sign * conf
        self.bin_hit[b] += sign * hit

    def snapshot(self) -> ScoreSnapshot:
        n = self.n
        if n <= 0:
            return ScoreSnapshot(0, None, None, None, None, None, None, None, None)
        mae, mae0 = max(self.ae, 0.0) / n, max(self.ae0, 0.0) / n
        ece = sum(abs(self.bin_conf[b] - self.bin_hit[b]) for b in range(BINS) if self.bin_n[b] > 0) / n
        return ScoreSnapshot(
            scored=n, mae=mae, mae_naive=mae0, skill=1.0 - mae / mae0 if mae0 > 0.0 else None,
            r2=1.0 - self.se / self.se0 if self.se0 > 0.0 else None, hit_rate=self.hits / n, up_rate=self.ups / n,
            mean_confidence=self.conf / n, calibration_error=ece,
        )


class RunningScore:
    """Scores since the start and over the last `window` scored forecasts."""

    def __init__(self, window: int = 500) -> None:
        self.window = window
        self.total = _Sums()
        self.recent = _Sums()
        self.rows: deque[tuple[float, float, int, int, float]] = deque()
        self._since_rebuild = 0

    @property
    def scored(self) -> int:
        return self.total.n

    def add(self, predicted: float, realised: float, direction: int, confidence: float) -> bool:
        """Score one forecast; returns whether its direction was right."""
        hit = int(realised * direction > 0.0)
        row = (predicted - realised, realised, hit, int(realised > 0.0), confidence)
        self.total.add(row)
        self.recent.add(row)
        self.rows.append(row)
        if len(self.rows) > self.window:
            self.recent.add(self.rows.popleft(), -1)
        self._since_rebuild += 1
        if self._since_rebuild >= self.window:
            # Subtracting evicted rows accumulates float error; start the window's sums afresh.
            self.recent = _Sums()
            for r in self.rows:
                self.recent.add(r)
            self._since_rebuild = 0
        return bool(hit)

    def snapshot(self) -> ScoreSnapshot:
        return self.total.snapshot()

    def recent_snapshot(self) -> ScoreSnapshot:
        return self.recent.snapshot()


class Shrink:
    """The served forecast is β × the model's output, β the least-squares slope (through the
    origin) of realised on predicted over past scored forecasts, with exponential forgetting,
    shrunk towards 0 by the evidence behind it and clipped to [0, 1]:

        β = clip( Σwxy / Σwx² × n / (n + `prior`), 0, 1 ),   n = Σw, the independent outcomes seen

    Why: an online model that has learned noise still outputs non-zero forecasts, and serving
    them would be worse than no-change. β measures, out of sample, how much of a model's output
    the outcomes bear out: about 1 for a model with real skill, about 0 for one without, which
    then serves (almost) the no-change price instead of its noise. The n/(n + prior) factor is
    scale-free (it does not care how large the model's outputs are) and keeps a slope fitted on a
    handful of independent outcomes (a week of one-day forecasts) from being trusted. β never
    amplifies (≤ 1) and never flips a forecast (≥ 0)."""

    def __init__(self, halflife: float = 500.0, prior: float = 20.0, weight: float = 1.0) -> None:
        # `halflife` counts outcomes; with overlapping h-bar outcomes (weight 1/h) pass h times
        # the number of independent outcomes the memory should hold.
        self.decay = 0.5 ** (1.0 / halflife)
        self.prior = prior
        self.weight = weight  # of one outcome: 1/h for h-bar outcomes that overlap (see DirectionCalibrator)
        self.sxy = 0.0
        self.sxx = 0.0
        self.n = 0.0

    def add(self, predicted: float, realised: float) -> None:
        self.sxy = self.decay * self.sxy + self.weight * predicted * realised
        self.sxx = self.decay * self.sxx + self.weight * predicted * predicted
        self.n = self.decay * self.n + self.weight

    @property
    def beta(self) -> float:
        if self.sxx <= 0.0:
            return 0.0
        return min(1.0, max(0.0, self.sxy / self.sxx * self.n / (self.n + self.prior)))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0.0 else math.exp(x) / (1.0 + math.exp(x))


def _sigmoid_array(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))  # type: ignore[no-any-return]


class DirectionCalibrator:
    """`confidence` = P(the price moves in the forecast's direction over the horizon | z), with
    z = |model output| in volatility units (capped at `z_cap`), fitted as a logistic curve
    σ(a + b·z), b ≥ 0, on the last `window` scored forecasts of the same model and horizon.

    Monotone by construction (a stronger signal is never less confident); with no skill the
    fit is b = 0 and the confidence is the observed hit rate, the base rate, whatever z says.
    A Gaussian prior (precision `prior`, about that many pseudo-observations) keeps a and b at 0
    (confidence 0.5) until there is evidence. One warm-started Newton step per scored forecast:
    the data change by one point at a time, so the fit tracks the exact optimum closely.

    Outcomes of an h-bar horizon issued every bar overlap (consecutive ones share h − 1 bar
    returns), so h of them carry about one independent outcome's evidence: each counts with
    `weight` = 1/h against the prior, or a 1d calibrator on hourly bars would trust 24 copies of
    one day's move as 24 confirmations. For the same reason the window should hold the same
    number of HORIZONS for every horizon (the engine scales it by h, up to a cap)."""

    def __init__(self, window: int = 1000, prior: float = 2.0, z_cap: float = 4.0, weight: float = 1.0) -> None:
        self.window = window
        self.prior = prior
        self.weight = weight
        self.z_cap = z_cap
        # float32 and bytes: a long horizon's window holds tens of thousands of outcomes, and
        # every checkpoint carries it
        self.z = np.zeros(window, dtype=np.float32)
        self.hit = np.zeros(window, dtype=np.uint8)
        self.count = 0
        self.a = 0.0
        self.b = 0.0

    def probability(self, z: float) -> float:
        return _sigmoid(self.a + self.b * min(abs(z), self.z_cap))

    def add(self, z: float, hit: bool) -> None:
        i = self.count % self.window
        self.z[i] = min(abs(z), self.z_cap)
        self.hit[i] = 1 if hit else 0
        self.count += 1
        self._newton()

    def _newton(self) -> None:
        n = min(self.count, self.window)
        z, y = self.z[:n].astype(np.float64), self.hit[:n].astype(np.float64)
        p = _sigmoid_array(self.a + self.b * z)
        w = p * (1.0 - p)
        r = p - y
        lam = self.prior / self.weight  # the same as weighting every outcome by `weight`
        g0, g1 = float(r.sum()) + lam * self.a, float(r @ z) + lam * self.b
        h00, h01, h11 = float(w.sum()) + lam, float(w @ z), float(w @ (z * z)) + lam
        det = h00 * h11 - h01 * h01
        a, b = self.a - (h11 * g0 - h01 * g1) / det, self.b - (h00 * g1 - h01 * g0) / det
        if b < 0.0:  # the slope is constrained to b ≥ 0: refit the intercept alone at b = 0
            b = 0.0
            p0 = _sigmoid(self.a)
            w0 = n * p0 * (1.0 - p0) + lam
            a = self.a - (float(n * p0 - y.sum()) + lam * self.a) / w0
        if math.isfinite(a) and math.isfinite(b):
            self.a, self.b = a, b
