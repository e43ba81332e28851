"""L2 order books: a venue-agnostic book, a book kept in sequence by a venue's rules, and the
publication rules of the book agent. Pure: no I/O, no clock; the same events in the same order
give the same outputs.

`L2Book` keys each side by fixed-point integers: a price `p` is the key `int(p * 10**places)`
(`places` 8 to start with, the finest any served venue prints; a book that meets a finer price
rescales itself, so the keys stay exact). Each side is a dict key -> the level as the exchange
gave it (`(price, size)`, `Decimal`s exactly as printed) plus a plain list of the keys of
the best few hundred levels kept sorted with `bisect` (C code, no Python-level tree), best
level last: bids by price, asks by negated price, so one code path serves both sides and the
churn near the top moves few list slots. The keys at 8 places come with the event from the
parser that read its level texts (`schemas.level_keys`: the Binance parser and the book topic's
decoder remember each price text's key with its value), so a level costs the book a dict
operation or two; for an event without them (built by hand, or a book rescaled finer) the
book computes them (a multiply and `int()` of a fresh `Decimal`, ~0.25 us a level: that was
half the book's time). A `SortedDict` keyed by `Decimal` pays a hash of every fresh price
(~0.4 us); `tests.bench.bench_orderbook` measures both on the recorded captures.

`SequencedBook` keeps an `L2Book` in step with a venue's snapshot + diff stream, by the venue's
`BookRules` (`streams.core.venues.contract`; each venue module names its rules, e.g. Binance's
in `streams.core.venues.binance`):

| rule | `spot` (Binance spot) | `futures` (Binance USD-M / COIN-M) | set by |
|---|---|---|---|
| stale diff after a snapshot `L`, dropped | `u <= L` | `u < L` | `first_diff_holds_snapshot_id` |
| first diff applied | `U <= L + 1 <= u` | `U <= L <= u` | `first_diff_holds_snapshot_id` |
| every later diff | `U == previous u + 1` | `pu == previous u` | `chained_by_previous_id` |

Until a snapshot arrives, diffs are buffered (the collector's and the exchange's snapshot
arrives after some diffs: the first diff to apply may precede it in the stream). A gap, an
out-of-order (overlapping) diff or a crossed book invalidates the book: its levels are
dropped, a `book_gap` quality event is returned, and diffs are buffered again until the next
snapshot, which re-establishes the book (`book_resync`). Nothing is read from an invalid book:
`top`/`best` return None.

A diff that lies wholly at or before the book's last update id (`u <= last`) is a repeat of
what the book already holds (an at-least-once re-delivery, or a producer retry: Tansu has no
idempotent producer) and is ignored without invalidating: sizes are absolute, so skipping it
leaves the book exact. A diff delivered out of order always shows first as a gap (the later
diff arrives while an earlier one is missing), and that invalidates the book.

Venues whose connector publishes whole books (Coinbase, Kraken: `WHOLE_BOOKS`) send only
snapshots; each newer one replaces the book.

`TopThrottle` and `SnapshotSchedule` are the book agent's publication rules (rate limit of
top-N snapshots, period of stored snapshots), kept here so they are tested without Faust.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, NamedTuple

from schemas.book_ticker import BookTicker
from schemas.codecs import book
from schemas.events import BookDelta, BookSnapshot, PriceLevel, QualityEvent, QualityKind
from schemas.level_keys import KEY_PLACES, LevelKeys, attached
from schemas.trusted import trusted
from streams.core.venues.contract import BookRules
from streams.core.venues.registry import VENUES, book_rules

MAX_TOP_DEPTH: Final = 100
DEFAULT_MAX_BUFFER: Final = 10_000
# Levels kept per side between snapshots (issue 18, finding 13): a venue (or a hostile producer
# of the raw topic) that adds levels and never deletes them must not grow a book without limit.
# Over the cap the worst quarter goes: only the top is ever read, sizes are absolute (a trimmed
# level that changes again comes back exact), and the cap is far above any venue's depth (Binance
# spot snapshots hold at most 5000 levels a side).
DEFAULT_MAX_LEVELS: Final = 20_000
DEFAULT_PLACES: Final = KEY_PLACES  # the parser's keys (schemas.level_keys) are used at this scale only


# Each side keeps the keys of its best levels sorted (its "front"): at least _FRONT_MIN of them
# (more than MAX_TOP_DEPTH, so every read and every top-changed test is served by the front),
# refilled to _FRONT from the dict when deletes shrink it, trimmed back when inserts grow it past
# _FRONT_MAX. Levels behind the front live in the dict only: on a Binance book of ~3000 levels a
# side, sorting them all made a third of the cost (each insert or delete far from the top moved
# the whole list), and only the top is ever read.
_FRONT_MIN: Final = 128
_FRONT: Final = 512
_FRONT_MAX: Final = 2048


class _Inexact(Exception):
    """A price has more decimal places than the book's keys: the book rescales."""

    def __init__(self, price: Decimal) -> None:
        self.places = max(0, -int(price.as_tuple().exponent))


