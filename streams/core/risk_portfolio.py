"""Portfolio one-day risk of several positions, for `/analysis/risk/portfolio` once positions
exist (the endpoint is not served yet: there are no positions to read). Pure numpy/scipy.

Inputs: position values v_i = signed quantity × price in the quote currency (negative for a
short) and a (T × k) matrix of ONE-DAY log returns of the k assets over the same window and the
same days (overlapping daily returns from bars, as for single-asset historical VaR; rows are
common as-of times, so the correlations come from the same window).

- historical: full revaluation, P&L_s = Σ_i v_i (e^{R_si} − 1) for every row s; VaR = the k-th
  smallest P&L negated, k = ⌈0.05·T⌉; ES = the mean of those k, negated.
- parametric (delta-normal): P&L ≈ Σ_i v_i R_i, normal with mean vᵀμ and variance vᵀΣv, Σ the
  sample covariance (ddof = 1) of the rows; VaR = −(vᵀμ + z_α σ_p), ES = −vᵀμ + σ_p φ(z_α)/α.
- volatility: σ_p·√365 divided by the gross exposure Σ|v_i| (a fraction, as for one asset).
Amounts are floored at zero like the single-asset ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from streams.core.risk import ALPHA, YEAR_DAYS, Z_ALPHA


@dataclass(frozen=True)
class PortfolioRisk:
    var: float
    es: float
    volatility: float
    correlation: np.ndarray  # k × k, from the same rows


def correlation(daily_returns: np.ndarray) -> np.ndarray:
    r = np.asarray(daily_returns, dtype=float)
    if r.shape[1] == 1:
        return np.ones((1, 1))
    return np.asarray(np.corrcoef(r, rowvar=False))


def portfolio_risk(
    values: np.ndarray, daily_returns: np.ndarray, method: Literal["historical", "parametric"] = "historical"
) -> PortfolioRisk:
    v = np.asarray(values, dtype=float)
    r = np.asarray(daily_returns, dtype=float)
    if r.ndim != 2 or r.shape[1] != v.shape[0]:
        raise ValueError("daily_returns must be T × k for k positions")
    if r.shape[0] < 20:
        raise ValueError("need at least 20 common one-day returns")
    cov = np.atleast_2d(np.cov(r, rowvar=False, ddof=1))
    sigma_p = math.sqrt(max(float(v @ cov @ v), 0.0))
    gross = float(np.abs(v).sum())
    vol = sigma_p * math.sqrt(YEAR_DAYS) / gross if gross else 0.0
    if method == "historical":
        pnl = np.sort(np.expm1(r) @ v)
        k = -(-len(pnl) // 20)
        var = -float(pnl[k - 1])
        es = -float(pnl[:k].mean())
    elif method == "parametric":
        mu_p = float(v @ r.mean(axis=0))
        var = -(mu_p + Z_ALPHA * sigma_p)
        pdf = math.exp(-0.5 * Z_ALPHA * Z_ALPHA) / math.sqrt(2.0 * math.pi)
        es = -mu_p + sigma_p * pdf / ALPHA
    else:
        raise ValueError(f"unknown method {method!r}")
    return PortfolioRisk(max(var, 0.0), max(es, 0.0), vol, correlation(r))
