"""The API's read model starts from the portfolio agent's snapshots (issue 18, finding 8: "replayed
at every API start"): `KafkaPortfolioBus` restores every account from its snapshot, reads each
partition after its mark, and ends with exactly the fold of every event from scratch (the oracle);
snapshots that do not continue the topic are dropped and the topic replayed whole.

The broker is replaced by an in-memory consumer with Kafka's positions and seeks."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from decimal import Decimal as D
from typing import Any

import pytest
from aiokafka import TopicPartition

from api.portfolio_repository import KafkaPortfolioBus
from api.portfolio_service import BusUnavailable
from schemas.portfolio import SetBalance
from streams.core.portfolio_snapshot import SnapshotLedger, SnapshotRow
from streams.runtime.topic_reader import TopicRecord
from tests.unit.test_portfolio_event_signing import forged_balance, forgeries, signed_record
from tests.unit.test_portfolio_snapshot import PARTITIONS, Script, Store, Topic, assert_same, oracle, run

TOPIC = "pf.events.v1"
EVERY = 7


SIGNING_KEY = b"k" * 32
Record = TopicRecord  # what the agent published: value, key (the account) and headers (its signature)


def signed(partition: int, offset: int, value: bytes) -> Record:
    return signed_record(SIGNING_KEY, partition, offset, value)


class Consumer:
    """aiokafka's consumer as the bus uses it, over a `Topic`."""

    def __init__(self, topic: Topic, forged: dict[tuple[int, int], Record] | None = None) -> None:
        self.topic = topic
        self.forged = forged or {}  # (partition, offset) -> a record another producer wrote there
        self.at: dict[int, int] = {}
        self.read = 0

    async def position(self, tp: TopicPartition) -> int:
        return self.at[tp.partition]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at[tp.partition] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.at[tp.partition] = 0

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.topic.partitions[tp.partition]) for tp in tps}

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
        out = {}
        for tp in tps:
            values = self.topic.partitions[tp.partition]
            first = self.at[tp.partition]
            batch = [self.forged.get((tp.partition, o)) or signed(tp.partition, o, values[o])
                     for o in range(first, min(len(values), first + 5))]
            if batch:
                out[tp] = batch
                self.at[tp.partition] = first + len(batch)
                self.read += len(batch)
        if not out:
            await asyncio.sleep(0.001)
        return out


async def read_model(topic: Topic, rows: list[SnapshotRow] | None,
                     forged: dict[tuple[int, int], Record] | None = None) -> tuple[KafkaPortfolioBus, Consumer]:
    async def load(name: str) -> list[SnapshotRow]:
        assert name == TOPIC
        return list(rows or [])

    bus = KafkaPortfolioBus("127.0.0.1:1", signing_key=SIGNING_KEY, snapshots=None if rows is None else load)
    consumer = Consumer(topic, forged)
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    await consumer.seek_to_beginning(*tps)
    end = await consumer.end_offsets(tps)
    await bus._restore(consumer, tps, end)  # type: ignore[arg-type]  # what start() does after connecting
    bus._consumer, bus._producer = consumer, object()  # type: ignore[assignment]
    task = asyncio.create_task(bus._run(tps, end))
    try:
        for _ in range(10_000):  # caught up: ready, and every partition read to its end
            if bus._ready.is_set() and all(consumer.at[p] >= len(v) for p, v in enumerate(topic.partitions)):
                break
            await asyncio.sleep(0.001)
        else:
            raise AssertionError("the read model never caught up")
    finally:
        task.cancel()
    return bus, consumer


def history(length: int) -> tuple[Topic, Store]:
    script = Script()
    names = ["alice", "bob", "carol", "dave", "erin", "frank"]
    commands: list[Any] = [script.command(i % 4, names[i % len(names)], 1 + i % 11, 100 + i % 700, i % 4 or None)
                           for i in range(length)]
    topic, store = Topic(), Store()
    run(SnapshotLedger(EVERY), topic, store, commands)
    return topic, store


async def test_the_api_starts_from_the_snapshots_and_reads_a_bounded_tail() -> None:
    topic, store = history(400)
    total = sum(len(v) for v in topic.partitions)
    bus, consumer = await read_model(topic, list(store.rows.values()))
    assert_same(await bus.ledger(), oracle(topic))
    assert bus.restored_accounts > 0
    assert consumer.read == bus.replayed <= PARTITIONS * (EVERY - 1) < total
    # without snapshots: the whole topic
    full, consumer = await read_model(topic, None)
    assert_same(await full.ledger(), oracle(topic))
    assert consumer.read == full.replayed == total