class BookSide:
    """A read-only view of one side, prices ascending (for tests and inspection, not the hot path)."""

    __slots__ = ("_levels", "_negated")

    def __init__(self, levels: dict[int, PriceLevel], negated: bool) -> None:
        self._levels, self._negated = levels, negated

    def items(self) -> list[PriceLevel]:
        levels = self._levels
        return [levels[k] for k in sorted(levels, reverse=self._negated)]

    def keys(self) -> list[Decimal]:
        return [price for price, _ in self.items()]

    def __len__(self) -> int:
        return len(self._levels)

    def __bool__(self) -> bool:
        return bool(self._levels)


class L2Book:
    """One instrument's price levels. Venue-agnostic: knows nothing of sequence numbers.

    Per side: a dict key -> level of every level, and the front (see `_FRONT_MIN`): the keys
    of the best levels, ascending, best last, holding every key at or above its first one, and
    every key of the side while it holds fewer than `_FRONT_MIN`."""

    __slots__ = ("_ask_front", "_ask_levels", "_bid_front", "_bid_levels", "_scale", "max_levels", "places")

    def __init__(self, places: int = DEFAULT_PLACES, max_levels: int = DEFAULT_MAX_LEVELS) -> None:
        # trimming keeps 3/4 of the cap, which must hold every front key (at most _FRONT_MAX)
        if max_levels < 2 * _FRONT_MAX:
            raise ValueError(f"max_levels must be at least {2 * _FRONT_MAX}, got {max_levels}")
        self.max_levels = max_levels
        self.places = places
        # 1E8 rather than 100000000: multiplying by a one-digit coefficient is the cheaper way
        # from a Decimal to its key (measured: ~160 ns, `scaleb` ~215 ns, hashing it ~360 ns)
        self._scale = Decimal(f"1E{places}")
        self._bid_levels: dict[int, PriceLevel] = {}  # key: price in 10**-places units
        self._bid_front: list[int] = []
        self._ask_levels: dict[int, PriceLevel] = {}  # key: negated price, so the best ask is last too
        self._ask_front: list[int] = []

    @property
    def bids(self) -> BookSide:
        return BookSide(self._bid_levels, negated=False)

    @property
    def asks(self) -> BookSide:
        return BookSide(self._ask_levels, negated=True)

    def load(self, bids: Iterable[PriceLevel], asks: Iterable[PriceLevel], keys: LevelKeys | None = None) -> None:
        """Replace both sides (a snapshot). Zero sizes are not levels. `keys`: the prices' keys at
        `KEY_PLACES`, as the event's parser gave them (`schemas.level_keys.attached`)."""
        bids, asks = tuple(bids), tuple(asks)
        while True:
            try:
                bid_keys, ask_keys = self._keys(bids, asks, keys)
                break
            except _Inexact as finer:
                self._set_places(finer.places)
        self._bid_levels = {k: level for k, level in zip(bid_keys, bids, strict=True) if level[1]}
        self._ask_levels = {k: level for k, level in zip(ask_keys, asks, strict=True) if level[1]}
        self._bound()
        self._bid_front = _front(self._bid_levels)
        self._ask_front = _front(self._ask_levels)

    def _bound(self) -> None:
        """Drop the worst levels of a side over `max_levels`, down to 3/4 of it (so trimming is
        rare: a side must gain a quarter of the cap again before the next one). The fronts keep
        their keys: they are among the best, and 3/4 of the cap is more than a front holds."""
        keep = self.max_levels * 3 // 4
        if len(self._bid_levels) > self.max_levels:
            self._bid_levels = _best_of(self._bid_levels, keep)
        if len(self._ask_levels) > self.max_levels:
            self._ask_levels = _best_of(self._ask_levels, keep)

    def clear(self) -> None:
        self._bid_levels, self._bid_front = {}, []
        self._ask_levels, self._ask_front = {}, []

    def apply(self, bids: Sequence[PriceLevel], asks: Sequence[PriceLevel], depth: int = 0,
              keys: LevelKeys | None = None) -> bool:
        """Apply absolute sizes (size 0 deletes). Returns whether the top `depth` levels of
        either side changed (price or size); `depth` 0 means any level. `keys` as for `load`.

        A change can reach the top `depth` only at a price at or better than the side's
        `depth`-th level before the change (or anywhere while the side has fewer levels):
        one threshold per side and diff, instead of comparing tops before and after."""
        try:
            bid_keys, ask_keys = self._keys(bids, asks, keys)
        except _Inexact as finer:
            # Rare: a finer price than any before. The held levels are keyed again at the finer
            # scale, then the diff applied; what changed is no longer known: say so.
            self._set_places(finer.places)
            self.load(list(self._bid_levels.values()), list(self._ask_levels.values()))
            self.apply(bids, asks)
            return True
        changed = _apply_side(self._bid_levels, self._bid_front, bids, bid_keys, depth)
        changed = _apply_side(self._ask_levels, self._ask_front, asks, ask_keys, depth) or changed
        if len(self._bid_levels) > self.max_levels or len(self._ask_levels) > self.max_levels:
            self._bound()  # never the top: `changed` stands
        return changed

    def _keys(self, bids: Sequence[PriceLevel], asks: Sequence[PriceLevel],
              keys: LevelKeys | None) -> tuple[Sequence[int], Sequence[int]]:
        """The keys of both sides' levels (asks negated): the parser's when it gave them for this
        book's scale, else computed (raises `_Inexact` for a price finer than the scale)."""
        if keys is not None and self.places == KEY_PLACES:
            return keys.bid_keys, [-k for k in keys.ask_keys]
        return _keys_at(bids, self._scale, 1), _keys_at(asks, self._scale, -1)

    def _set_places(self, places: int) -> None:
        self.places = max(self.places, places)
        self._scale = Decimal(f"1E{self.places}")

    def best(self) -> tuple[PriceLevel | None, PriceLevel | None]:
        """(best bid, best ask) as (price, size); None for an empty side."""
        bid_front, ask_front = self._bid_front, self._ask_front
        return (self._bid_levels[bid_front[-1]] if bid_front else None,
                self._ask_levels[ask_front[-1]] if ask_front else None)

    def top(self, n: int) -> tuple[list[PriceLevel], list[PriceLevel]]:
        """The best `n` levels of each side, best first."""
        if n <= 0:
            return [], []
        if n > _FRONT_MIN:
            return self._deep_top(n)
        bid_levels, ask_levels = self._bid_levels, self._ask_levels
        return ([bid_levels[k] for k in self._bid_front[:-n - 1:-1]],
                [ask_levels[k] for k in self._ask_front[:-n - 1:-1]])

    def _deep_top(self, n: int) -> tuple[list[PriceLevel], list[PriceLevel]]:
        bids, asks = self._bid_levels, self._ask_levels
        return [bids[k] for k in heapq.nlargest(n, bids)], [asks[k] for k in heapq.nlargest(n, asks)]

    def crossed(self) -> bool:
        bid_front, ask_front = self._bid_front, self._ask_front
        return bool(bid_front) and bool(ask_front) and bid_front[-1] >= -ask_front[-1]

    def __len__(self) -> int:
        return len(self._bid_levels) + len(self._ask_levels)


