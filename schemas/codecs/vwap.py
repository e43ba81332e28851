"""`an.vwap.v1`: one `vwap.v1` per message, the `Vwap` model's JSON (schemas/vwap.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from schemas.codecs.envelope import TS, EventCodec, decimals
from schemas.limits import MAX_PRICE, count_problem, decimal_problem, price_problem
from schemas.vwap import Vwap


def storable(e: Vwap) -> str | None:
    """What `vwap` holds: Decimal(38, 8) price and volume (not rounded: refused beyond 8 places),
    UInt32 counters."""
    return (price_problem(e.vwap) or decimal_problem(e.volume, "volume", MAX_PRICE)
            or count_problem(e.window_minutes, "window_minutes") or count_problem(e.candles, "candles"))


CODEC = EventCodec(Vwap, storable)
VWAP = CODEC.format
FORMATS = (VWAP,)
encode = CODEC.encode
decode = CODEC.decode


def table(events: Sequence[Vwap]) -> pa.Table:
    """Rows of `vwap` (infra/store/migrations/0008_vwap.sql)."""
    return pa.table({
        "venue": pa.array([e.venue for e in events], pa.string()),
        "symbol": pa.array([e.symbol for e in events], pa.string()),
        "window_minutes": pa.array([e.window_minutes for e in events], pa.uint32()),
        "as_of": pa.array([e.event_ts_ns for e in events], TS),
        "vwap": decimals([e.vwap for e in events]),
        "volume": decimals([e.volume for e in events]),
        "candles": pa.array([e.candles for e in events], pa.uint32()),
        "recv_ts": pa.array([e.recv_ts_ns for e in events], TS),
    })
