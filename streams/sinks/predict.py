"""The prediction agent's reads and writes in ClickHouse (infra/store/migrations/0006_predictions.sql):
forecast and outcome rows, model checkpoints, and the stored final candles a stream replays
when it starts without a usable checkpoint or after a gap."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Sequence

import pyarrow as pa

from schemas.codecs import predictions
from schemas.codecs.envelope import WireError
from schemas.prediction import Prediction, PredictionOutcome
from streams.core.predict.features import Bar
from streams.sinks.clickhouse import TS, ClickHouseSink


def prediction_rows(values: Sequence[bytes]) -> Iterable[tuple[str, pa.Table]]:
    """One topic, two event kinds, two tables (the rows are built by the topic's codec)."""
    events: list[Prediction | PredictionOutcome] = []
    for raw in values:
        try:
            events.append(predictions.decode(raw))
        except WireError:
            continue  # not ours to judge twice; the topic keeps the bytes
    return [("predictions", predictions.predictions_table([e for e in events if isinstance(e, Prediction)])),
            ("prediction_outcomes",
             predictions.outcomes_table([e for e in events if isinstance(e, PredictionOutcome)]))]


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
