"""VaR backtests: how often did the one-day 95 % VaR forecast fail, and were the failures
independent? Pure logic over closes; the CLI (`entasis risk backtest`) and the API
(`/analysis/risk/{symbol}/backtest`) both call `backtest`.

Protocol: the estimator rolls over every bar exactly as the risk agent does. A forecast is
taken at each bar that closes on a UTC midnight (every bar for daily candles) inside
[start, end), once the method has an estimate; it is compared with the realised loss of one
unit over the next 24 hours, P_t − P_{t+1d} (the close of the bar that closes a day later; a
missing bar counts at the previous close, as in the estimator; a day whose midnight candle is
missing has no forecast). A breach is a loss above the VaR. Forecasts are one per day, so
consecutive forecast horizons do not overlap, as both tests assume.

- Kupiec (1995) proportion of failures: LR_pof = −2 ln[(1−p)^{N−x} p^x] + 2 ln[(1−x/N)^{N−x} (x/N)^x],
  χ²(1) under H0 "the breach probability is p = 5 %".
- Christoffersen (1998) independence: with n_ij the count of day pairs (state i, then state j),
  π_01 = n01/(n00+n01), π_11 = n11/(n10+n11), π = (n01+n11)/(n00+n01+n10+n11):
  LR_ind = −2 ln[(1−π)^{n00+n10} π^{n01+n11}] + 2 ln[(1−π01)^{n00} π01^{n01} (1−π11)^{n10} π11^{n11}],
  χ²(1) under H0 "a breach today does not change tomorrow's breach probability".
- Conditional coverage: LR_cc = LR_pof + LR_ind, χ²(2). (0·ln 0 = 0 throughout.)
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.risk import RiskMethod
from streams.core.risk import ALPHA, DAY_NS, RiskConfig, RollingRisk, special


@dataclass(frozen=True)
class LikelihoodRatio:
    statistic: float
    p_value: float


@dataclass(frozen=True)
class BacktestRow:
    method: RiskMethod
    observations: int  # forecasts with a realised next-day loss
    breaches: int
    expected: float  # ALPHA × observations
    kupiec: LikelihoodRatio
    christoffersen: LikelihoodRatio
    conditional_coverage: LikelihoodRatio
    first_ns: int | None  # as-of time of the first and last forecast counted
    last_ns: int | None
    mean_var: float  # average VaR forecast (quote currency), for scale

    @property
    def breach_rate(self) -> float:
        return self.breaches / self.observations if self.observations else math.nan


def _xlogy(x: float, y: float) -> float:
    """x·ln y with 0·ln 0 = 0."""
    return 0.0 if x == 0 else x * math.log(y)


def _statistic(null: float, alt: float) -> float:
    """−2 (ln L0 − ln L1), never negative: when the two fits coincide rounding can leave −1e-16
    (or −0.0), which would print as a negative statistic."""
    lr = -2.0 * (null - alt)
    return lr if lr > 0.0 else 0.0


def kupiec_pof(observations: int, breaches: int, p: float = ALPHA) -> LikelihoodRatio:
    n, x = observations, breaches
    if n == 0:
        return LikelihoodRatio(math.nan, math.nan)
    phat = x / n
    null = _xlogy(n - x, 1.0 - p) + _xlogy(x, p)
    alt = _xlogy(n - x, 1.0 - phat) + _xlogy(x, phat)
    lr = _statistic(null, alt)
    return LikelihoodRatio(lr, float(special().chdtrc(1, lr)))


def transition_counts(hits: Sequence[bool]) -> tuple[int, int, int, int]:
    """(n00, n01, n10, n11) over consecutive pairs."""
    n = [0, 0, 0, 0]
    for a, b in itertools.pairwise(hits):
        n[2 * int(a) + int(b)] += 1
    return n[0], n[1], n[2], n[3]


def christoffersen_independence(hits: Sequence[bool]) -> LikelihoodRatio:
    n00, n01, n10, n11 = transition_counts(hits)
    total = n00 + n01 + n10 + n11
    if total == 0:
        return LikelihoodRatio(math.nan, math.nan)
    pi = (n01 + n11) / total
    pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    null = _xlogy(n00 + n10, 1.0 - pi) + _xlogy(n01 + n11, pi)
    alt = _xlogy(n00, 1.0 - pi01) + _xlogy(n01, pi01) + _xlogy(n10, 1.0 - pi11) + _xlogy(n11, pi11)
    lr = _statistic(null, alt)
    return LikelihoodRatio(lr, float(special().chdtrc(1, lr)))


def conditional_coverage(pof: LikelihoodRatio, ind: LikelihoodRatio) -> LikelihoodRatio:
    lr = pof.statistic + ind.statistic
    if math.isnan(lr):
        return LikelihoodRatio(math.nan, math.nan)
    return LikelihoodRatio(lr, float(special().chdtrc(2, lr)))


def evaluate(method: RiskMethod, forecasts: Sequence[tuple[int, float, float]]) -> BacktestRow:
    """From (as-of ns, VaR, realised loss) in time order."""
    hits = [loss > var for _, var, loss in forecasts]
    n, x = len(hits), sum(hits)
    pof = kupiec_pof(n, x)
    ind = christoffersen_independence(hits)
    return BacktestRow(
        method=method, observations=n, breaches=x, expected=ALPHA * n, kupiec=pof, christoffersen=ind,
        conditional_coverage=conditional_coverage(pof, ind),
        first_ns=forecasts[0][0] if forecasts else None, last_ns=forecasts[-1][0] if forecasts else None,
        mean_var=sum(v for _, v, _ in forecasts) / n if n else math.nan,
    )


def backtest(
    bars: Iterable[tuple[int, float]],
    config: RiskConfig,
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> list[BacktestRow]:
    """One row per method of `config.methods`. `bars` are (open ns, close) of final candles of
    `config.interval_ns`, oldest first; forecasts are taken as of closes in [start, end)."""
    risk = RollingRisk(config)
    step = config.interval_ns
    lo = start_ns if start_ns is not None else -1
    hi = end_ns if end_ns is not None else 2**63
    closes_at: list[int] = []  # bar close times, ascending
    closes: list[float] = []
    made: list[tuple[int, float, dict[RiskMethod, float]]] = []  # (as-of, price, VaR per method)
    for open_ns, close in bars:
        if not risk.update(open_ns, close):
            continue
        close_ns = open_ns + step
        closes_at.append(close_ns)
        closes.append(close)
        if close_ns % DAY_NS == 0 and lo <= close_ns < hi:
            var = {e.method: e.var for e in risk.estimates()}
            if var:
                made.append((close_ns, close, var))
    per_method: dict[RiskMethod, list[tuple[int, float, float]]] = {m: [] for m in config.methods}
    for as_of, price, var in made:
        target = as_of + DAY_NS
        if not closes_at or target > closes_at[-1]:
            break  # no realised next day yet
        later = closes[bisect.bisect_right(closes_at, target) - 1]  # close at t+1d, or the last before
        loss = price - later
        for method, value in var.items():
            per_method[method].append((as_of, value, loss))
    return [evaluate(m, per_method[m]) for m in config.methods]


def bar_range(config: RiskConfig, start_ns: int | None, end_ns: int | None) -> tuple[int, int]:
    """[lo, hi) of the bar open times a backtest of forecasts in [start, end) must read: before
    `start`, the bars a running agent would hold there (its rebuild window and one more bar, so
    the first forecast is the agent's); after `end`, one day, to realise the last forecast's loss.
    An open side reads everything on that side."""
    step = config.interval_ns
    lo = 0 if start_ns is None else max(start_ns - (config.rebuild_bars + 1) * step, 0)
    hi = 2**62 if end_ns is None else end_ns + DAY_NS
    return lo, hi


def default_end(last_open_ns: int, interval_ns: int) -> int:
    """The first UTC midnight after the close of the last bar (open at `last_open_ns`): every
    forecast that the data can realise is before it."""
    return ((last_open_ns + interval_ns) // DAY_NS + 1) * DAY_NS
