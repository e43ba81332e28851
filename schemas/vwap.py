"""The VWAP agent's event: a stream's volume-weighted average price over its last minutes.

Published on `an.vwap.v1` (keyed `venue:symbol`) and stored in `vwap`
(infra/store/migrations/0008_vwap.sql)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from schemas.events import DecimalStr, Event

VWAP_TOPIC_NAME = "an.vwap.v1"


class Vwap(Event):
    """Σ typical price × volume / Σ volume over the final 1m candles that opened within the
    `window_minutes` minutes up to the last one, the typical price of a candle being
    (high + low + close) / 3 (candles carry no traded notional). `event_ts_ns` is the last
    candle's close time, `recv_ts_ns` its receive time: a replay gives the same events."""

    schema_version: Literal["vwap.v1"] = "vwap.v1"
    window_minutes: Annotated[int, Field(ge=1)]
    vwap: DecimalStr = Field(gt=0)
    volume: DecimalStr = Field(gt=0)  # base units traded in the window
    candles: Annotated[int, Field(ge=1)]  # candles in the window (minutes without trades have none)
