"""The prediction agent's reads and writes in ClickHouse (infra/store/migrations/0006_predictions.sql):
forecast and outcome rows, model checkpoints, and the stored final candles a stream replays
when it starts without a usable checkpoint or after a gap."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from decimal import Decimal

import pyarrow as pa

from schemas.prediction import Prediction, PredictionOutcome, Scores
from streams.core.predict.features import Bar
from streams.sinks.clickhouse import DEC, TS, ClickHouseSink

_QUANT = Decimal("0.00000001")
_F64 = pa.float64()


def _decimals(values: Sequence[Decimal | None]) -> pa.Array:
    return pa.array([None if v is None else v.quantize(_QUANT) for v in values], type=DEC)


SCORE_FIELDS = ("mae", "mae_naive", "skill", "r2", "hit_rate", "up_rate", "mean_confidence", "calibration_error")


def _score_columns(prefix: str, scores: Sequence[Scores]) -> dict[str, pa.Array]:
    cols = {f"{prefix}scored": pa.array([s.scored for s in scores], pa.uint32())}
    for name in SCORE_FIELDS:
        cols[f"{prefix}{name}"] = pa.array([getattr(s, name) for s in scores], _F64)
    return cols


def predictions_table(events: Sequence[Prediction]) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "venue": pa.array([e.venue for e in events], pa.string()),
        "symbol": pa.array([e.symbol for e in events], pa.string()),
        "interval": pa.array([e.interval.value for e in events], pa.string()),
        "model": pa.array([e.model.value for e in events], pa.string()),
        "horizon": pa.array([e.horizon.value for e in events], pa.string()),
        "as_of": pa.array([e.event_ts_ns for e in events], TS),
        "target_ts": pa.array([e.target_ts_ns for e in events], TS),
        "model_version": pa.array([e.model_version for e in events], pa.string()),
        "features_version": pa.array([e.features_version for e in events], pa.string()),
        "price": _decimals([e.price for e in events]),
        "prediction": _decimals([e.prediction for e in events]),
        "log_return": pa.array([e.log_return for e in events], _F64),
        "raw_log_return": pa.array([e.raw_log_return for e in events], _F64),
        "direction": pa.array([e.direction for e in events], pa.int8()),
        "confidence": pa.array([e.confidence for e in events], _F64),
        "status": pa.array([e.status.value for e in events], pa.string()),
        "remaining_candles": pa.array([e.remaining_candles for e in events], pa.uint32()),
    }
    cols.update(_score_columns("", [e.scores for e in events]))
    cols.update(_score_columns("recent_", [e.recent_scores for e in events]))
    cols["recv_ts"] = pa.array([e.recv_ts_ns for e in events], TS)
    return pa.table(cols)


def outcomes_table(events: Sequence[PredictionOutcome]) -> pa.Table:
    return pa.table(
        {
            "venue": pa.array([e.venue for e in events], pa.string()),
            "symbol": pa.array([e.symbol for e in events], pa.string()),
            "interval": pa.array([e.interval.value for e in events], pa.string()),
            "model": pa.array([e.model.value for e in events], pa.string()),
            "horizon": pa.array([e.horizon.value for e in events], pa.string()),
            "as_of": pa.array([e.as_of_ns for e in events], TS),
            "target_ts": pa.array([e.event_ts_ns for e in events], TS),
            "price": _decimals([e.price for e in events]),
            "realised_price": _decimals([e.realised_price for e in events]),
            "realised_log_return": pa.array([e.realised_log_return for e in events], _F64),
            "log_return": pa.array([e.log_return for e in events], _F64),
            "direction": pa.array([e.direction for e in events], pa.int8()),
            "confidence": pa.array([e.confidence for e in events], _F64),
            "hit": pa.array([int(e.hit) for e in events], pa.uint8()),
            "recv_ts": pa.array([e.recv_ts_ns for e in events], TS),
        }
    )


_LOAD_CHECKPOINT = """
SELECT payload
FROM prediction_checkpoints FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
"""


class ClickHouseModelStore:
    """Checkpoints in `prediction_checkpoints`: base64 text, because clickhouse-connect hands
    String columns over as text and a pickle is not valid UTF-8."""

    def __init__(self, sink: ClickHouseSink):
        self.sink = sink

    async def load(self, venue: str, symbol: str, interval: str) -> bytes | None:
        rows = await self.sink.query(_LOAD_CHECKPOINT, {"venue": venue, "symbol": symbol, "interval": interval})
        if not rows:
            return None
        payload = rows[0][0]
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError, TypeError):
            # Not base64: hand over the raw text so the decoder reports it as a bad checkpoint.
            return str(payload).encode("utf-8", "surrogateescape")

    async def save(self, venue: str, symbol: str, interval: str, last_open_ns: int, blob: bytes) -> None:
        table = pa.table(
            {
                "venue": [venue],
                "symbol": [symbol],
                "interval": [interval],
                "last_open_ts": pa.array([last_open_ns], TS),
                "bytes": pa.array([len(blob)], pa.uint32()),
                "payload": [base64.b64encode(blob).decode("ascii")],
                "saved_at": pa.array([time.time_ns() // 1000], pa.timestamp("us", tz="UTC")),
            }
        )
        await self.sink.insert("prediction_checkpoints", table)


# The newest `limit` final candles in (after, before), newest first (reversed by the caller).
_FINAL_CANDLES = """
SELECT toUnixTimestamp64Nano(open_ts), open, high, low, close, volume
FROM candles FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
  AND is_final = 1
  AND open_ts > fromUnixTimestamp64Nano({after_ns:Int64}, 'UTC')
  AND open_ts < fromUnixTimestamp64Nano({before_ns:Int64}, 'UTC')
ORDER BY open_ts DESC
LIMIT {limit:UInt32}
"""


class ClickHouseBarLoader:
    """`loader(venue, symbol, interval, after_ns, before_ns, limit)` -> the newest `limit` final
    candles opening strictly between the two times, oldest first (`after_ns` None: no bound)."""

    def __init__(self, sink: ClickHouseSink):
        self.sink = sink

    async def __call__(self, venue: str, symbol: str, interval: str, after_ns: int | None, before_ns: int,
                       limit: int) -> list[Bar]:
        rows = await self.sink.query(
            _FINAL_CANDLES,
            {"venue": venue, "symbol": symbol, "interval": interval, "after_ns": -1 if after_ns is None else after_ns,
             "before_ns": before_ns, "limit": limit},
        )
        return [Bar.of(int(ts), o, h, lo, c, v) for ts, o, h, lo, c, v in reversed(rows)]