def _keys_at(levels: Sequence[PriceLevel], scale: Decimal, sign: int) -> list[int]:
    """The keys of `levels`' prices at `scale` (times `sign`), exact or `_Inexact`."""
    keys = []
    for price, _ in levels:
        scaled = price * scale
        key = int(scaled)
        if key != scaled:
            raise _Inexact(price)
        keys.append(sign * key)
    return keys


def _best_of(levels: dict[int, PriceLevel], n: int) -> dict[int, PriceLevel]:
    """The `n` best levels of a side (largest keys: bids by price, asks by negated price)."""
    return {key: levels[key] for key in heapq.nlargest(n, levels)}


def _front(levels: dict[int, PriceLevel]) -> list[int]:
    """The keys of the best `_FRONT` levels, ascending."""
    front = heapq.nlargest(_FRONT, levels)
    front.reverse()
    return front


def _apply_side(levels: dict[int, PriceLevel], front: list[int], changes: Sequence[PriceLevel], keys: Sequence[int],
                depth: int) -> bool:
    """One side of `L2Book.apply`, `keys` the changes' keys (exact: negated prices for asks).
    The hot loop of the book: the common case (a new size at a held price) comes first and
    compares sizes only where the answer can matter (at or above the threshold, nothing changed
    yet)."""
    changed = False
    # While the front holds fewer than `depth` keys it holds the whole side: any change counts.
    threshold = front[-depth] if 0 < depth <= len(front) else None
    get = levels.get
    front_min = _FRONT_MIN
    for level, key in zip(changes, keys, strict=True):
        size = level[1]
        old = get(key)
        if old is not None:
            if size:
                levels[key] = level
                if changed or (threshold is not None and key < threshold) or old[1] == size:
                    continue
            else:
                del levels[key]
                if key >= front[0]:
                    del front[bisect_left(front, key)]
                    if len(front) < front_min and len(levels) > len(front):
                        front[:] = _front(levels)
        elif size:
            levels[key] = level
            if len(front) < front_min or key > front[0]:  # a short front holds the whole side
                insort(front, key)
            # else behind the front: the dict alone holds it
        else:
            continue  # deleting a level the book does not hold
        if not changed and (threshold is None or key >= threshold):
            changed = True
    if len(front) > _FRONT_MAX:
        del front[: len(front) - _FRONT]
    return changed


