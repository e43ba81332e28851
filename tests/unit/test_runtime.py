"""The stream runtime without Kafka: keyed state and revocation, the checkpoint protocol (nothing
acknowledged before a checkpoint covers it), batch sinks (acknowledged only after the write) and
topic emitters."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pytest

from schemas.codecs import quality as quality_codec
from schemas.events import QualityEvent, QualityKind
from streams.core.checkpoint import Checkpoint, MemoryCheckpointStore
from streams.runtime import retrying
from streams.runtime.batch_sink import TableSink, model_rows
from streams.runtime.checkpointed import CheckpointedStreams
from streams.runtime.emit import routed, topic_emitter
from streams.runtime.keyed import KeyedState, forget_on_revoke
from streams.runtime.offload import Offload


class TP:
    def __init__(self, partition: int) -> None:
        self.partition = partition


def test_keyed_state_makes_once_follows_the_partition_and_forgets_revoked_keys() -> None:
    made: list[str] = []
    keyed: KeyedState[str, list[str]] = KeyedState()

    def make(key: str) -> list[str]:
        made.append(key)
        return []

    p0, p1 = TP(0), TP(1)
    keyed.get_or_create("a", p0, lambda: make("a")).append("x")
    keyed.get_or_create("a", p1, lambda: make("a")).append("y")  # moved: now of p1
    keyed.get_or_create("b", p0, lambda: make("b"))
    keyed.get_or_create("c", p1, lambda: make("c"))
    assert made == ["a", "b", "c"] and keyed["a"] == ["x", "y"]
    assert sorted(keyed.forget({p1})) == ["a", "c"]
    assert "a" not in keyed and "b" in keyed and len(keyed) == 1
    keyed.count("messages", 3)
    assert keyed.counts == {"created": 3, "forgotten": 2, "messages": 3}


async def test_forget_on_revoke_reaches_every_holder() -> None:
    class Signal:
        def __init__(self) -> None:
            self.handlers: list[Any] = []

        def connect(self, handler: Any) -> None:
            self.handlers.append(handler)

    app = type("App", (), {"on_partitions_revoked": Signal()})()
    one: KeyedState[str, int] = KeyedState()
    two: KeyedState[str, int] = KeyedState()
    one.put("a", 1, "tp0")
    two.put("b", 2, "tp0")
    two.put("c", 3, "tp1")
    forget_on_revoke(app, one, two)
    await app.on_partitions_revoked.handlers[0](app, {"tp0"})
    assert len(one) == 0 and list(two.states) == ["c"]


class Tally:
    """A checkpointable state: counts what was folded."""

    def __init__(self) -> None:
        self.total = 0

    def to_state(self) -> dict[str, Any]:
        return {"total": self.total}

    def restore(self, state: dict[str, Any]) -> None:
        self.total = state["total"]


async def test_inputs_are_acknowledged_only_by_the_checkpoint_that_covers_them() -> None:
    now = [0.0]
    store = MemoryCheckpointStore()
    acked: list[str] = []

    async def ack(message: str) -> None:
        acked.append(message)

    streams: CheckpointedStreams[Tally] = CheckpointedStreams(store, "in", lambda key: Tally(), 5.0, lambda: now[0])
    streams.ack = ack
    now[0] = 10.0
    for offset, value in enumerate([3, 4]):
        slot = await streams.slot("k", TP(2))
        slot.state.total += value
        streams.folded("k", slot, offset, f"m{offset}")
    assert acked == [] and not streams.due()  # the first checkpoint comes 5 s after the first input
    now[0] = 15.0
    assert streams.due()
    await streams.checkpoint()
    assert acked == ["m0", "m1"] and not streams.due()
    saved = store.saved[("in", "k")]
    assert (saved.partition, saved.offset, saved.state) == (2, 1, {"total": 7})

    slot = await streams.slot("k", TP(2))
    slot.state.total += 1
    streams.folded("k", slot, 2, "m2")
    now[0] = 17.0
    assert not streams.due()  # 2 s after the last checkpoint, 5 s wanted
    streams.forget({slot.partition})  # revoked before its checkpoint: m2 will come again
    assert not streams.dirty and "k" not in streams.slots and acked == ["m0", "m1"]

    restarted: CheckpointedStreams[Tally] = CheckpointedStreams(store, "in", lambda key: Tally(), 5.0)
    slot = await restarted.slot("k", TP(2))
    assert (slot.folded_offset, slot.state.total) == (1, 7)  # m0 and m1 are re-deliveries now


class AwayStore(MemoryCheckpointStore):
    """A checkpoint store whose database is away for the next `loads` loads and `saves` saves."""

    def __init__(self, loads: int = 0, saves: int = 0) -> None:
        super().__init__()
        self.away_loads, self.away_saves = loads, saves

    async def load(self, topic: str, key: str) -> Any:
        if self.away_loads > 0:
            self.away_loads -= 1
            raise ConnectionError("database down")
        return await super().load(topic, key)

    async def save(self, checkpoints: Any) -> None:
        if self.away_saves > 0:
            self.away_saves -= 1
            raise ConnectionError("database down")
        await super().save(checkpoints)


async def test_a_checkpoint_the_database_refuses_acknowledges_nothing_and_is_stored_at_the_next_interval() -> None:
    now = [10.0]
    store = AwayStore(saves=1)
    acked: list[str] = []

    async def ack(message: str) -> None:
        acked.append(message)

    streams: CheckpointedStreams[Tally] = CheckpointedStreams(store, "in", lambda key: Tally(), 5.0, lambda: now[0])
    streams.ack = ack
    slot = await streams.slot("k", TP(0))
    slot.state.total += 3
    streams.folded("k", slot, 0, "m0")
    now[0] = 15.0
    await streams.checkpoint_if_due()  # raised before: on the candle timer that stopped the worker
    assert acked == [] and store.saved == {} and streams.failed_saves == 1
    assert streams.dirty == {"k"} and not streams.due()  # tried again one interval later, not at every input
    slot.state.total += 4
    streams.folded("k", slot, 1, "m1")
    now[0] = 20.0
    await streams.checkpoint_if_due()
    assert acked == ["m0", "m1"] and not streams.dirty
    assert (store.saved[("in", "k")].offset, store.saved[("in", "k")].state) == (1, {"total": 7})


async def test_a_stream_seen_first_while_the_database_is_away_waits_for_its_checkpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrying, "RETRY_FIRST_S", 0.001)
    store = AwayStore(loads=3)
    await store.save([Checkpoint("in", "k", 0, 41, {"total": 9})])
    streams: CheckpointedStreams[Tally] = CheckpointedStreams(store, "in", lambda key: Tally(), 5.0)
    slot = await streams.slot("k", TP(0))
    assert (slot.folded_offset, slot.state.total, store.away_loads) == (41, 9, 0)  # not a fresh state


class RecordingSink:
    """A database sink whose insert number `fail_on` fails `failures` times before it is taken."""

    def __init__(self, log: list[str], fail_on: int | None = None, failures: int = 0) -> None:
        self.log, self.fail_on, self.failures, self.inserted = log, fail_on, failures, 0

    async def insert(self, table: str, data: pa.Table) -> int:
        if self.inserted == self.fail_on and self.failures > 0:
            self.failures -= 1
            self.note_failure(table)  # as ClickHouseSink.insert counts it
            raise ConnectionError("database down")
        self.inserted += 1
        self.log.append(f"insert {table} {data.num_rows} {data.column(0).to_pylist()}")
        return data.num_rows

    def note_failure(self, table: str) -> None:
        self.log.append(f"failed {table}")


def quality(symbol: str) -> bytes:
    return QualityEvent(venue="binance", symbol=symbol, kind=QualityKind.BOOK_GAP, event_ts_ns=1, recv_ts_ns=2,
                        detail={}).model_dump_json().encode()


def symbols_table(events: Sequence[QualityEvent]) -> pa.Table:
    return pa.table({"symbol": [e.symbol for e in events]})


async def test_a_table_sink_inserts_each_batchs_rows_and_tries_a_failed_insert_again_until_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # when a batch is acknowledged (after its write, never when it fails): tests/agents/test_batch_take.py
    monkeypatch.setattr(retrying, "RETRY_FIRST_S", 0.001)
    log: list[str] = []
    sink = TableSink(RecordingSink(log), model_rows(quality_codec.CODEC, "q", symbols_table))
    await sink.write([quality("BTC-USDT"), b"{oops"])
    await sink.write([quality("ETH-USDT")])
    assert log == ["insert q 1 ['BTC-USDT']", "insert q 1 ['ETH-USDT']"]

    log.clear()
    down = TableSink(RecordingSink(log, fail_on=0, failures=3), model_rows(quality_codec.CODEC, "q", symbols_table))
    await down.write([quality("BTC-USDT")])
    assert log == ["failed q", "failed q", "failed q", "insert q 1 ['BTC-USDT']"]


def test_model_rows_keep_only_valid_events() -> None:
    rows = model_rows(quality_codec.CODEC, "q", symbols_table)([b"[]", quality("BTC-USDT"), b"", b'{"venue": 1}'])
    assert [(name, table.column("symbol").to_pylist()) for name, table in rows] == [("q", ["BTC-USDT"])]


async def test_topic_emitter_keys_by_stream_and_waits_for_the_broker_only_when_asked() -> None:
    class Topic:
        def __init__(self) -> None:
            self.sent: list[tuple[bytes, bytes]] = []
            self.delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
            self.sent.append((key, value))
            return self.delivered

    event = QualityEvent(venue="binance", symbol="BTC-USDT", kind=QualityKind.BOOK_GAP, event_ts_ns=1, recv_ts_ns=2,
                         detail={})
    topic = Topic()
    await topic_emitter(topic, wait=False)(event)  # returns although the broker has not answered
    waiting = asyncio.ensure_future(topic_emitter(topic)(event))
    await asyncio.sleep(0)
    assert not waiting.done()
    topic.delivered.set_result(None)
    await waiting
    assert [k for k, _ in topic.sent] == [b"binance:BTC-USDT"] * 2
    assert QualityEvent.model_validate_json(topic.sent[0][1]) == event
    await topic_emitter(topic, key=lambda e: "fixed")(event)
    assert topic.sent[-1][0] == b"fixed"


async def test_outputs_go_out_without_waiting_and_a_checkpoint_waits_for_every_acknowledgement() -> None:
    """An input covered by a stored checkpoint is skipped at a restart, so the broker must hold
    what it produced first: `deliver` does not wait, `checkpoint` waits for all of them, and a
    failed send stores nothing and acknowledges nothing."""

    class Topic:
        def __init__(self) -> None:
            self.sent: list[bytes] = []
            self.acks: list[asyncio.Future[None]] = []

        async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
            self.sent.append(key)
            self.acks.append(asyncio.get_running_loop().create_future())
            return self.acks[-1]

    event = QualityEvent(venue="binance", symbol="BTC-USDT", kind=QualityKind.BOOK_GAP, event_ts_ns=1, recv_ts_ns=2,
                         detail={})
    topics = {"a": Topic(), "b": Topic()}
    emit = routed({name: topic_emitter(t) for name, t in topics.items()}, lambda e: "b" if e.symbol == "X-Y" else "a")
    store = MemoryCheckpointStore()
    acked: list[str] = []

    async def ack(message: str) -> None:
        acked.append(message)

    streams: CheckpointedStreams[Tally] = CheckpointedStreams(store, "in", lambda key: Tally(), 0.0)
    streams.ack = ack
    slot = await streams.slot("k", TP(0))
    for offset in range(3):  # three inputs, four outputs: none waits for the broker
        await streams.deliver(emit, event)
        streams.folded("k", slot, offset, f"m{offset}")
    await streams.deliver(emit, event.model_copy(update={"symbol": "X-Y"}))
    assert (len(topics["a"].sent), len(topics["b"].sent)) == (3, 1)

    checkpoint = asyncio.ensure_future(streams.checkpoint())
    for ack_future in topics["a"].acks:
        ack_future.set_result(None)
        await asyncio.sleep(0)
        assert not checkpoint.done() and store.saved == {} and acked == []  # "b" still in flight
    topics["b"].acks[0].set_result(None)
    await checkpoint
    assert store.saved[("in", "k")].offset == 2 and acked == ["m0", "m1", "m2"] and streams.pending == []

    await streams.deliver(emit, event)
    streams.folded("k", slot, 3, "m3")
    topics["a"].acks[-1].set_exception(ConnectionError("broker gone"))
    with pytest.raises(ConnectionError):
        await streams.checkpoint()
    assert store.saved[("in", "k")].offset == 2 and acked == ["m0", "m1", "m2"]  # m3 stays unacknowledged


async def test_an_emitter_that_is_not_a_topic_s_is_awaited_at_once() -> None:
    seen: list[str] = []

    async def plain(event: str) -> None:
        seen.append(event)

    streams: CheckpointedStreams[Tally] = CheckpointedStreams(MemoryCheckpointStore(), "in", lambda key: Tally(), 0.0)
    await streams.deliver(plain, "e")
    assert seen == ["e"] and streams.pending == []


async def test_get_or_load_loads_once_per_sight_and_again_after_a_revoke() -> None:
    loads: list[str] = []

    async def load() -> int:
        loads.append("load")
        return len(loads) * 10

    keyed: KeyedState[str, int] = KeyedState()
    assert await keyed.get_or_load("k", "tp0", load) == (10, True)
    assert await keyed.get_or_load("k", "tp0", load) == (10, False)  # no second load
    keyed.forget({"tp0"})
    assert await keyed.get_or_load("k", "tp1", load) == (20, True)  # back on another partition: loaded again
    assert loads == ["load", "load"] and keyed.partitions["k"] == "tp1"


async def test_offload_runs_calls_one_at_a_time_in_order_on_one_thread_off_the_loop() -> None:
    offload = Offload("test-offload")
    seen: list[tuple[int, str]] = []
    running = [0]

    def work(i: int) -> int:
        running[0] += 1
        assert running[0] == 1  # never two at once
        seen.append((i, threading.current_thread().name))
        running[0] -= 1
        return i * i

    try:
        results = await asyncio.gather(*(offload.run(work, i) for i in range(20)))
    finally:
        offload.close()
    assert results == [i * i for i in range(20)]
    assert [i for i, _ in seen] == list(range(20))  # in call order
    names = {name for _, name in seen}
    assert len(names) == 1 and names != {threading.current_thread().name}  # one thread, not the loop's
    inline = Offload("inline", inline=True)
    assert await inline.run(lambda: threading.current_thread().name) == threading.current_thread().name
