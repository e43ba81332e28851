"""Book agent: raw book messages (`md.book.v1`) -> top-N snapshots on `md.book.top.v1`,
quality events (`book_gap`, `book_resync`) and periodic snapshots stored in ClickHouse.

Per stream (`venue:symbol`) it keeps a `BinanceBookSync` (streams/core/orderbook.py), which
applies Binance's snapshot + diff sequencing rules and refuses to be read while invalid. The
book topic also carries the exchange's own best bid/ask (`book_ticker_batch.v1`): each ticker
is compared with the book at the ticker's update id, a running self-check (`tickers_checked`,
`tickers_mismatched`; a mismatch is logged).

Publication rules (all in event time, so a replay gives the same output as a live run):
- top-N (`top_depth`, default 20, at most 100) is published when the top N levels changed,
  at most once per `min_interval_ms` (default 100, the spot diff cadence) of stream time per
  symbol. A change inside the interval is held and published, with the state as it then is,
  by the first message at or after the interval's end; if the stream goes quiet, the idle
  timer publishes it after `idle_flush_ms` (default 1000) of wall time. The latest change is
  never lost; that trailing publication is the only one that may follow the previous one by
  less than the interval in event time.
  Stream time is the max event time seen on the stream (diffs, snapshots, futures tickers).
- a snapshot of the top `snapshot_depth` (default 100) levels is stored for the first valid
  state in every `snapshot_every_s` (default 10 s) bucket of book event time, buckets aligned
  on the epoch: the same input stores the same rows, which the ReplacingMergeTree keys
  (venue, symbol, event_ts, last_update_id) dedupe on a re-run. Rows are handed to
  `store_snapshots` in batches (`store_batch`, or whatever is pending at each idle-timer
  tick); a failed store is logged and counted, never fatal: the book itself does not
  depend on it.
- nothing is published or stored from an invalid book.

Restart safety: messages are acknowledged as soon as they are processed, because a book is
rebuilt from a snapshot, never from history. A restarted worker (or one given a partition by
a rebalance) starts every book invalid and buffers diffs until the next snapshot on the
topic: the connector writes one when it (re)connects and the recorded captures hold one at
their start; until then no top is published for that symbol. Books of revoked partitions
are dropped at once, so a partition that comes back starts clean instead of reporting a
spurious gap. A worker that restarts while its connector keeps running waits for the
connector's next snapshot; the connector should therefore also write one periodically.

Malformed messages (undecodable, items of another stream than the message names, a venue
with no sequencing rules) go to the dead-letter emitter with their raw bytes and the worker
goes on; so does a message that made the book logic raise (that book is dropped and
resyncs from the next snapshot).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.config.settings import Settings
from schemas.book_ticker import BookTicker
from schemas.events import BookSnapshot, DeadLetter, QualityEvent
from schemas.symbols import stream_key
from schemas.wire import WireError, encode_event
from schemas.wire_book import BookMessageItem, decode_book_message
from streams.core.orderbook import (
    DEFAULT_MAX_BUFFER,
    MAX_TOP_DEPTH,
    BinanceBookSync,
    SnapshotSchedule,
    TickerCheck,
    TopThrottle,
    rules_for_venue,
)
from streams.sinks.clickhouse import ClickHouseSink, book_snapshots_table

log = logging.getLogger(__name__)

TopEmitter = Callable[[BookSnapshot], Awaitable[None]]
QualityEmitter = Callable[[QualityEvent], Awaitable[None]]
DeadLetterEmitter = Callable[[DeadLetter], Awaitable[None]]
# (snapshots, depth they were cut at) -> stored
SnapshotStore = Callable[[Sequence[BookSnapshot], int], Awaitable[None]]
Clock = Callable[[], float]

_MS = 1_000_000
_MAX_LOGGED_MISMATCHES = 10  # per stream: a systematic mismatch must not flood the log


class BookMessageError(ValueError):
    """A decodable book message the agent cannot use (wrong stream, unsupported venue)."""


@dataclass(frozen=True)
class BookAgentConfig:
    top_depth: int = 20
    min_interval_ms: int = 100
    snapshot_every_s: float = 10.0
    snapshot_depth: int = MAX_TOP_DEPTH
    idle_flush_ms: int = 1000
    store_batch: int = 100
    max_buffer: int = DEFAULT_MAX_BUFFER

    def __post_init__(self) -> None:
        for name in ("top_depth", "snapshot_depth"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_TOP_DEPTH:
                raise ValueError(f"{name} must be within 1..{MAX_TOP_DEPTH}, got {value}")
        if self.min_interval_ms < 0:
            raise ValueError(f"min_interval_ms must be non-negative, got {self.min_interval_ms}")
        if not self.snapshot_every_s > 0:
            raise ValueError(f"snapshot_every_s must be positive, got {self.snapshot_every_s}")
        if self.idle_flush_ms <= 0 or self.store_batch < 1 or self.max_buffer < 1:
            raise ValueError("idle_flush_ms, store_batch and max_buffer must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> BookAgentConfig:
        """From the `book` section of the settings (ENTASIS_BOOK_*)."""
        return cls(**settings.book.model_dump())


@dataclass
class BookActions:
    """What one message (or one idle tick) asks the agent to do, in this order."""

    quality: list[QualityEvent] = field(default_factory=list)
    tops: list[BookSnapshot] = field(default_factory=list)


@dataclass
class _Stream:
    sync: BinanceBookSync
    throttle: TopThrottle
    schedule: SnapshotSchedule
    tickers: TickerCheck
    stream_ts_ns: int = 0  # max event time seen on the stream: the throttle's clock
    last_wall: float = 0.0
    partition: Any = None
    mismatches_logged: int = 0


class BookAgentState:
    """Every stream's book and publication state; no I/O (the agent does the awaiting)."""

    def __init__(self, config: BookAgentConfig | None = None, clock: Clock = time.monotonic) -> None:
        self.config = config or BookAgentConfig()
        self.clock = clock
        self.streams: dict[str, _Stream] = {}
        self.to_store: list[BookSnapshot] = []
        self.messages = 0
        self.updates = 0
        self.tickers = 0
        self.dead_letters = 0
        self.errors = 0  # messages that made the book logic raise
        self.tops_published = 0
        self.quality_events = 0
        self.snapshots_stored = 0
        self.store_errors = 0
        self.tickers_checked = 0
        self.tickers_mismatched = 0

    def stream(self, venue: str, symbol: str) -> _Stream:
        key = stream_key(venue, symbol)
        s = self.streams.get(key)
        if s is None:
            rules = rules_for_venue(venue)
            if rules is None:
                raise BookMessageError(f"no order-book sequencing rules for venue {venue!r}")
            c = self.config
            s = self.streams[key] = _Stream(
                BinanceBookSync(venue, symbol, rules, depth=c.top_depth, max_buffer=c.max_buffer),
                TopThrottle(c.min_interval_ms * _MS),
                SnapshotSchedule(int(c.snapshot_every_s * 1e9)),
                TickerCheck(),
            )
        return s

    def handle(self, venue: str, symbol: str, items: Sequence[BookMessageItem], partition: Any = None) -> BookActions:
        """One decoded message of one stream."""
        for item in items:
            if item.venue != venue or item.symbol != symbol:
                raise BookMessageError(
                    f"message of {venue}:{symbol} holds an item of {item.venue}:{item.symbol}"
                )
        s = self.stream(venue, symbol)
        s.partition = partition
        s.last_wall = self.clock()
        out = BookActions()
        if not items:
            return out
        sync = s.sync
        changed = False
        for item in items:
            if item.event_ts_ns > s.stream_ts_ns:
                s.stream_ts_ns = item.event_ts_ns
            if isinstance(item, BookTicker):
                self.tickers += 1
                self._checked(s, item, s.tickers.on_ticker(sync, item))
                continue
            self.updates += 1
            outcome = sync.update(item)
            out.quality.extend(outcome.quality)
            if not outcome.valid:
                s.throttle.drop()  # a change held for an invalid book must not be published
                changed = False
                continue
            changed = changed or outcome.top_changed
            if outcome.applied:
                for ok in s.tickers.on_book(sync):
                    self._checked(s, None, ok)
        self.quality_events += len(out.quality)
        if sync.valid:
            if s.throttle.offer(changed, s.stream_ts_ns):
                self._publish(sync, out)
            if s.schedule.due(sync.event_ts_ns):
                snap = sync.snapshot(self.config.snapshot_depth)
                if snap is not None:
                    self.to_store.append(snap)
        return out

    def _checked(self, s: _Stream, ticker: BookTicker | None, result: bool | None) -> None:
        if result is None:
            return
        self.tickers_checked += 1
        if not result:
            self.tickers_mismatched += 1
            if s.mismatches_logged < _MAX_LOGGED_MISMATCHES:
                s.mismatches_logged += 1
                log.warning("book %s:%s disagrees with the exchange's bookTicker at update id %s: book %s, ticker %s",
                            s.sync.venue, s.sync.symbol, s.sync.last_update_id, s.sync.best(), ticker)

    def _publish(self, sync: BinanceBookSync, out: BookActions) -> None:
        snap = sync.snapshot(self.config.top_depth)
        if snap is not None:
            out.tops.append(snap)
            self.tops_published += 1

    def flush_idle(self) -> BookActions:
        """Held tops of streams quiet for `idle_flush_ms` of wall time (the idle timer)."""
        out = BookActions()
        now = self.clock()
        idle_s = self.config.idle_flush_ms / 1000
        for s in self.streams.values():
            if s.throttle.pending and now - s.last_wall >= idle_s and s.sync.valid and s.throttle.flush(s.stream_ts_ns):
                self._publish(s.sync, out)
        return out

    def take_stored(self, at_least: int = 1) -> list[BookSnapshot]:
        """The snapshots waiting to be stored, once there are `at_least` of them."""
        if len(self.to_store) < max(at_least, 1):
            return []
        batch, self.to_store = self.to_store, []
        return batch

    def forget(self, partitions: Iterable[Any]) -> None:
        """Drop the books of revoked partitions (another worker rebuilds them)."""
        revoked = set(partitions)
        for key in [k for k, s in self.streams.items() if s.partition in revoked]:
            del self.streams[key]

    def drop_stream(self, venue: str, symbol: str) -> None:
        self.streams.pop(stream_key(venue, symbol), None)


