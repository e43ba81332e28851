"""A topic's values written in batches, with the flush tied to acknowledgement.

After quix-streams' `BatchingSink`: values are gathered into a batch and the sink writes the
whole batch at once; the input offsets are committed only after the write. Here the batch comes
from `take_batches` (Faust's `stream.take(size, within=seconds)`, and a large partial batch goes
as soon as its stream is idle), which acknowledges a batch only once the loop body that received
it returns, i.e. after `write`: a crash before that re-delivers the batch, which the idempotent
(ReplacingMergeTree) tables absorb."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import pyarrow as pa
from pydantic import BaseModel

from schemas.codecs.envelope import EventCodec
from streams.runtime.batch_take import take_batches
from streams.runtime.retrying import until_done
from streams.sinks.clickhouse import ClickHouseSink

Agent = Callable[[Any], Coroutine[Any, Any, None]]
M = TypeVar("M", bound=BaseModel)
# a batch of raw values -> (table name, rows) to insert
Rows = Callable[[Sequence[bytes]], Iterable[tuple[str, pa.Table]]]
# (messages in the batch, seconds its write took)
Observe = Callable[[int, float], None]


async def insert_until_stored(sink: ClickHouseSink, table: str, data: pa.Table) -> int:
    """`data` inserted into `table`, tried again until the database takes it."""
    return await until_done(lambda: sink.insert(table, data), f"inserting {data.num_rows} rows into {table}")


class BatchSink(ABC):
    @abstractmethod
    async def write(self, values: Sequence[bytes]) -> None:
        """Store one batch; the runtime acknowledges it once this returns. Inserts go through
        `insert_until_stored`; what the batch does besides (dead letters, counts) is done once."""


class TableSink(BatchSink):
    """Each batch becomes rows of one or more ClickHouse tables."""

    def __init__(self, sink: ClickHouseSink, rows: Rows) -> None:
        self.sink = sink
        self.rows = rows

    async def write(self, values: Sequence[bytes]) -> None:
        for table, data in self.rows(values):
            await insert_until_stored(self.sink, table, data)


def batch_agent(sink: BatchSink, size: int, within: float, observe: Observe | None = None, *,
                events: bool = False) -> Agent:
    """The agent body feeding `sink` batches of at most `size` values or `within` seconds (the
    Faust events, with `events`: for their keys and headers). `observe(messages, seconds)`, when
    given, is told each batch's size and write time (once per batch: the metrics cost nothing per
    message)."""

    async def sink_agent(stream: Any) -> None:
        async for values in take_batches(stream, size, within, events=events):
            if observe is None:
                await sink.write(values)
                continue
            started = time.perf_counter()
            await sink.write(values)
            observe(len(values), time.perf_counter() - started)

    return sink_agent


def model_rows(codec: EventCodec[M], table: str, to_arrow: Callable[[Sequence[M]], pa.Table]) -> Rows:
    """Rows of one table from the values the codec decodes; the rest are skipped: whoever
    published them reported them already (one report per message), and the topic keeps the bytes."""

    def rows(values: Sequence[bytes]) -> Iterable[tuple[str, pa.Table]]:
        return [(table, to_arrow(codec.decode_many(values)))]

    return rows
