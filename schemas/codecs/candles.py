"""`md.candles.{1m,5m,1h,1d}.v1`: one `candle.v1` per message, the `Candle` model's JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from schemas.codecs.envelope import TS, EventCodec, decimals
from schemas.events import Candle
from schemas.limits import MAX_PRICE, count_problem, decimal_problem, price_problem


def storable(candle: Candle) -> str | None:
    """What the `candles` table cannot hold: prices and volume its Decimal(38, 8) would round or
    overflow, counters past its UInt32 columns."""
    return (price_problem(candle.open) or price_problem(candle.high) or price_problem(candle.low)
            or price_problem(candle.close)
            or decimal_problem(candle.volume, "volume", MAX_PRICE, allow_zero=True)
            or count_problem(candle.trades, "trades") or count_problem(candle.revision, "revision"))


CODEC = EventCodec(Candle, storable)
CANDLE = CODEC.format
FORMATS = (CANDLE,)
encode = CODEC.encode
decode = CODEC.decode
decode_fields = CODEC.decode_fields  # the consuming agents' hot path: a few fields of a checked candle.v1

DECIMAL_FIELDS = ("open", "high", "low", "close", "volume")


def table(candles: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows of `candles` from candle.v1 wire dicts (`decode_fields`). `version` orders a candle's
    revisions for the ReplacingMergeTree: a later revision wins, and the final one over its draft."""
    cols: dict[str, pa.Array] = {
        "venue": pa.array([c["venue"] for c in candles], pa.string()),
        "symbol": pa.array([c["symbol"] for c in candles], pa.string()),
        "interval": pa.array([c["interval"] for c in candles], pa.string()),
        "open_ts": pa.array([c["open_ts_ns"] for c in candles], TS),
    }
    for name in DECIMAL_FIELDS:
        cols[name] = decimals([c[name] for c in candles])
    cols.update(
        {
            "trades": pa.array([c["trades"] for c in candles], pa.uint32()),
            "first_trade_id": pa.array([c["first_trade_id"] for c in candles], pa.string()),
            "last_trade_id": pa.array([c["last_trade_id"] for c in candles], pa.string()),
            "revision": pa.array([c["revision"] for c in candles], pa.uint32()),
            "is_final": pa.array([int(c["is_final"]) for c in candles], pa.uint8()),
            "event_ts": pa.array([c["event_ts_ns"] for c in candles], TS),
            "version": pa.array([c["revision"] * 2 + int(c["is_final"]) for c in candles], pa.uint64()),
        }
    )
    return pa.table(cols)
