"""Where the portfolio agent's state comes from and goes (event sourcing): the snapshot store
(streams/core/portfolio_snapshot.py; ClickHouse `portfolio_snapshots` in a served worker) and
the events topic, read from each partition's mark; the snapshot rounds stored; and the events
published with where they landed. The judgement of what is read: `streams.core.portfolio_processor`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from infra.config.kafka import aiokafka_options
from schemas.portfolio import PortfolioEvent
from schemas.wire import encode_event
from streams.core.portfolio import event_headers
from streams.core.portfolio_processor import Command, PortfolioProcessor
from streams.core.portfolio_snapshot import EventPosition, SnapshotLedger, SnapshotRow
from streams.runtime.topic_reader import TopicHistory, read_topic_records

log = logging.getLogger(__name__)

# The events topic from `start` (partition -> first offset; others from the beginning) to its end.
HistoryLoader = Callable[[Mapping[int, int]], Awaitable[TopicHistory]]
# Publishes an event and says where it landed (None: not known, e.g. a test's emitter; the agent
# then stores no snapshot, since it cannot say what one covers).
EventEmitter = Callable[[PortfolioEvent], Awaitable[EventPosition | None]]


class SnapshotStore(Protocol):
    async def load(self, topic: str) -> list[SnapshotRow]: ...

    async def save(self, topic: str, rows: Sequence[SnapshotRow]) -> None: ...


@dataclass(frozen=True)
class EventSourced:
    """The portfolio's state kept from the events topic `topic`: read through `history` (None:
    start empty; tests), from the snapshots of `snapshots` (None: none kept, every rebuild folds
    the whole topic)."""

    topic: str = ""
    history: HistoryLoader | None = None
    snapshots: SnapshotStore | None = None

    async def book(self, processor: PortfolioProcessor) -> SnapshotLedger:
        """The current state, rebuilt first when there is none (after a start or a rebalance)."""
        if processor.book is None:
            processor.book = await rebuild(processor, self.history, self.snapshots, self.topic)
            processor.rebuilds += 1
        return processor.book

    async def handle(self, processor: PortfolioProcessor, command: Command,
                     emit: EventEmitter) -> list[PortfolioEvent]:
        """`command` decided on the current state: each event published (the broker has it), then
        folded where it landed; then the snapshot rounds that are due."""
        book = await self.book(processor)
        events = processor.decide(book, command)
        for event in events:
            book.fold(event, await emit(event))
            processor.published += 1
        await store_due_snapshots(processor, book, self.snapshots, self.topic)
        return events


async def rebuild(processor: PortfolioProcessor, history: HistoryLoader | None, snapshots: SnapshotStore | None,
                  topic: str) -> SnapshotLedger:
    """The state from the latest snapshots and the events after them; from the whole topic
    without a store, or when the snapshots do not continue the topic."""
    rows: list[SnapshotRow] = []
    if snapshots is not None and history is not None:
        try:
            rows = await snapshots.load(topic)
        except Exception as exc:  # the database is down: slower, not wrong
            processor.snapshot_errors += 1
            log.warning("portfolio snapshots not loaded (%r): folding the whole events topic", exc)
    book = await _fold(processor, history, rows)
    if book is None:
        processor.snapshots_discarded += 1
        book = await _fold(processor, history, [])
        assert book is not None  # without rows nothing can mismatch
    return book


async def _fold(processor: PortfolioProcessor, history: HistoryLoader | None,
                rows: list[SnapshotRow]) -> SnapshotLedger | None:
    restored = processor.restore(rows)
    if restored is None:
        return None
    book, start = restored
    if history is None:
        return book
    read = await history(start)
    return processor.replay(book, rows, start, read.records, read.end)


async def store_due_snapshots(processor: PortfolioProcessor, book: SnapshotLedger, snapshots: SnapshotStore | None,
                              topic: str) -> None:
    """One round per partition that is due; a failed save is retried after the next command."""
    if snapshots is None:
        return
    for partition in book.due():
        rows = book.round(partition)
        try:
            await snapshots.save(topic, rows)
        except Exception as exc:
            processor.snapshot_errors += 1
            log.warning("portfolio snapshot of partition %s not stored (%r); retried later", partition, exc)
            return
        book.stored(rows)
        processor.snapshot_rounds += 1


def topic_history(settings: Any, topic: str) -> HistoryLoader:
    """The events topic read from the broker the settings name."""

    async def history(start: Mapping[int, int]) -> TopicHistory:
        return await read_topic_records(settings.kafka_bootstrap, topic, start, **aiokafka_options(settings))

    return history


def positioned_emitter(topic: Any, signing_key: bytes) -> EventEmitter:
    """Publish to the events topic keyed by account and signed with `signing_key` (every reader
    checks it), wait for the broker, and say where it landed."""

    async def emit(event: PortfolioEvent) -> EventPosition | None:
        key, value = str(event.account).encode(), encode_event(event)
        fut = await topic.send(key=key, value=value, headers=event_headers(signing_key, key, value))
        metadata = await fut
        partition, offset = getattr(metadata, "partition", None), getattr(metadata, "offset", None)
        if not isinstance(partition, int) or not isinstance(offset, int) or offset < 0:
            return None
        return EventPosition(partition, offset)

    return emit


def unpositioned(emit: Callable[[PortfolioEvent], Awaitable[Any]]) -> EventEmitter:
    """An emitter that may not say where its events landed (a test's)."""

    async def wrapped(event: PortfolioEvent) -> EventPosition | None:
        result = await emit(event)
        return result if isinstance(result, EventPosition) else None

    return wrapped