RULES_BY_NAME: Final[dict[str, BookRules]] = {r.name: r for r in (v.book_rules for v in VENUES.values())}


def rules_for_venue(venue: str) -> BookRules | None:
    """The sequencing rules of a venue's book stream, or None when no book can be kept for it."""
    return book_rules(venue)


class SyncState(StrEnum):
    AWAITING_SNAPSHOT = "awaiting_snapshot"  # never synced, or invalidated: diffs are buffered
    SYNCED = "synced"  # snapshot loaded; the next diff must bridge it (first-diff rule)
    LIVE = "live"  # diffs chain by the continuity rule


class BookOutcome(NamedTuple):
    """What one event did. `applied`: it changed the book (a diff or a snapshot went in);
    `valid`: the book may be read after it; `top_changed`: the top `depth` levels differ from
    what a reader last could see (always true when the book has just become valid);
    `quality`: events to emit, in order."""

    applied: bool
    valid: bool
    top_changed: bool
    quality: tuple[QualityEvent, ...] = ()


# The common outcomes are shared instances: one allocation less per diff on the hot path.
_APPLIED_CHANGED: Final = BookOutcome(True, True, True)
_APPLIED_SAME: Final = BookOutcome(True, True, False)
_SKIPPED_VALID: Final = BookOutcome(False, True, False)
_SKIPPED_INVALID: Final = BookOutcome(False, False, False)


class GapReason(StrEnum):
    GAP = "gap"  # update ids are missing between the book and the diff
    OUT_OF_ORDER = "out_of_order"  # the diff overlaps ids the book already holds without continuing it
    CROSSED = "crossed"  # best bid >= best ask after a diff


