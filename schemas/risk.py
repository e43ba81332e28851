"""The risk agent's event: one method's one-day risk of one unit of the base asset.

Published on `an.risk.v1` (keyed `venue:symbol`) and stored in `risk_estimates`
(infra/store/migrations/0005_risk.sql). The numbers and their methods are defined in
`streams/core/risk.py`; this is only the contract on the wire.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from schemas.events import DecimalStr, Event, Interval


class RiskMethod(StrEnum):
    """How the one-day return distribution is estimated (see streams/core/risk.py)."""

    HISTORICAL = "historical"  # empirical quantile of overlapping one-day returns in the window
    PARAMETRIC = "parametric"  # normal with the window's mean and variance
    PARAMETRIC_T = "parametric_t"  # Student-t matched to the window's variance and kurtosis
    EWMA = "ewma"  # RiskMetrics, lambda = 0.94 per day, zero mean, normal
    GARCH = "garch"  # GARCH(1,1) fitted by `arch`, zero mean, normal


RISK_TOPIC_NAME = "an.risk.v1"


class RiskEstimate(Event):
    """`event_ts_ns` is the estimate's as-of time: the close time of the candle that completed
    it (open time + interval), in exchange event time. `recv_ts_ns` is that candle's receive
    time, not the wall clock, so a replay produces byte-identical estimates.

    `var_95` and `expected_shortfall` are one-day 95 % amounts in the quote currency for one
    unit of the base asset held at `price`, as positive losses (zero when even the 5 % tail
    is a gain); `volatility` is annualised over 365 days, as a fraction."""

    schema_version: Literal["risk_estimate.v1"] = "risk_estimate.v1"
    interval: Interval  # the candles whose closes give the returns
    method: RiskMethod
    price: DecimalStr = Field(gt=0)  # the close the amounts refer to
    var_95: DecimalStr = Field(ge=0)
    expected_shortfall: DecimalStr = Field(ge=0)
    volatility: DecimalStr = Field(ge=0)
    window: Annotated[int, Field(ge=1)]  # returns (bars of `interval`) the estimate used
