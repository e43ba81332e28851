"""Book agent: raw book messages (`md.book.v1`) -> top-N snapshots on `md.book.top.v1`, quality
events (`book_gap`, `book_resync`) and periodic snapshots stored in ClickHouse. The decisions
and publication rules: `streams.core.book_processor` (`BookProcessor`, one `BookStream` per
(venue, symbol)).

Restart safety: messages are acknowledged as soon as they are processed, because a book is
rebuilt from a snapshot, never from history. A restarted worker (or one given a partition by a
rebalance) starts every book invalid and buffers diffs until the next snapshot on the topic (the
connector writes one when it (re)connects; recorded captures hold one at their start). Books of
revoked partitions are dropped at once, so a partition that comes back starts clean instead of
reporting a spurious gap.

Malformed messages (undecodable, items of another stream than the message names, a venue with
no sequencing rules) go to the dead-letter emitter with their raw bytes and the worker goes on;
so does a message that made the book logic raise (that book is dropped and resyncs from the
next snapshot). A failed snapshot store is logged and counted, never fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.events import BookSnapshot, DeadLetter, QualityEvent
from streams.core.book_processor import BookActions, BookAgentConfig, BookProcessor, BookStream
from streams.runtime.emit import Emitter, topic_emitter
from streams.runtime.keyed import KeyedState, forget_on_revoke
from streams.sinks.clickhouse import ClickHouseSink, book_snapshots_table

__all__ = ["BookAgentConfig", "BookAgentState", "BookWiring", "clickhouse_snapshot_store", "register_book_agents"]

log = logging.getLogger(__name__)

# (snapshots, depth they were cut at) -> stored
SnapshotStore = Callable[[Sequence[BookSnapshot], int], Awaitable[None]]
Clock = Callable[[], float]


class BookAgentState(BookProcessor):
    """The processor over the worker's partition-aware table of books, and its wall clock."""

    def __init__(self, config: BookAgentConfig | None = None, clock: Clock = time.monotonic,
                 source: str = "md.book") -> None:
        super().__init__(config or BookAgentConfig(), KeyedState[str, BookStream](), source)
        self.clock = clock


@dataclass
class BookWiring:
    """The agents, the state (counters, for metrics and tests) and `tick`, the idle-timer body."""

    agents: dict[str, Any]
    state: BookAgentState
    tick: Callable[[], Awaitable[None]]


def register_book_agents(app: Any, settings: Any, *, book_topic: Any, book_top_topic: Any,
                         emit_quality: Emitter[QualityEvent], emit_dead_letter: Emitter[DeadLetter],
                         store_snapshots: SnapshotStore, emit_top: Emitter[BookSnapshot] | None = None,
                         clock: Clock = time.monotonic) -> BookWiring:
    """Wire the book agent, its idle timer and its rebalance hook on `app`. `emit_top` replaces
    publishing to `book_top_topic` (tests)."""
    state = BookAgentState(BookAgentConfig.from_settings(settings), clock, book_topic.get_topic_name())
    # a top lost in a crash is superseded by the next one: no need to wait for the broker
    publish_top = emit_top or topic_emitter(book_top_topic, wait=False)

    async def deliver(actions: BookActions, store_at_least: int) -> None:
        for letter in actions.dead_letters:
            await emit_dead_letter(letter)
        for event in actions.quality:
            await emit_quality(event)
        for snap in actions.tops:
            await publish_top(snap)
        batch = state.take_stored(store_at_least)
        try:
            if batch:
                await store_snapshots(batch, state.config.snapshot_depth)
                state.snapshots_stored += len(batch)
        except Exception:  # the stored history is a projection: losing a batch must not stop the books
            state.store_errors += 1
            log.exception("storing %d book snapshots failed; they are dropped", len(batch))

    async def book(stream: Any) -> None:
        async for event in stream.events():  # acknowledged as processed: books rebuild from snapshots
            await deliver(state.on_message(event.value, event.message.tp, state.clock()), state.config.store_batch)

    async def tick() -> None:
        await deliver(state.flush_idle(state.clock()), 1)

    agent = app.agent(book_topic, name="book")(book)
    app.timer(state.config.idle_flush_ms / 1000, name="book_idle_flush")(tick)
    forget_on_revoke(app, state)
    return BookWiring({"book": agent}, state, tick)


def clickhouse_snapshot_store(sink: ClickHouseSink) -> SnapshotStore:
    """`store_snapshots` writing into the `book_snapshots` table through the worker's sink."""

    async def store(snapshots: Sequence[BookSnapshot], depth: int) -> None:
        await sink.insert("book_snapshots", book_snapshots_table(snapshots, depth))

    return store
