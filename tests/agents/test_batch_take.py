"""`take_batches` (streams/runtime/batch_take.py) on a real Faust stream, in Faust's test context:
what it hands the sink and when each batch is acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import faust
import pyarrow as pa
import pytest

from infra.config.settings import Settings
from streams.app import faust_settings
from streams.runtime import retrying
from streams.runtime.batch_sink import BatchSink, Observe, TableSink, batch_agent
from streams.runtime.metrics import WorkerMetrics
from tests.unit.test_worker_metrics import samples


class Recorder(BatchSink):
    def __init__(self, log: list[tuple[str, Any]], fail_on: int | None = None) -> None:
        self.log, self.fail_on, self.batches = log, fail_on, 0

    async def write(self, values: Sequence[bytes]) -> None:
        if self.batches == self.fail_on:
            self.batches += 1
            raise ConnectionError("database down")
        self.batches += 1
        self.log.append(("write", [int(v) for v in values]))


def acking(body: Callable[[Any], Any], log: list[tuple[str, Any]]) -> Callable[[Any], Any]:
    """The agent `body`, with every acknowledgement of its stream logged (value acked)."""

    async def agent(stream: Any) -> None:
        ack = stream.ack

        async def logged(event: Any) -> bool:
            log.append(("ack", int(event.value)))
            return bool(await ack(event))

        stream.ack = logged
        await body(stream)

    return agent


class FlakyDatabase:
    """A table sink's database whose insert number `fail_on` fails `failures` times, then is taken;
    each taken insert is logged as a write of its values."""

    def __init__(self, log: list[tuple[str, Any]], fail_on: int, failures: int) -> None:
        self.log, self.fail_on, self.failures, self.inserts = log, fail_on, failures, 0

    async def insert(self, table: str, data: pa.Table) -> int:
        if self.inserts == self.fail_on and self.failures > 0:
            self.failures -= 1
            self.note_failure(table)  # as ClickHouseSink.insert counts it
            raise ConnectionError("database down")
        self.inserts += 1
        self.log.append(("write", data.column("v").to_pylist()))
        return data.num_rows

    def note_failure(self, table: str) -> None:
        self.log.append(("failed", table))


def values_table(values: Sequence[bytes]) -> list[tuple[str, pa.Table]]:
    return [("t", pa.table({"v": [int(v) for v in values]}))]


async def run(n: int, size: int, within: float, *, fail_on: int | None = None,
              settle: Callable[[list[tuple[str, Any]]], bool], linger: float = 0.0,
              observe: Observe | None = None,
              sink: Callable[[list[tuple[str, Any]]], BatchSink] | None = None) -> list[tuple[str, Any]]:
    """`sink(log)`: the sink under test (default: a `Recorder` failing its write number `fail_on`)."""
    app = faust.App("test-batch-take", **faust_settings(Settings(worker_id="test-batch-take",
                                                                 kafka_bootstrap="127.0.0.1:1")))
    log: list[tuple[str, Any]] = []
    body = batch_agent(sink(log) if sink is not None else Recorder(log, fail_on), size, within, observe)
    agent = app.agent(app.topic("in"), name="sink")(acking(body, log))
    async with agent.test_context() as ctx:
        for i in range(n):
            await ctx.put(str(i).encode(), key=b"k", wait=False)
        deadline = time.monotonic() + 20
        while not settle(log) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(linger)  # for what must not follow
        seen = list(log)  # before the context stops the agent (a stop hands over what is held)
    return seen


def writes(log: list[tuple[str, Any]]) -> list[list[int]]:
    return [values for what, values in log if what == "write"]


async def test_the_last_partial_batch_of_a_burst_goes_once_its_stream_is_idle() -> None:
    # 1,200 values, batches of 500, a flush interval far beyond the test's own 20 s wait: the
    # last 200 (at least a quarter of a batch) are written when nothing more comes.
    log = await run(1200, 500, 600.0, settle=lambda log: sum(map(len, writes(log))) == 1200)
    assert writes(log) == [list(range(500)), list(range(500, 1000)), list(range(1000, 1200))]


async def test_a_trickle_below_a_quarter_of_a_batch_waits_for_the_flush_interval() -> None:
    started = time.monotonic()
    log = await run(10, 500, 1.5, settle=lambda log: bool(writes(log)))
    assert writes(log) == [list(range(10))]
    assert time.monotonic() - started >= 1.5  # held for the interval, not written when idle


async def test_a_batch_is_acknowledged_after_its_write_and_never_when_the_write_fails() -> None:
    log = await run(1000, 500, 600.0, settle=lambda log: sum(1 for what, _ in log if what == "ack") == 1000)
    assert log == [("write", list(range(500))), *(("ack", i) for i in range(500)),
                   ("write", list(range(500, 1000))), *(("ack", i) for i in range(500, 1000))]

    failing = await run(1000, 500, 600.0, fail_on=1, settle=lambda log: len(log) >= 501, linger=0.3)
    assert failing == [("write", list(range(500))), *(("ack", i) for i in range(500))]


async def test_a_batch_whose_insert_fails_is_stored_when_the_database_is_back_before_anything_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Left to Faust, the agent would be restarted on the values after the failed batch, which this
    # process would then never store (and the consumer would never commit past its gap).
    monkeypatch.setattr(retrying, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(retrying, "RETRY_MAX_S", 0.02)
    log = await run(1500, 500, 600.0, sink=lambda log: TableSink(FlakyDatabase(log, 1, 3), values_table),  # type: ignore[arg-type]
                    settle=lambda log: sum(1 for what, _ in log if what == "ack") == 1500)
    assert log == [("write", list(range(500))), *(("ack", i) for i in range(500)),
                   *[("failed", "t")] * 3, ("write", list(range(500, 1000))), *(("ack", i) for i in range(500, 1000)),
                   ("write", list(range(1000, 1500))), *(("ack", i) for i in range(1000, 1500))]


async def test_a_sink_agent_is_observed_once_per_batch_with_its_size() -> None:
    metrics = WorkerMetrics()
    seen: list[int] = []

    def observe(messages: int, seconds: float) -> None:
        seen.append(messages)
        metrics.observe_agent("trade_sink", messages, seconds)

    await run(1200, 500, 600.0, observe=observe, settle=lambda log: len(writes(log)) == 3)
    assert seen == [500, 500, 200]
    got = samples(metrics)
    assert got[("entasis_worker_agent_messages_total", (("agent", "trade_sink"),))] == 1200
    assert got[("entasis_worker_agent_processing_seconds_count", (("agent", "trade_sink"),))] == 3