class SequencedBook:
    """One depth stream (venue, symbol) kept in sync by the venue's `BookRules`; see the module
    docstring. `rules` is a `BookRules` or the name of one (`spot`, `futures`, `whole_books`).

    `depth` is the number of levels per side whose changes `BookOutcome.top_changed` reports.
    `max_buffer` bounds the diffs kept while waiting for a snapshot (the oldest go first: a
    snapshot that arrives later is newer than them anyway)."""

    def __init__(
        self,
        venue: str,
        symbol: str,
        rules: BookRules | str,
        *,
        depth: int = 20,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        if not 0 <= depth <= MAX_TOP_DEPTH:
            raise ValueError(f"depth must be within 0..{MAX_TOP_DEPTH}, got {depth}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be positive, got {max_buffer}")
        self.venue = venue
        self.symbol = symbol
        self.rules = rules if isinstance(rules, BookRules) else RULES_BY_NAME[rules]
        self.depth = depth
        self.book = L2Book()
        self.state = SyncState.AWAITING_SNAPSHOT
        self._by_previous_id = self.rules.chained_by_previous_id
        self._holds_snapshot_id = self.rules.first_diff_holds_snapshot_id
        self._last: int = -1  # last update id the book holds; meaningful only while valid
        self._buffer: deque[BookDelta] = deque(maxlen=max_buffer)
        self._invalid_since: BookDelta | BookSnapshot | None = None  # what broke a valid book
        self.event_ts_ns = 0  # max event time of what the book holds (never goes back)
        self.recv_ts_ns = 0
        # counters (metrics)
        self.applied = 0
        self.duplicates = 0  # diffs wholly before the book's last id, ignored while valid
        self.stale = 0  # buffered diffs a snapshot already covered
        self.gaps = 0
        self.resyncs = 0
        self.snapshots_loaded = 0
        self.snapshots_ignored = 0  # arrived while the book was valid
        self.snapshots_rejected = 0  # older than the buffered diffs, or crossed
        self.buffer_overflow = 0

    # ---- reading ------------------------------------------------------------------------

    @property
    def valid(self) -> bool:
        return self.state is not SyncState.AWAITING_SNAPSHOT

    @property
    def last_update_id(self) -> int | None:
        """The update id the book is at, or None while it is invalid."""
        return self._last if self.state is not SyncState.AWAITING_SNAPSHOT else None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def best(self) -> tuple[PriceLevel | None, PriceLevel | None] | None:
        """(best bid, best ask), or None while the book is invalid."""
        return self.book.best() if self.state is not SyncState.AWAITING_SNAPSHOT else None

    def top(self, n: int | None = None) -> tuple[list[PriceLevel], list[PriceLevel]] | None:
        """The best `n` (default `depth`) levels per side, best first; None while invalid."""
        if self.state is SyncState.AWAITING_SNAPSHOT:
            return None
        n = self.depth if n is None else n
        if not 0 <= n <= MAX_TOP_DEPTH:
            raise ValueError(f"n must be within 0..{MAX_TOP_DEPTH}, got {n}")
        return self.book.top(n)

    def snapshot(self, n: int | None = None) -> BookSnapshot | None:
        """The top `n` levels as a `book_snapshot.v1` event stamped with the book's update id
        and time; None while the book is invalid."""
        top = self.top(n)
        if top is None:
            return None
        bids, asks = top
        # Every value comes from a valid book (positive prices and sizes, ids from validated
        # events), so the model's checks would only cost time.
        return trusted(
            BookSnapshot,
            {
                "venue": self.venue,
                "symbol": self.symbol,
                "event_ts_ns": self.event_ts_ns,
                "recv_ts_ns": self.recv_ts_ns,
                "schema_version": book.BOOK_SNAPSHOT,
                "last_update_id": self._last,
                "bids": tuple(bids),
                "asks": tuple(asks),
            },
        )

    def check_ticker(self, ticker: BookTicker) -> bool | None:
        """Does the exchange's best bid/ask at `ticker.update_id` equal the book's? None when
        they cannot be compared: the book is invalid, or not at that update id."""
        if self.state is SyncState.AWAITING_SNAPSHOT or ticker.update_id != self._last:
            return None
        bid, ask = self.book.best()
        return (
            bid is not None
            and ask is not None
            and bid == (ticker.bid_price, ticker.bid_size)
            and ask == (ticker.ask_price, ticker.ask_size)
        )

    # ---- updating -----------------------------------------------------------------------

    def update(self, event: BookDelta | BookSnapshot) -> BookOutcome:
        if type(event) is BookDelta:
            return self._delta(event)
        if isinstance(event, BookSnapshot):
            return self._snapshot(event)
        if isinstance(event, BookDelta):
            return self._delta(event)
        raise TypeError(f"expected a BookDelta or BookSnapshot, got {type(event).__name__}")

    def _delta(self, d: BookDelta) -> BookOutcome:
        state = self.state
        last = self._last
        if state is SyncState.LIVE:
            if (d.prev_update_id == last) if self._by_previous_id else (d.first_update_id == last + 1):
                return self._apply(d)
            if d.last_update_id <= last:
                self.duplicates += 1
                return _SKIPPED_VALID
            return self._invalidate(d, *self._break(d))
        if state is SyncState.SYNCED:
            if self._is_stale(d, last):
                self.stale += 1
                return _SKIPPED_VALID
            if self._bridges(d, last):
                self.state = SyncState.LIVE
                return self._apply(d)
            # The first diff after the snapshot starts past it: ids in between are missing.
            expected = last if self._holds_snapshot_id else last + 1
            return self._invalidate(d, GapReason.GAP, "U", expected, d.first_update_id)
        if len(self._buffer) == self._buffer.maxlen:
            self.buffer_overflow += 1
        self._buffer.append(d)
        return _SKIPPED_INVALID

    def _is_stale(self, d: BookDelta, snapshot_id: int) -> bool:
        return d.last_update_id < snapshot_id if self._holds_snapshot_id else d.last_update_id <= snapshot_id

    def _bridges(self, d: BookDelta, snapshot_id: int) -> bool:
        if self._holds_snapshot_id:
            return d.first_update_id <= snapshot_id <= d.last_update_id
        return d.first_update_id <= snapshot_id + 1 <= d.last_update_id

    def _break(self, d: BookDelta) -> tuple[GapReason, str, int, int | None]:
        """Why a live diff does not continue the book: (reason, field, expected, got). Only
        called for diffs that reach past the book's last id."""
        last = self._last
        if self._by_previous_id:
            pu = d.prev_update_id
            if pu is None or pu > last:
                return GapReason.GAP, "pu", last, pu
            return GapReason.OUT_OF_ORDER, "pu", last, pu
        if d.first_update_id > last + 1:
            return GapReason.GAP, "U", last + 1, d.first_update_id
        return GapReason.OUT_OF_ORDER, "U", last + 1, d.first_update_id

    def _apply(self, d: BookDelta) -> BookOutcome:
        book = self.book
        changed = book.apply(d.bids, d.asks, self.depth, attached(d))
        self._last = d.last_update_id
        self.applied += 1
        if d.event_ts_ns > self.event_ts_ns:
            self.event_ts_ns = d.event_ts_ns
        self.recv_ts_ns = d.recv_ts_ns
        if not changed:
            return _APPLIED_SAME
        if book.crossed():  # only a change at the top can cross the book
            return self._invalidate(d, GapReason.CROSSED, "", None, None)
        return _APPLIED_CHANGED

    def _invalidate(
        self, cause: BookDelta, reason: GapReason, field: str, expected: int | None, got: int | None
    ) -> BookOutcome:
        detail: dict[str, Any] = {
            "reason": reason.value,
            "last_update_id": self._last,
            "first_update_id": cause.first_update_id,
            "update_id": cause.last_update_id,
        }
        if reason is GapReason.CROSSED:
            bid, ask = self.book.best()
            detail["bid"] = format(bid[0], "f") if bid else None
            detail["ask"] = format(ask[0], "f") if ask else None
        else:
            # Which id broke the chain: `U` (spot, or any first diff after a snapshot) or `pu`.
            detail["field"] = field
            detail["expected"] = expected
            detail["got"] = got
        self.gaps += 1
        self.state = SyncState.AWAITING_SNAPSHOT
        self.book.clear()
        self._buffer.clear()
        # The diff is the exchange's, even when the book could not take it: the next snapshot
        # may need it (it is dropped then if the snapshot already covers it).
        self._buffer.append(cause)
        self._invalid_since = cause
        return BookOutcome(False, False, False, (self._quality(QualityKind.BOOK_GAP, cause, detail),))

    def _snapshot(self, snap: BookSnapshot) -> BookOutcome:
        if self.state is not SyncState.AWAITING_SNAPSHOT:
            if snap.last_update_id <= self._last:
                # A valid book is proven by continuity; an older snapshot adds nothing to it.
                self.snapshots_ignored += 1
                return _SKIPPED_VALID
            return self._reload(snap)
        snapshot_id = snap.last_update_id
        pending = [d for d in self._buffer if not self._is_stale(d, snapshot_id)]
        if pending and not self._bridges(pending[0], snapshot_id):
            # Ids between the snapshot and the oldest diff kept are missing: the snapshot is
            # too old for this buffer; wait for a newer one.
            self.snapshots_rejected += 1
            self._buffer = deque(pending, maxlen=self._buffer.maxlen)
            return _SKIPPED_INVALID
        self.book.load(snap.bids, snap.asks, attached(snap))
        if self.book.crossed():
            self.book.clear()
            self.snapshots_rejected += 1
            return _SKIPPED_INVALID
        stale = len(self._buffer) - len(pending)
        self.stale += stale
        self._buffer.clear()
        self.snapshots_loaded += 1
        self._last = snapshot_id
        self.state = SyncState.SYNCED
        if snap.event_ts_ns > self.event_ts_ns:
            self.event_ts_ns = snap.event_ts_ns
        self.recv_ts_ns = snap.recv_ts_ns
        broken = self._invalid_since
        self._invalid_since = None
        # Replay what arrived before the snapshot through the same rules as live diffs; one of
        # them may break the book again (its gap event then follows the resync).
        quality: list[QualityEvent] = []
        for d in pending:
            quality.extend(self._delta(d).quality)
        valid = self.state is not SyncState.AWAITING_SNAPSHOT
        if broken is not None:
            self.resyncs += 1
            detail = {
                "snapshot_update_id": snapshot_id,
                "buffered_replayed": len(pending),
                "buffered_dropped": stale,
                "last_update_id": self._last if valid else None,
                "invalid_since_update_id": broken.last_update_id,
                "invalid_since_ts_ns": broken.event_ts_ns,
            }
            quality.insert(0, self._quality(QualityKind.BOOK_RESYNC, snap, detail))
        return BookOutcome(True, valid, valid, tuple(quality))

    def _reload(self, snap: BookSnapshot) -> BookOutcome:
        """A newer snapshot on a valid book is the exchange's book at a later id: it replaces
        ours. This is how whole-book streams work (the live connectors publish the book ccxt
        keeps, every 100 ms); diffs that follow must bridge it like after any snapshot."""
        previous = self.book.top(self.depth) if self.depth else None
        self.book.load(snap.bids, snap.asks, attached(snap))
        if self.book.crossed():
            self.book.clear()
            self.state = SyncState.AWAITING_SNAPSHOT
            self.snapshots_rejected += 1
            return _SKIPPED_INVALID
        self.snapshots_loaded += 1
        self._last = snap.last_update_id
        self.state = SyncState.SYNCED
        if snap.event_ts_ns > self.event_ts_ns:
            self.event_ts_ns = snap.event_ts_ns
        self.recv_ts_ns = snap.recv_ts_ns
        changed = previous is None or self.book.top(self.depth) != previous
        return _APPLIED_CHANGED if changed else _APPLIED_SAME

    def _quality(self, kind: QualityKind, cause: BookDelta | BookSnapshot, detail: dict[str, Any]) -> QualityEvent:
        return QualityEvent(
            venue=self.venue,
            symbol=self.symbol,
            event_ts_ns=cause.event_ts_ns,
            recv_ts_ns=cause.recv_ts_ns,
            kind=kind,
            detail={"rules": self.rules.name, **detail},
        )


class TickerCheck:
    """Checks a book against the exchange's own best bid/ask (Binance `bookTicker`), whose
    `u` is in the same id sequence as the diffs: at the same update id, the book's best bid
    and ask (price and size) must equal the ticker's.

    The ticker stream runs ahead of the diff stream (spot diffs come every 100 ms, tickers in
    real time), so a ticker usually arrives before the diff that brings the book to its id: it
    is held until the book reaches or passes that id, and compared when the book is exactly
    there. A ticker that arrives when the book is already at its id is compared at once.
    Counted apart (`checked_held` / `checked_direct`), matched and mismatched together."""

    __slots__ = ("_held", "checked_direct", "checked_held", "matched", "mismatched")

    def __init__(self, max_held: int = 4096) -> None:
        self._held: deque[BookTicker] = deque(maxlen=max_held)
        self.checked_held = 0
        self.checked_direct = 0
        self.matched = 0
        self.mismatched = 0

    @property
    def checked(self) -> int:
        return self.checked_held + self.checked_direct

    def on_ticker(self, sync: SequencedBook, ticker: BookTicker) -> bool | None:
        """A ticker arrived: compared now (True/False) if the book is at its id, else held
        (None) if the book may still reach it, else dropped (None)."""
        last = sync.last_update_id
        if last is not None and ticker.update_id == last:
            self.checked_direct += 1
            return self._count(sync.check_ticker(ticker))
        if last is None or ticker.update_id > last:
            self._held.append(ticker)
        return None

    def on_book(self, sync: SequencedBook) -> list[bool]:
        """After an update the book applied: compare the held ticker at the book's id, drop
        those it passed. Returns the comparisons made."""
        held = self._held
        last = sync.last_update_id
        if not held or last is None:
            return []
        results: list[bool] = []
        while held and held[0].update_id <= last:
            ticker = held.popleft()
            if ticker.update_id == last:
                self.checked_held += 1
                results.append(self._count(sync.check_ticker(ticker)))
        return results

    def _count(self, result: bool | None) -> bool:
        ok = bool(result)
        if ok:
            self.matched += 1
        else:
            self.mismatched += 1
        return ok


class TopThrottle:
    """At most one top-N publication per `min_interval_ns` of stream time, never losing the
    last change: a change inside the interval is held (`pending`) and published by the first
    `offer` at or after the interval's end, with the state as it is then. A stream that goes
    quiet with a change held is flushed by the caller's idle timer (`flush`).

    Stream time is whatever the caller passes (the agent: the max event time seen on the
    stream); a time going backwards never publishes early."""

    __slots__ = ("_last_ns", "min_interval_ns", "pending")

    def __init__(self, min_interval_ns: int) -> None:
        if min_interval_ns < 0:
            raise ValueError(f"min_interval_ns must be non-negative, got {min_interval_ns}")
        self.min_interval_ns = min_interval_ns
        self.pending = False
        self._last_ns: int | None = None

    def offer(self, changed: bool, now_ns: int) -> bool:
        """Called after each input with whether the top changed; True: publish now."""
        if changed:
            self.pending = True
        if not self.pending:
            return False
        if self._last_ns is not None and now_ns < self._last_ns + self.min_interval_ns:
            return False
        self.pending = False
        self._last_ns = now_ns
        return True

    def flush(self, now_ns: int) -> bool:
        """True (once) when a change is held: publish it now, whatever the interval (the
        caller's idle timer only flushes a stream quiet for a while). The trailing publication
        of a quiet stream is the one that may follow the previous by less than the interval;
        the next `offer` counts the interval from it."""
        if not self.pending:
            return False
        self.pending = False
        if self._last_ns is None or now_ns > self._last_ns:
            self._last_ns = now_ns
        return True

    def drop(self) -> None:
        """The book became invalid: what was held must not be published."""
        self.pending = False


class SnapshotSchedule:
    """Which book states to store: the first valid state seen in each `every_ns` bucket of
    event time (buckets aligned on the Unix epoch, so every symbol and every replay picks
    the same instants and a re-run writes the same rows)."""

    __slots__ = ("_bucket", "every_ns")

    def __init__(self, every_ns: int) -> None:
        if every_ns <= 0:
            raise ValueError(f"every_ns must be positive, got {every_ns}")
        self.every_ns = every_ns
        self._bucket: int | None = None

    def due(self, event_ts_ns: int) -> bool:
        bucket = event_ts_ns // self.every_ns
        if self._bucket is not None and bucket <= self._bucket:
            return False
        self._bucket = bucket
        return True


def levels(pairs: Sequence[tuple[str, str]]) -> tuple[PriceLevel, ...]:
    """`[("2683.80", "1.5"), ...]` -> Decimal levels; for tests and hand-made books."""
    return tuple((Decimal(p), Decimal(s)) for p, s in pairs)