def _dead_letter(raw: Any, source: str, error: str, venue: str = "unknown", symbol: str | None = None) -> DeadLetter:
    data = raw if isinstance(raw, bytes) else repr(raw).encode()
    return DeadLetter(venue=venue, symbol=symbol, source=source, error=error[:1000], raw_hex=data.hex(),
                      recv_ts_ns=time.time_ns())


async def _deliver(actions: BookActions, emit_top: TopEmitter, emit_quality: QualityEmitter) -> None:
    for event in actions.quality:
        await emit_quality(event)
    for snap in actions.tops:
        await emit_top(snap)


async def _store(state: BookAgentState, store: SnapshotStore, at_least: int) -> None:
    batch = state.take_stored(at_least)
    if not batch:
        return
    try:
        await store(batch, state.config.snapshot_depth)
        state.snapshots_stored += len(batch)
    except Exception:  # the stored history is a projection: losing a batch must not stop the books
        state.store_errors += 1
        log.exception("storing %d book snapshots failed; they are dropped", len(batch))


def make_book_agent(
    state: BookAgentState,
    emit_top: TopEmitter,
    emit_quality: QualityEmitter,
    emit_dead_letter: DeadLetterEmitter,
    store_snapshots: SnapshotStore,
    source: str,
) -> Callable[[Any], Awaitable[None]]:
    async def book(stream: Any) -> None:
        # Acknowledged as processed (default acks): a book is rebuilt from a snapshot, not history.
        async for event in stream.events():
            state.messages += 1
            raw = event.value
            try:
                venue, symbol, items = decode_book_message(raw)
            except WireError as exc:
                state.dead_letters += 1
                await emit_dead_letter(_dead_letter(raw, source, str(exc)))
                continue
            try:
                actions = state.handle(venue, symbol, items, event.message.tp)
            except BookMessageError as exc:
                state.dead_letters += 1
                await emit_dead_letter(_dead_letter(raw, source, str(exc), str(venue), None))
                continue
            except Exception as exc:  # a bug must cost one book a resync, not the worker
                log.exception("book logic failed on a message of %s:%s; the book resyncs", venue, symbol)
                state.errors += 1
                state.dead_letters += 1
                state.drop_stream(venue, symbol)
                await emit_dead_letter(_dead_letter(raw, source, f"book logic failed: {exc!r}", str(venue), None))
                continue
            await _deliver(actions, emit_top, emit_quality)
            await _store(state, store_snapshots, state.config.store_batch)

    return book


