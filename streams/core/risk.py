"""Rolling one-day risk of one unit of an asset: 95 % value at risk (VaR), expected
shortfall (ES) and annualised volatility, updated with every closed candle. Pure logic.

Definitions (the README repeats them; tests/unit/test_risk.py checks each against numpy/scipy)
----------------------------------------------------------------------------------------------
- Bars: final candles of one interval Δ (1m, 5m, 1h or 1d); n = one day / Δ bars per day.
  A bar return is r = ln C_t − ln C_{t−1} of consecutive closes. A missing bar means no
  trade, so the price did not move: each one counts as a zero return (at most `window` of
  them), exactly as the history endpoint's `fill=true` shows it.
- Window: the last W = `window_days` × n bar returns.
- One-day return R (log) of the position's price P (the last close). VaR = P·(1 − e^q) with q
  the 5 % quantile of R (exact: a quantile survives the monotone map), ES = P·E[1 − e^R | R ≤ q],
  both floored at zero (a 5 % tail that still gains loses nothing).
- From bars to one day:
  * historical: the empirical distribution of the OVERLAPPING one-day returns
    R_t = ln C_t − ln C_{t−n} inside the window (W − n + 1 of them). No scaling assumption:
    the square-root-of-time rule is wrong for a quantile of a fat-tailed distribution (the 5 %
    quantile of a Student-t(3) bar is 1.36σ, of the sum of 24 such bars about 1.57σ: scaling the
    first by √24 understates a day's VaR by ~13 %, tests/unit/test_risk.py).
    q = the k-th smallest with k = ⌈0.05·m⌉ (numpy `inverted_cdf`); ES = mean over those k.
  * parametric, EWMA, GARCH: bar returns are i.i.d. within a day, so cumulants add: daily mean
    n·μ, variance n·σ², excess kurtosis κ/n.
    - parametric (normal): μ, σ the window's mean and sample standard deviation (ddof = 1).
      ES in closed form: E[e^R; R ≤ q] = e^{μ+σ²/2} Φ(z − σ).
    - parametric_t: Student-t with the daily variance and excess kurtosis of the bars
      (moment match: ν = 4 + 6/(κ/n), scale σ√((ν−2)/ν)); normal when κ ≤ 0 or ν > 1000.
      κ is the window's biased sample excess kurtosis (scipy `kurtosis(bias=True)`).
      ES by Gauss-Legendre over the tail's probabilities (relative error ~1e-11).
    - ewma: RiskMetrics, λ = 0.94 PER DAY, zero mean, normal; per bar λ^(1/n), so the
      memory (half-life 11.2 days) is the same in calendar time for every interval. The
      weights stop at the window (normalised over it): λ^W is ~0.004 for 90 days, and the
      estimate is then a function of the window only, so a restart rebuilds it exactly.
    - garch: GARCH(1,1), zero mean, normal innovations, fitted by `arch` on the window's bar
      returns × 100·√n (so a bar's return is about a daily per cent, arch's comfortable
      scale), refitted when a bar closes at a multiple of `garch_refit_ns` (each UTC day by
      default) with at least `garch_min_returns` returns; between refits the conditional
      variance is the GARCH recursion. Daily variance = the sum of the n bar variance
      forecasts.
- volatility: √(365 × daily variance): the window's sample variance for historical and the
  parametric methods, the method's own daily variance for EWMA and GARCH.

Incremental, bounded, restart-safe
----------------------------------
Per bar: O(1) updates of exact integer power sums (returns quantised to 2^-64, so the mean,
variance and kurtosis are exact functions of the window, equal whatever the order of adds and
removes), of the EWMA sum (two stacks, amortised O(1), never subtracting: see `_flip`), of a
sorted list of overlapping daily returns (O(log W)) and of the GARCH variance recursion; an
estimate reads those (historical ES sums the k ≈ W/20 tail values).
Memory: deques bounded by the window (plus one refit period for GARCH). A restart rebuilds the
state by replaying the last `rebuild_bars` closes (`RollingRisk.replay`); every estimate then
equals an uninterrupted run's (GARCH refits at the same aligned bar on the same returns; the
EWMA's float sums may differ in the last bits only, from a different summation order).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from sortedcontainers import SortedList

from schemas.risk import RiskMethod

ALPHA = 0.05  # 95 % VaR: the 5 % left tail of the one-day return
# scipy.special.ndtri(ALPHA), written out so that importing this module does not import scipy
# (see `special`); tests/unit/test_risk.py checks it against scipy.
Z_ALPHA = -1.6448536269514729
DAY_NS = 86_400 * 10**9
YEAR_DAYS = 365  # crypto trades every day: annualise over 365 days, not 252
NU_MAX = 1000.0  # beyond this the Student-t is the normal for every purpose here
_QSCALE = 2**64  # bar returns as exact integers: q = int(r * 2^64)
# ∫_0^α f(u) du by 32-point Gauss-Legendre after u = α·v⁴: the substitution crowds the nodes
# towards u = 0, where a Student-t quantile runs off like −u^(−1/ν); plain nodes on (0, α)
# leave a 1e-5 relative error there, these ~1e-11 (tests/unit/test_risk.py checks against quad).
_GL_X, _GL_W = np.polynomial.legendre.leggauss(32)
_GL_V = (_GL_X + 1.0) / 2.0
_TAIL_U = ALPHA * _GL_V**4
_TAIL_W = (_GL_W / 2.0) * ALPHA * 4.0 * _GL_V**3


@dataclass(frozen=True)
class RiskConfig:
    interval_ns: int = 3600 * 10**9
    window_days: int = 90
    min_days: int = 7  # no estimate before the window holds this many days of returns (and >= 30)
    ewma_lambda: float = 0.94  # per day (RiskMetrics daily decay)
    garch_min_returns: int = 250
    garch_refit_ns: int = DAY_NS
    methods: tuple[RiskMethod, ...] = tuple(RiskMethod)

    def __post_init__(self) -> None:
        if self.interval_ns <= 0 or DAY_NS % self.interval_ns:
            raise ValueError("the candle interval must divide one day")
        if self.garch_refit_ns % self.interval_ns:
            raise ValueError("the GARCH refit period must be a whole number of bars")
        if self.window_days < 1 or self.min_days < 1:
            raise ValueError("window_days and min_days must be at least 1")
        if self.window_days * (DAY_NS // self.interval_ns) < 2:
            raise ValueError("the window must hold at least two returns")
        if not 0.0 < self.ewma_lambda < 1.0:
            raise ValueError("ewma_lambda must be in (0, 1)")

    @property
    def bars_per_day(self) -> int:
        return DAY_NS // self.interval_ns

    @property
    def window_bars(self) -> int:
        return self.window_days * self.bars_per_day

    @property
    def min_returns(self) -> int:
        # At least a few days, so the overlapping daily returns are not one day seen n times,
        # and at least 30 returns for any moment estimate; never more than the window holds.
        return min(self.window_bars, max(30, self.min_days * self.bars_per_day))

    @property
    def refit_bars(self) -> int:
        return self.garch_refit_ns // self.interval_ns

    @property
    def history_bars(self) -> int:
        """Returns kept: the window, plus one refit period when GARCH must be refitted on a
        window that ended at the last aligned bar."""
        extra = self.refit_bars if RiskMethod.GARCH in self.methods else 0
        return self.window_bars + extra

    @property
    def rebuild_bars(self) -> int:
        """Closes a restart must replay to rebuild the state exactly (one more than returns)."""
        return self.history_bars + 1

    @property
    def ewma_bar_lambda(self) -> float:
        return float(self.ewma_lambda ** (1.0 / self.bars_per_day))

    @property
    def garch_scale(self) -> float:
        return 100.0 * math.sqrt(self.bars_per_day)


@dataclass(frozen=True)
class Estimate:
    method: RiskMethod
    price: float  # the close the amounts refer to
    var: float  # one-day 95 % VaR of one unit, quote currency, >= 0
    es: float  # one-day 95 % expected shortfall, >= 0
    volatility: float  # annualised (365 days), fraction
    window: int  # bar returns used
    detail: dict[str, float] = field(default_factory=dict)  # method parameters, for reports


# --- distribution tails (pure functions, also used by the backtest and the portfolio) -----


@functools.cache
def special() -> Any:
    """scipy.special, imported on first use: it costs ~0.3 s (its array-API layer pulls in
    numpy.f2py), a quarter of what a worker imports before it starts. The worker imports it on
    a thread of its own while it waits for its consumer group (streams.runtime.preload), so the
    first estimate finds it loaded."""
    from scipy import special as module

    return module


def normal_tail(mu: float, sigma: float) -> tuple[float, float]:
    """(VaR, ES) as fractions of the price for a one-day log return R ~ N(mu, sigma²)."""
    if sigma <= 0.0:
        loss = -math.expm1(mu)
        return max(loss, 0.0), max(loss, 0.0)
    q = mu + sigma * Z_ALPHA
    var = -math.expm1(q)
    # E[e^R 1{R <= q}] = e^{mu + sigma²/2} Φ(z - sigma): the lognormal partial expectation.
    tail_mean = math.exp(mu + 0.5 * sigma * sigma) * float(special().ndtr(Z_ALPHA - sigma)) / ALPHA
    return max(var, 0.0), max(1.0 - tail_mean, 0.0)


def student_t_tail(mu: float, sigma: float, nu: float) -> tuple[float, float]:
    """(VaR, ES) as fractions of the price for R = mu + s·T_nu with standard deviation sigma
    (s = sigma·√((nu−2)/nu), nu > 2). ES = (1/α)∫_0^α (1 − e^{F⁻¹(u)}) du: the integrand is
    bounded and smooth (e^R → 0 deep in the tail), so Gauss-Legendre converges fast."""
    if sigma <= 0.0 or nu > NU_MAX:
        return normal_tail(mu, sigma)
    s = sigma * math.sqrt((nu - 2.0) / nu)
    var = -math.expm1(mu + s * float(special().stdtrit(nu, ALPHA)))
    tail_mean = float(np.dot(_TAIL_W, np.exp(mu + s * special().stdtrit(nu, _TAIL_U)))) / ALPHA
    return max(var, 0.0), max(1.0 - tail_mean, 0.0)


def empirical_tail(sorted_returns: Sequence[float]) -> tuple[float, float]:
    """(VaR, ES) fractions from ascending one-day log returns: the k-th smallest, k = ⌈0.05·m⌉,
    and the mean loss over the k smallest."""
    m = len(sorted_returns)
    k = -(-m // 20)  # ⌈m/20⌉ exactly (0.05·m in floats can land a hair above an integer)
    tail = np.asarray(sorted_returns[:k], dtype=float)
    var = -math.expm1(float(tail[-1]))
    es = float(np.mean(-np.expm1(tail)))
    return max(var, 0.0), max(es, 0.0)


def annualised(daily_variance: float) -> float:
    return math.sqrt(max(daily_variance, 0.0) * YEAR_DAYS)


def moments_from_sums(m: int, s1: int, s2: int, s3: int, s4: int) -> tuple[float, float, float | None]:
    """(mean, sample variance ddof=1, biased excess kurtosis or None when the variance is 0)
    from exact integer power sums of returns quantised by 2^64. Every combination is formed in
    integers first, so the only rounding is the final division."""
    d = m * s2 - s1 * s1  # m² · (central second moment) · 2^128
    mean = s1 / (m * _QSCALE)
    var = d / (m * (m - 1) * _QSCALE * _QSCALE) if m > 1 else 0.0
    if d <= 0:
        return mean, max(var, 0.0), None
    n4 = m**3 * s4 - 4 * m * m * s1 * s3 + 6 * m * s1 * s1 * s2 - 3 * s1**4  # m⁴ · m4 · 2^256
    return mean, var, n4 / (d * d) - 3.0


def quantise(r: float) -> int:
    return int(r * _QSCALE)


def t_nu_for_daily(bar_excess_kurtosis: float | None, bars_per_day: int) -> float:
    """Degrees of freedom of the moment-matched one-day Student-t (inf: normal)."""
    if bar_excess_kurtosis is None or bar_excess_kurtosis <= 0.0:
        return math.inf
    nu = 4.0 + 6.0 * bars_per_day / bar_excess_kurtosis
    return nu if nu <= NU_MAX else math.inf


# --- GARCH(1,1) ---------------------------------------------------------------------------


class GarchFit(NamedTuple):
    """Parameters in scaled units (returns × scale), and the variance of the bar after the
    last fitted one (σ²_{T+1})."""

    omega: float
    alpha: float
    beta: float
    next_variance: float
    converged: bool


def fit_garch(scaled_returns: np.ndarray) -> GarchFit:
    """Zero-mean GARCH(1,1) with normal innovations, maximum likelihood by `arch`."""
    from arch import arch_model  # imported here: importing arch costs ~1 s, most users never fit

    model = arch_model(scaled_returns, mean="Zero", vol="GARCH", p=1, q=1, dist="normal", rescale=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence is reported through the flag below
        res = model.fit(disp="off", show_warning=False)
    omega, alpha, beta = (float(res.params[k]) for k in ("omega", "alpha[1]", "beta[1]"))
    last_var = float(res.conditional_volatility[-1]) ** 2
    eps = float(scaled_returns[-1])
    return GarchFit(omega, alpha, beta, omega + alpha * eps * eps + beta * last_var, res.convergence_flag == 0)


def garch_horizon_variance(fit: GarchFit, next_variance: float, horizon: int) -> float:
    """Σ_{h=1..horizon} E[σ²_{T+h}] with E[σ²_{T+1}] = next_variance and the GARCH(1,1)
    recursion E[σ²_{T+h+1}] = ω + (α+β)·E[σ²_{T+h}]."""
    phi = fit.alpha + fit.beta
    if abs(1.0 - phi) < 1e-12:
        return horizon * next_variance + fit.omega * horizon * (horizon - 1) / 2.0
    v = fit.omega / (1.0 - phi)
    return horizon * v + (next_variance - v) * (1.0 - phi**horizon) / (1.0 - phi)


# --- the rolling state ------------------------------------------------------------------


class RollingRisk:
    """Rolling risk of one (venue, symbol, interval) stream. Feed it every final candle's
    (open time, close) in order with `update`; read `estimate(method)` at any time."""

    def __init__(self, config: RiskConfig):
        self.config = config
        cfg = config
        self.n = cfg.bars_per_day
        self.w = cfg.window_bars
        self.last_open_ns: int | None = None
        self.price = math.nan
        self._logp: deque[float] = deque(maxlen=self.n + 1)  # for R_t = ln C_t − ln C_{t−n}
        self._returns: deque[tuple[int, float]] = deque(maxlen=cfg.history_bars)  # (bar close ns, r)
        self.in_window = 0
        self._pushed = 0  # returns ever pushed
        self._s1 = self._s2 = self._s3 = self._s4 = 0
        self._daily: deque[float] = deque(maxlen=max(self.w - self.n + 1, 1))
        self._sorted: SortedList = SortedList()
        self._lam = cfg.ewma_bar_lambda
        # EWMA sum S = Σ_{k<m} λ^k r²_{t−k} over the window, kept WITHOUT subtracting the
        # leaving return (that cancels catastrophically: a window that went quiet after a crash
        # would keep a residue of the crash, even a negative one). Two stacks instead: the
        # newest returns fold into `_back` (S_b = λ·S_b + r²); the older ones sit in `_front`
        # as suffix sums (top = oldest, each entry the weighted sum of itself and the newer
        # front returns), so the oldest leaves by a pop. When `_front` runs empty the back is
        # moved over once: O(1) amortised, only additions of positive terms.
        self._pow = [self._lam**k for k in range(self.w + 1)]
        self._front: list[float] = []
        self._back = 0.0
        self._back_len = 0
        self._garch_on = RiskMethod.GARCH in cfg.methods
        self._hist_on = RiskMethod.HISTORICAL in cfg.methods
        self._garch: GarchFit | None = None
        self._garch_var = math.nan  # σ²_{t+1}, scaled units
        self._garch_bar_ns = -1  # close time of the bar the current fit ended at
        self.garch_fits = 0

    # --- updates -------------------------------------------------------------------------

    def update(self, open_ns: int, close: float, *, fit: bool = True) -> bool:
        """Fold one final candle in. False (and no change) for a candle at or before the last
        one: a re-delivery. `fit=False` defers GARCH refits (used while replaying history)."""
        if close <= 0.0 or not math.isfinite(close):
            raise ValueError(f"close must be a positive number, got {close!r}")
        step = self.config.interval_ns
        if self.last_open_ns is not None and open_ns <= self.last_open_ns:
            return False
        logp = math.log(close)
        pushed = self._pushed
        if self.last_open_ns is None:
            self._logp.append(logp)
        else:
            missing = (open_ns - self.last_open_ns) // step - 1
            prev = self._logp[-1]
            # Bars without a candle had no trade: the price stood still. More than a window
            # of them leaves a window of zeros, so only that many are pushed.
            for i in range(max(missing - self.w, 0), missing):
                self._push(self.last_open_ns + (i + 2) * step, prev)
            self._push(open_ns + step, logp)
        self.last_open_ns = open_ns
        self.price = close
        if self._garch_on and self._pushed > pushed:
            self._garch_step(max(len(self._returns) - (self._pushed - pushed), 0), fit)
        return True

    def replay(self, bars: Iterable[tuple[int, float]]) -> None:
        """Rebuild from stored closes (oldest first), then bring GARCH to where a live run
        would be: fitted at the last aligned bar, recursed since."""
        for open_ns, close in bars:
            self.update(open_ns, close, fit=False)
        if self._garch_on:
            self._garch_step(0, True)

    def _push(self, close_ns: int, logp: float) -> None:
        r = logp - self._logp[-1]
        self._logp.append(logp)
        if self.in_window == self.w:
            _, old = self._returns[-self.w]
            q = quantise(old)
            self._s1 -= q
            self._s2 -= q * q
            self._s3 -= q * q * q
            self._s4 -= q * q * q * q
            if not self._front:
                self._flip()
            self._front.pop()
        else:
            self.in_window += 1
        self._returns.append((close_ns, r))
        self._pushed += 1
        q = quantise(r)
        self._s1 += q
        self._s2 += q * q
        self._s3 += q * q * q
        self._s4 += q * q * q * q
        self._back = self._lam * self._back + r * r
        self._back_len += 1
        if self._hist_on and len(self._logp) == self.n + 1:
            daily = logp - self._logp[0]
            if len(self._daily) == self._daily.maxlen:
                self._sorted.remove(self._daily[0])
            self._daily.append(daily)
            self._sorted.add(daily)

    def _flip(self) -> None:
        """Move the back returns (the newest `_back_len` of the deque) to the front stack."""
        agg, front = 0.0, []
        for k, (_, r) in enumerate(itertools.islice(reversed(self._returns), self._back_len)):
            agg += self._pow[k] * r * r
            front.append(agg)
        self._front = front  # built newest first: the top (end) is the oldest, with the full sum
        self._back, self._back_len = 0.0, 0

    @property
    def _ew(self) -> float:
        """Σ_{k<m} λ^k r²_{t−k} over the m returns of the window."""
        front = self._front[-1] * self._pow[self._back_len] if self._front else 0.0
        return front + self._back

    def _garch_step(self, first_new: int, fit: bool) -> None:
        """GARCH after returns[first_new:] were appended: refit at the last aligned bar among
        them (when fitting is on; an earlier aligned one if that fit does not converge), then
        run the variance recursion over the returns after the fit."""
        cfg = self.config
        returns = self._returns
        if fit:
            for i in range(len(returns) - 1, first_new - 1, -1):
                close_ns = returns[i][0]
                if close_ns % cfg.garch_refit_ns or close_ns <= self._garch_bar_ns:
                    continue
                outcome = self._refit_at(i)
                if outcome != "failed":
                    break
        if self._garch is None:
            return
        g, scale = self._garch, cfg.garch_scale
        var = self._garch_var
        for i in range(first_new, len(returns)):
            close_ns, r = returns[i]
            if close_ns <= self._garch_bar_ns:
                continue
            eps = r * scale
            var = g.omega + g.alpha * eps * eps + g.beta * var
            self._garch_bar_ns = close_ns
        self._garch_var = var

    def _refit_at(self, i: int) -> str:
        """Fit on the (at most W) returns ending at index i: "fitted", "short" (too few
        returns: earlier bars have fewer still) or "failed" (no convergence; the previous fit,
        if any, stays)."""
        lo = max(0, i + 1 - self.w)
        if i + 1 - lo < self.config.garch_min_returns:
            return "short"
        window = np.fromiter((self._returns[j][1] for j in range(lo, i + 1)), float, i + 1 - lo)
        window *= self.config.garch_scale
        if not np.any(window):
            return "failed"
        fit = fit_garch(window)
        self.garch_fits += 1
        if not fit.converged or not math.isfinite(fit.next_variance) or fit.next_variance <= 0.0:
            return "failed"
        self._garch = fit
        self._garch_var = fit.next_variance
        self._garch_bar_ns = self._returns[i][0]
        return "fitted"

    # --- reads ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.in_window >= self.config.min_returns

    def window_returns(self) -> list[float]:
        """The window's bar returns, oldest first (for tests and reports)."""
        k = self.in_window
        return [r for _, r in list(self._returns)[len(self._returns) - k :]]

    def bar_moments(self) -> tuple[float, float, float | None]:
        return moments_from_sums(self.in_window, self._s1, self._s2, self._s3, self._s4)

    def ewma_variance(self) -> float:
        """Bar variance: Σ λ^k r²_{t−k} · (1−λ)/(1−λ^m) over the m returns in the window."""
        m = self.in_window
        return self._ew * (1.0 - self._lam) / (1.0 - self._lam**m) if m else math.nan

    def garch_state(self) -> tuple[GarchFit, float] | None:
        """(fit, σ²_{t+1} in scaled units) or None before the first fit."""
        return None if self._garch is None else (self._garch, self._garch_var)

    def sorted_daily(self) -> list[float]:
        return list(self._sorted)

    def estimate(self, method: RiskMethod) -> Estimate | None:
        """None while there is not enough data for the method."""
        if not self.ready:
            return None
        n, m, price = self.n, self.in_window, self.price
        detail: dict[str, float] = {}
        if method in (RiskMethod.HISTORICAL, RiskMethod.PARAMETRIC, RiskMethod.PARAMETRIC_T):
            mean, var_bar, kurt = self.bar_moments()
            daily_var = n * var_bar
            if method is RiskMethod.HISTORICAL:
                if len(self._sorted) < 20:
                    return None
                var_f, es_f = empirical_tail(self._sorted)
                detail["observations"] = float(len(self._sorted))
            elif method is RiskMethod.PARAMETRIC:
                var_f, es_f = normal_tail(n * mean, math.sqrt(daily_var))
            else:
                nu = t_nu_for_daily(kurt, n)
                var_f, es_f = student_t_tail(n * mean, math.sqrt(daily_var), nu)
                detail["nu"] = nu
        elif method is RiskMethod.EWMA:
            daily_var = n * self.ewma_variance()
            var_f, es_f = normal_tail(0.0, math.sqrt(daily_var))
            detail["lambda_bar"] = self._lam
        elif method is RiskMethod.GARCH:
            if self._garch is None:
                return None
            g = self._garch
            scale = self.config.garch_scale
            daily_var = garch_horizon_variance(g, self._garch_var, n) / (scale * scale)
            var_f, es_f = normal_tail(0.0, math.sqrt(daily_var))
            detail.update(omega=g.omega, alpha=g.alpha, beta=g.beta, scale=scale)
        else:  # pragma: no cover - exhaustive
            raise ValueError(method)
        return Estimate(method, price, price * var_f, price * es_f, annualised(daily_var), m, detail)

    def estimates(self) -> list[Estimate]:
        out = []
        for method in self.config.methods:
            e = self.estimate(method)
            if e is not None:
                out.append(e)
        return out

    def stats(self) -> dict[str, Any]:
        return {"returns": len(self._returns), "in_window": self.in_window, "daily": len(self._daily),
                "garch_fits": self.garch_fits}
