"""`an.risk.v1`: one `risk_estimate.v1` per message, the `RiskEstimate` model's JSON."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from schemas.codecs.envelope import TS, EventCodec, decimals
from schemas.limits import amount_problem, count_problem
from schemas.risk import RiskEstimate


def storable(e: RiskEstimate) -> str | None:
    """Amounts `risk_estimates` holds once rounded to 8 places; a window its UInt32 holds."""
    return (amount_problem(e.price, "price") or amount_problem(e.var_95, "var_95")
            or amount_problem(e.expected_shortfall, "expected_shortfall")
            or amount_problem(e.volatility, "volatility") or count_problem(e.window, "window"))


CODEC = EventCodec(RiskEstimate, storable)
RISK_ESTIMATE = CODEC.format
FORMATS = (RISK_ESTIMATE,)
encode = CODEC.encode
decode = CODEC.decode


def table(estimates: Sequence[RiskEstimate]) -> pa.Table:
    """Rows of `risk_estimates`. The amounts are computed, so they are rounded to the store's 8
    places here rather than refused."""
    return pa.table(
        {
            "venue": pa.array([e.venue for e in estimates], pa.string()),
            "symbol": pa.array([e.symbol for e in estimates], pa.string()),
            "interval": pa.array([e.interval.value for e in estimates], pa.string()),
            "method": pa.array([e.method.value for e in estimates], pa.string()),
            "as_of": pa.array([e.event_ts_ns for e in estimates], TS),
            "price": decimals([e.price for e in estimates], quantize=True),
            "var_95": decimals([e.var_95 for e in estimates], quantize=True),
            "expected_shortfall": decimals([e.expected_shortfall for e in estimates], quantize=True),
            "volatility": decimals([e.volatility for e in estimates], quantize=True),
            "window": pa.array([e.window for e in estimates], pa.uint32()),
            "recv_ts": pa.array([e.recv_ts_ns for e in estimates], TS),
        }
    )