async def test_snapshots_of_another_history_make_the_api_replay_the_topic_whole() -> None:
    old_topic, store = history(300)
    topic, _ = history(20)  # a broker that restarted: shorter, other events
    bus, _ = await read_model(topic, list(store.rows.values()))
    assert_same(await bus.ledger(), oracle(topic))
    # the same history, longer than the snapshots' marks but not their continuation
    longer = Topic()
    book = SnapshotLedger(EVERY)
    run(book, longer, Store(), [SetBalance(account="alice", command_id=f"s{i}", balance=D(i + 1),
                                           issued_ts_ns=10**9 * (i + 1)) for i in range(400)])
    bus, _ = await read_model(longer, list(store.rows.values()))
    assert_same(await bus.ledger(), oracle(longer))
    assert old_topic.end() != longer.end()


async def test_the_api_folds_no_forged_event_and_a_signed_one() -> None:
    """Issue 18: any local producer can write pf.events.v1; the read model folds only what the
    agent signed (a balance of 1e9 for alice, right shape and seq, in each forged form)."""
    topic, store = history(60)
    expected = oracle(topic)
    alice = expected.accounts["alice"]
    p = zlib.crc32(b"alice") % PARTITIONS  # alice's partition (as `Topic.publish` places her)
    forged_raw = forged_balance("alice", alice.seq + 1)
    forged: dict[tuple[int, int], Record] = {}
    for key, headers in forgeries(forged_raw, b"alice", SIGNING_KEY):
        offset = len(topic.partitions[p])
        topic.partitions[p].append(forged_raw)
        forged[(p, offset)] = Record(p, offset, forged_raw, key, headers)
    for rows in (None, list(store.rows.values())):  # a whole replay, and one from the snapshots
        bus, _ = await read_model(topic, rows, forged)
        assert_same(await bus.ledger(), expected)
        assert bus.forged == len(forged)
        assert (await bus.ledger()).accounts["alice"].cash == alice.cash != D("1e9")
    # the same event signed by the agent is folded
    topic.partitions[p].append(forged_balance("alice", alice.seq + 1))
    bus, _ = await read_model(topic, None, forged)
    assert (await bus.ledger()).accounts["alice"].cash == D("1e9") and bus.forged == len(forged)


async def test_a_failed_events_reader_stops_answering_then_reads_the_topic_again() -> None:
    """Issue 18, finding 13: the reader task died silently and left the API answering from a ledger
    no longer read. Now a failure makes requests retryable 503s until the topic is read again."""
    topic, _ = history(60)

    class Failing(Consumer):
        fail = asyncio.Event()  # set: the next getmany raises (once)

        async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
            if self.fail.is_set():
                self.fail.clear()
                raise RuntimeError("the fetch blew up")
            return await super().getmany(*tps, timeout_ms=timeout_ms)

    bus = KafkaPortfolioBus("127.0.0.1:1", signing_key=SIGNING_KEY, catch_up_timeout_s=0.05)
    bus._reader_retry_s = 0.5
    consumer = Failing(topic)
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    await consumer.seek_to_beginning(*tps)
    end = await consumer.end_offsets(tps)
    bus._consumer, bus._producer = consumer, object()  # type: ignore[assignment]
    task = asyncio.create_task(bus._supervise(tps, end))
    try:
        await asyncio.wait_for(bus._ready.wait(), 30)
        assert_same(await bus.ledger(), oracle(topic))
        consumer.fail.set()
        for _ in range(3000):
            if bus.reader_restarts or task.done():
                break
            await asyncio.sleep(0.01)
        assert not task.done(), "the events reader died with its fetch"
        # the supervisor waits 0.5 s before reading again; the request's 0.05 s wait runs out first
        with pytest.raises(BusUnavailable):
            await bus.ledger()
        await asyncio.wait_for(bus._ready.wait(), 30)
        assert_same(await bus.ledger(), oracle(topic))  # read again: the same fold
        assert bus.reader_restarts == 1 and not task.done()
    finally:
        task.cancel()
