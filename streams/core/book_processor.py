"""The book agent's decisions: per (venue, symbol) stream (`BookStream`) book messages in,
quality events, top-N snapshots to publish and snapshots to store out; over every stream of a
worker (`BookProcessor`) the raw message decoded and checked, dead letters for what cannot be
used, the snapshots batched for storage, and the counters. No I/O: the caller passes
wall-clock readings and delivers the actions.

Per stream a `SequencedBook` (streams/core/orderbook.py) applies the venue's snapshot + diff
sequencing rules and refuses to be read while invalid. The book topic also carries the
exchange's own best bid/ask (`book_ticker_batch.v1`): each ticker is compared with the book at
the ticker's update id, a running self-check (`tickers_checked`, `tickers_mismatched`; a
mismatch is logged).

Publication rules (all in event time, so a replay gives the same output as a live run):
- top-N (`top_depth`, default 100: the deepest a WebSocket client may ask) is published when the top N levels changed,
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
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.config.settings import Settings
from schemas.book_ticker import BookTicker
from schemas.events import BookSnapshot, DeadLetter, QualityEvent
from schemas.symbols import stream_key
from schemas.wire import WireError
from schemas.wire_book import BookMessageItem, decode_book_message
from streams.core.dead_letters import dead_letter_for
from streams.core.keyed import StreamTable
from streams.core.orderbook import (
    DEFAULT_MAX_BUFFER,
    MAX_TOP_DEPTH,
    SequencedBook,
    SnapshotSchedule,
    TickerCheck,
    TopThrottle,
    rules_for_venue,
)

log = logging.getLogger(__name__)

_MS = 1_000_000
_MAX_LOGGED_MISMATCHES = 10  # per stream: a systematic mismatch must not flood the log


class BookMessageError(ValueError):
    """A decodable book message the agent cannot use (wrong stream, unsupported venue)."""


@dataclass(frozen=True)
class BookAgentConfig:
    top_depth: int = 100
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

    dead_letters: list[DeadLetter] = field(default_factory=list)
    quality: list[QualityEvent] = field(default_factory=list)
    tops: list[BookSnapshot] = field(default_factory=list)
    to_store: list[BookSnapshot] = field(default_factory=list)


def check_items(venue: str, symbol: str, items: Sequence[BookMessageItem]) -> None:
    for item in items:
        if item.venue != venue or item.symbol != symbol:
            raise BookMessageError(f"message of {venue}:{symbol} holds an item of {item.venue}:{item.symbol}")


class BookStream:
    def __init__(self, venue: str, symbol: str, config: BookAgentConfig, counts: Counter[str]) -> None:
        """`counts` is shared by every stream of a worker: updates, tickers, tops_published,
        quality_events, tickers_checked, tickers_mismatched."""
        rules = rules_for_venue(venue)
        if rules is None:
            raise BookMessageError(f"no order-book sequencing rules for venue {venue!r}")
        c = self.config = config
        self.counts = counts
        self.sync = SequencedBook(venue, symbol, rules, depth=c.top_depth, max_buffer=c.max_buffer)
        self.throttle = TopThrottle(c.min_interval_ms * _MS)
        self.schedule = SnapshotSchedule(int(c.snapshot_every_s * 1e9))
        self.tickers = TickerCheck()
        self.stream_ts_ns = 0  # max event time seen on the stream: the throttle's clock
        self.last_wall = 0.0
        self.mismatches_logged = 0

    def handle(self, items: Sequence[BookMessageItem], now: float) -> BookActions:
        """One decoded message of this stream (`check_items` passed)."""
        self.last_wall = now
        out = BookActions()
        if not items:
            return out
        sync, n = self.sync, self.counts
        changed = False
        for item in items:
            if item.event_ts_ns > self.stream_ts_ns:
                self.stream_ts_ns = item.event_ts_ns
            if isinstance(item, BookTicker):
                n["tickers"] += 1
                self._checked(item, self.tickers.on_ticker(sync, item))
                continue
            n["updates"] += 1
            outcome = sync.update(item)
            out.quality.extend(outcome.quality)
            if not outcome.valid:
                self.throttle.drop()  # a change held for an invalid book must not be published
                changed = False
                continue
            changed = changed or outcome.top_changed
            if outcome.applied:
                for ok in self.tickers.on_book(sync):
                    self._checked(None, ok)
        n["quality_events"] += len(out.quality)
        if sync.valid:
            if self.throttle.offer(changed, self.stream_ts_ns):
                self._publish(out)
            if self.schedule.due(sync.event_ts_ns):
                snap = sync.snapshot(self.config.snapshot_depth)
                if snap is not None:
                    out.to_store.append(snap)
        return out

    def flush_idle(self, now: float) -> BookActions:
        """The held top, once the stream has been quiet for `idle_flush_ms` of wall time."""
        out = BookActions()
        quiet = now - self.last_wall >= self.config.idle_flush_ms / 1000
        if self.throttle.pending and quiet and self.sync.valid and self.throttle.flush(self.stream_ts_ns):
            self._publish(out)
        return out

    def _checked(self, ticker: BookTicker | None, result: bool | None) -> None:
        if result is None:
            return
        self.counts["tickers_checked"] += 1
        if not result:
            self.counts["tickers_mismatched"] += 1
            if self.mismatches_logged < _MAX_LOGGED_MISMATCHES:
                self.mismatches_logged += 1
                sync = self.sync
                log.warning("book %s:%s disagrees with the exchange's bookTicker at update id %s: book %s, ticker %s",
                            sync.venue, sync.symbol, sync.last_update_id, sync.best(), ticker)

    def _publish(self, out: BookActions) -> None:
        snap = self.sync.snapshot(self.config.top_depth)
        if snap is not None:
            out.tops.append(snap)
            self.counts["tops_published"] += 1


class BookProcessor:
    """Every book of a worker, in `streams` (keyed by stream); `source` names the book topic in
    dead letters. Counters: `messages`, `dead_letters`, `errors` (messages that made the book
    logic raise), `snapshots_stored`, `store_errors`, and the books' own in `counts` (see
    `BookStream`)."""

    def __init__(self, config: BookAgentConfig, streams: StreamTable[BookStream], source: str) -> None:
        self.config, self.streams, self.source = config, streams, source
        self.counts = streams.counts
        self.to_store: list[BookSnapshot] = []
        self.messages = self.dead_letters = self.snapshots_stored = self.store_errors = 0
        self.errors = 0

    def on_message(self, raw: bytes, partition: Any, now: float) -> BookActions:
        """One message of the book topic. Undecodable, an item of another stream than the message
        names, a venue without sequencing rules: a dead letter. A message that makes the book
        logic raise costs that book a resync (from the next snapshot), never the worker."""
        self.messages += 1
        venue: Any = "unknown"
        symbol: Any = "unknown"  # both named in the last handler, whatever raised before them
        try:
            venue, symbol, items = decode_book_message(raw)
            check_items(venue, symbol, items)
            stream = self.streams.get_or_create(stream_key(venue, symbol), partition,
                                                lambda: BookStream(venue, symbol, self.config, self.counts))
            actions = stream.handle(items, now)
        except (WireError, BookMessageError) as exc:
            self.dead_letters += 1
            return BookActions([dead_letter_for(raw, self.source, exc, str(venue))])
        except Exception as exc:
            log.exception("book logic failed on a message of %s:%s; the book resyncs", venue, symbol)
            self.errors += 1
            self.dead_letters += 1
            self.streams.pop(stream_key(venue, symbol))
            return BookActions([dead_letter_for(raw, self.source, f"book logic failed: {exc!r}", venue)])
        self.to_store += actions.to_store
        return actions

    def flush_idle(self, now: float) -> BookActions:
        out = BookActions()
        for _, stream in self.streams.items():
            out.tops += stream.flush_idle(now).tops
        return out

    def take_stored(self, at_least: int = 1) -> list[BookSnapshot]:
        """The snapshots waiting to be stored, once there are `at_least` of them."""
        if len(self.to_store) < max(at_least, 1):
            return []
        batch, self.to_store = self.to_store, []
        return batch

    def forget(self, partitions: set[Any]) -> None:
        self.streams.forget(partitions)