@dataclass
class BookWiring:
    """What `register_book_agents` made: the agents (to add to the worker's), the state
    (counters, for metrics and tests) and `tick`, the idle-timer body (tests call it)."""

    agents: dict[str, Any]
    state: BookAgentState
    tick: Callable[[], Awaitable[None]]


def topic_emitter(topic: Any) -> Callable[[Any], Awaitable[None]]:
    """Send an event to a Faust topic as its JSON, keyed `venue:symbol`. The delivery is not
    awaited: a top-N snapshot lost in a crash is superseded by the next one."""

    async def emit(event: Any) -> None:
        await topic.send(key=stream_key(event.venue, event.symbol).encode(), value=encode_event(event))

    return emit


def register_book_agents(
    app: Any,
    settings: Any,
    *,
    book_topic: Any,
    book_top_topic: Any,
    emit_quality: QualityEmitter,
    emit_dead_letter: DeadLetterEmitter,
    store_snapshots: SnapshotStore,
    emit_top: TopEmitter | None = None,
    clock: Clock = time.monotonic,
) -> BookWiring:
    """Wire the book agent, its idle timer and its rebalance hook on `app`.

    `settings`: any object; its `book_*` attributes override `BookAgentConfig`'s defaults.
    `emit_top` replaces publishing to `book_top_topic` (tests)."""
    config = BookAgentConfig.from_settings(settings)
    state = BookAgentState(config, clock)
    publish_top = emit_top or topic_emitter(book_top_topic)
    source = book_topic.get_topic_name()
    agent = app.agent(book_topic, name="book")(
        make_book_agent(state, publish_top, emit_quality, emit_dead_letter, store_snapshots, source)
    )

    async def tick() -> None:
        await _deliver(state.flush_idle(), publish_top, emit_quality)
        await _store(state, store_snapshots, 1)

    app.timer(config.idle_flush_ms / 1000, name="book_idle_flush")(tick)

    async def _forget_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        state.forget(revoked)

    app.on_partitions_revoked.connect(_forget_revoked)
    return BookWiring({"book": agent}, state, tick)


def clickhouse_snapshot_store(sink: ClickHouseSink) -> SnapshotStore:
    """`store_snapshots` writing into the `book_snapshots` table through the worker's sink."""

    async def store(snapshots: Sequence[BookSnapshot], depth: int) -> None:
        await sink.insert("book_snapshots", book_snapshots_table(snapshots, depth))

    return store
