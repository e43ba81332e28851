"""A restarted worker starts each book invalid and resyncs from the next snapshot in the stream
(README, "Order books"), with the real broker and worker processes.

The stream is made here (Binance spot rules: a snapshot, then diffs whose `U` continues the
previous `u`), one message per update, published to the raw book topic:
1. snapshot at id 1000 and diffs 1001..1010: the first worker publishes tops up to 1010;
2. once the worker's group has committed everything it read (so a restart re-delivers nothing
   from before the kill), it is killed with SIGKILL and a new worker started;
3. diffs 1011..1020, which continue the old book exactly: a worker that kept (or restored) its
   book would publish a top from each; the restarted one must buffer them and publish nothing,
   checked once its group has committed them (it has read them);
4. a snapshot at id 1015 (taken by the venue after some of those diffs, as Binance's REST
   snapshot is) and diffs 1021, 1022: the book loads the snapshot, replays the buffered diffs
   it does not cover (1016..1020), and publishes again.
Oracle: the tops on md.book.top.v1, read back with a plain consumer, against a dict fold of the
same updates made here. The first top after the restart is at id 1020, from the snapshot plus
the buffered diffs, equal to the fold; no top between; and no quality event on the stream: a
restart is not a gap (nothing was lost on the topic), so neither `book_gap` nor `book_resync`
is reported, the book just waits for its snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.config.settings import Settings
from schemas import topics
from schemas.codecs import book_top, quality
from schemas.codecs.book import decode_book_batch, encode_book_batch
from schemas.events import BookDelta, BookSnapshot
from schemas.symbols import stream_key
from streams.ingest.publisher import KafkaPublisher
from tests.integration.conftest import Infra, start_worker
from tests.integration.pipeline import prepare, wait_for
from tests.integration.topic_read import read_all

pytestmark = pytest.mark.integration

VENUE, SYMBOL = "binance", "RST-USDT"  # spot sequencing rules; a symbol of its own
T0 = 1_723_161_600 * 10**9
SECOND = 10**9


def snapshot(update_id: int, book: dict[str, dict[Decimal, Decimal]]) -> BookSnapshot:
    t = T0 + (update_id - 1000) * SECOND
    return BookSnapshot(venue=VENUE, symbol=SYMBOL, event_ts_ns=t, recv_ts_ns=t, last_update_id=update_id,
                        bids=tuple(sorted(book["bids"].items(), reverse=True)),
                        asks=tuple(sorted(book["asks"].items())))


def diff(update_id: int) -> BookDelta:
    """Each diff moves the best bid's size and adds a level on the ask side."""
    t = T0 + (update_id - 1000) * SECOND
    return BookDelta(venue=VENUE, symbol=SYMBOL, event_ts_ns=t, recv_ts_ns=t, first_update_id=update_id,
                     last_update_id=update_id,
                     bids=((Decimal("100"), Decimal(update_id - 999)),),
                     asks=((Decimal("101") + Decimal(update_id - 1000) / 100, Decimal("0.5")),))


class Fold:
    """The book as a plain dict, updated by absolute sizes (zero deletes)."""

    def __init__(self) -> None:
        self.book: dict[str, dict[Decimal, Decimal]] = {
            "bids": {Decimal("100"): Decimal("1"), Decimal("99"): Decimal("2")},
            "asks": {Decimal("101"): Decimal("1"), Decimal("102"): Decimal("2")},
        }

    def apply(self, d: BookDelta) -> None:
        for side, levels in (("bids", d.bids), ("asks", d.asks)):
            for price, size in levels:
                if size == 0:
                    self.book[side].pop(price, None)
                else:
                    self.book[side][price] = size

    def copy(self) -> dict[str, dict[Decimal, Decimal]]:
        return {side: dict(levels) for side, levels in self.book.items()}

    def top(self) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        return sorted(self.book["bids"].items(), reverse=True), sorted(self.book["asks"].items())


def publish(settings: Settings, updates: list[BookDelta | BookSnapshot]) -> None:
    topic = topics.BOOK.full_name(settings.topic_namespace)
    with KafkaPublisher(settings.kafka_bootstrap) as publisher:
        for update in updates:  # one message each, in order, on the stream's partition
            publisher.publish(topic, stream_key(VENUE, SYMBOL).encode(), encode_book_batch(VENUE, SYMBOL, [update]))


def records(settings: Settings, spec: topics.TopicSpec) -> list[tuple[int, int, bytes]]:
    return read_all(settings.kafka_bootstrap, spec.full_name(settings.topic_namespace))


def tops(settings: Settings, after: dict[int, int] | None = None) -> list[BookSnapshot]:
    """The stream's tops, those past `after` (partition -> last offset seen) when given."""
    after = after or {}
    return [s for p, o, v in records(settings, topics.BOOK_TOP) if o > after.get(p, -1)
            for s in [book_top.decode(v)] if s.symbol == SYMBOL]


def last_offsets(settings: Settings, spec: topics.TopicSpec) -> dict[int, int]:
    out: dict[int, int] = {}
    for p, o, _ in records(settings, spec):
        out[p] = max(o, out.get(p, -1))
    return out


