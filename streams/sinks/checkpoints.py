"""The candles agent's checkpoints in ClickHouse (table `candle_checkpoints`).

A worker's small private state lives next to the projections rather than in a Faust table:
Faust's changelog recovery trips over the embedded broker's high watermark, and one SELECT
per stream on first sight is cheap."""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
import pyarrow as pa

from streams.core.checkpoint import Checkpoint
from streams.sinks.clickhouse import ClickHouseSink

_LOAD = (
    "SELECT partition, offset, state FROM candle_checkpoints FINAL "
    "WHERE topic = {topic:String} AND stream = {stream:String}"
)


class ClickHouseCheckpointStore:
    def __init__(self, sink: ClickHouseSink):
        self.sink = sink

    async def load(self, topic: str, key: str) -> Checkpoint | None:
        rows = await self.sink.query(_LOAD, {"topic": topic, "stream": key})
        if not rows:
            return None
        partition, offset, state = rows[0]
        return Checkpoint(topic, key, int(partition), int(offset), orjson.loads(state))

    async def save(self, checkpoints: Sequence[Checkpoint]) -> None:
        now = time.time_ns() // 1000
        table = pa.table(
            {
                "topic": [c.topic for c in checkpoints],
                "stream": [c.key for c in checkpoints],
                "partition": pa.array([c.partition for c in checkpoints], pa.uint32()),
                "offset": pa.array([c.offset for c in checkpoints], pa.int64()),
                "state": [orjson.dumps(c.state).decode() for c in checkpoints],
                "saved_at": pa.array([now] * len(checkpoints), pa.timestamp("us", tz="UTC")),
            }
        )
        await self.sink.insert("candle_checkpoints", table)
