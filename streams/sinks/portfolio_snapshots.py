"""The portfolio agent's snapshots in ClickHouse (table `portfolio_snapshots`), next to the candle
checkpoints and for the same reason: a worker's small private state, one SELECT at a rebuild
(streams/core/portfolio_snapshot.py says what the rows mean)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from streams.core.portfolio_snapshot import SnapshotRow
from streams.sinks.clickhouse import ClickHouseSink

TABLE = "portfolio_snapshots"
_LOAD = f"SELECT partition, account, offset, state FROM {TABLE} FINAL WHERE topic = {{topic:String}}"


def _rows(result: Sequence[Sequence[Any]]) -> list[SnapshotRow]:
    return [SnapshotRow(int(partition), str(account), int(offset), orjson.loads(state) if state else {})
            for partition, account, offset, state in result]


def load_rows(client: Client, topic: str) -> list[SnapshotRow]:
    """The newest row of every account and mark of `topic`, with a client of the caller's (the API
    reads the agent's snapshots to start its own read model)."""
    return _rows(client.query(_LOAD, parameters={"topic": topic}).result_rows)


class ClickHousePortfolioSnapshotStore:
    def __init__(self, sink: ClickHouseSink):
        self.sink = sink

    async def load(self, topic: str) -> list[SnapshotRow]:
        return _rows(await self.sink.query(_LOAD, {"topic": topic}))

    async def save(self, topic: str, rows: Sequence[SnapshotRow]) -> None:
        """One insert: the accounts' rows and the partition's mark land together (and a reader
        copes with rows whose mark is missing, see the core module)."""
        now = time.time_ns() // 1000
        table = pa.table({
            "topic": [topic] * len(rows),
            "partition": pa.array([r.partition for r in rows], pa.uint32()),
            "account": [r.account for r in rows],
            "offset": pa.array([r.offset for r in rows], pa.int64()),
            "state": [orjson.dumps(dict(r.state)).decode() if r.state else "" for r in rows],
            "saved_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        })
        await self.sink.insert(TABLE, table)