def committed_everything(settings: Settings) -> bool:
    """The worker's consumer group has committed every message of the raw book topic: all of
    it processed (the book agent acknowledges what it has handled). The ends are the records'
    own offsets, not the broker's reported end (see tests/integration/topic_read.py)."""
    ends = {p: o + 1 for p, o in last_offsets(settings, topics.BOOK).items()}

    async def check() -> bool:
        topic = topics.BOOK.full_name(settings.topic_namespace)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.worker.id,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            for partition, end in ends.items():
                if (await consumer.committed(TopicPartition(topic, partition)) or 0) < end:
                    return False
            return bool(ends)
        finally:
            await consumer.stop()

    return asyncio.run(check())


def test_the_whole_topic_is_read_back_when_the_broker_underreports_its_end(infra: Infra) -> None:
    """The oracle's reader: 11 updates produced in one batch are 11 records (the embedded broker
    reports the partition's end as 1 then)."""
    settings = infra.settings()
    prepare(settings)
    publish(settings, [snapshot(1000, Fold().copy()), *(diff(i) for i in range(1001, 1011))])
    got = records(settings, topics.BOOK)
    assert [o for _, o, _ in got] == list(range(11))
    assert [u.last_update_id for _, _, v in got for u in decode_book_batch(v)[2]] == list(range(1000, 1011))


def test_the_product_reader_keeps_the_whole_last_batch(infra: Infra) -> None:
    """streams/runtime/topic_reader.py (the portfolio rebuild's reader) on the same 11 records in
    one batch: all 11, and the end it reports is past the last of them."""
    from streams.runtime.topic_reader import read_topic_records

    settings = infra.settings()
    prepare(settings)
    publish(settings, [snapshot(1000, Fold().copy()), *(diff(i) for i in range(1001, 1011))])
    history = asyncio.run(read_topic_records(settings.kafka_bootstrap, topics.BOOK.full_name(settings.topic_namespace)))
    assert [r.offset for r in history.records] == list(range(11))
    assert [u.last_update_id for r in history.records for u in decode_book_batch(r.value)[2]] == list(range(1000, 1011))
    assert history.end[history.records[0].partition] == 11


def test_a_restarted_worker_starts_its_book_invalid_and_resyncs_from_the_next_snapshot(infra: Infra,
                                                                                     tmp_path: Path) -> None:
    settings = infra.settings()
    prepare(settings)
    fold = Fold()
    first_snapshot = snapshot(1000, fold.copy())
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        # 1. a valid book, published up to 1010
        phase_one = [diff(i) for i in range(1001, 1011)]
        publish(settings, [first_snapshot, *phase_one])
        for d in phase_one:
            fold.apply(d)
        wait_for(lambda: any(t.last_update_id == 1010 for t in tops(settings)), 240,
                 f"the first worker's top at 1010 (log: {tmp_path / 'worker.log'})")
        before = tops(settings)
        assert {t.last_update_id for t in before} <= set(range(1000, 1011))
        assert (list(before[-1].bids), list(before[-1].asks)) == fold.top()

        # 2. nothing left to re-deliver, then a crash and a new process
        wait_for(lambda: committed_everything(settings), 240, "the first worker's committed offsets", 0.5)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        after_kill = last_offsets(settings, topics.BOOK_TOP)
        worker = start_worker(settings, tmp_path / "worker2.log")

        # 3. diffs that continue the old book: buffered, never published from
        phase_three = [diff(i) for i in range(1011, 1021)]
        at_1015 = None
        for d in phase_three:
            fold.apply(d)
            if d.last_update_id == 1015:
                at_1015 = fold.copy()
        assert at_1015 is not None
        publish(settings, list(phase_three))
        wait_for(lambda: committed_everything(settings), 240,
                 f"the restarted worker reading the diffs (log: {tmp_path / 'worker2.log'})", 0.5)
        assert tops(settings, after_kill) == [], "a top was published from diffs without a snapshot"

        # 4. the next snapshot (older than the buffered diffs' end) and two more diffs
        resync = snapshot(1015, at_1015)
        publish(settings, [resync, diff(1021), diff(1022)])
        want_at_1020 = fold.top()
        for i in (1021, 1022):
            fold.apply(diff(i))
        try:
            wait_for(lambda: any(t.last_update_id == 1022 for t in tops(settings, after_kill)), 240,
                     f"the restarted worker's top at 1022 (log: {tmp_path / 'worker2.log'})")
        except AssertionError as exc:
            seen = [t.last_update_id for t in tops(settings)]
            kinds = [quality.decode(v).kind for _, _, v in records(settings, topics.QUALITY)]
            raise AssertionError(f"{exc}; tops seen: {seen}, quality events: {kinds}") from None
        after = tops(settings, after_kill)
        first = after[0]
        assert first.last_update_id == 1020  # the snapshot's 1015 plus the buffered 1016..1020
        assert (list(first.bids), list(first.asks)) == want_at_1020
        assert [t.last_update_id for t in after] == sorted({t.last_update_id for t in after})
        assert set(t.last_update_id for t in after) <= {1020, 1021, 1022}
        assert (list(after[-1].bids), list(after[-1].asks)) == fold.top()

        # a restart loses nothing on the topic: no gap and no resync is reported for it
        events = [e for _, _, v in records(settings, topics.QUALITY) for e in [quality.decode(v)] if e.symbol == SYMBOL]
        assert events == []
    finally:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=30)
