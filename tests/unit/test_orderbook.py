"""Order-book core against the exchange itself and against independent oracles.

- Recorded captures (../shared/data/binance, read with plain gzip and the project's parser):
  every best bid/ask (price and size) the book reports at a bookTicker's update id equals that
  ticker; the counts equal the data README's (spot 1056, usdm 471, cm 2278); never crossed.
- A dropped diff: exactly one `book_gap`, no top while invalid, then a resync from a snapshot
  built by an independent dict-based replay of the full stream, after which the book equals
  that replay's book.
- Hand-made books for each sequencing rule, out-of-order and crossed cases; a hypothesis
  property test of the book against a naive dict oracle.
- The sequenced book under every registered venue's rules (hand-worked cases per rule set),
  deep books against a dict oracle (the sorted front refilled and trimmed), and prices finer
  than the book's fixed-point keys.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.book_ticker import BookTicker
from schemas.events import BookDelta, BookSnapshot, QualityEvent, QualityKind
from streams.core import orderbook
from streams.core.orderbook import (
    L2Book,
    SequencedBook,
    SnapshotSchedule,
    SyncState,
    TickerCheck,
    TopThrottle,
    levels,
    rules_for_venue,
)
from streams.core.venues.binance import FUTURES_RULES, SPOT_RULES, Market, parse_line
from streams.core.venues.registry import VENUES
from tests.shared_data import BINANCE

# market -> (files in order, Binance symbol, README: tickers matched, diffs applied of all diffs)
CAPTURES: dict[str, tuple[tuple[str, ...], str, int, int, int]] = {
    "spot": (("spot_ethusdt_20240808.gz", "spot_ethusdt_20240809.gz"), "ETHUSDT", 1056, 6468, 6470),
    "usdm": (("usdm_ethusdt_20240808.gz",), "ETHUSDT", 471, 6581, 6586),
    "cm": (("cm_ethusd_perp_20240808.gz", "cm_ethusd_perp_20240809.gz"), "ETHUSD_PERP", 2278, 39133, 39155),
}

BookEvent = BookDelta | BookSnapshot | BookTicker


def _lines(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if line:
                yield line


@cache
def recorded(market: str) -> tuple[BookEvent, ...]:
    """The book events (diffs, snapshots, tickers) of one market's captures, in file order."""
    files, symbol, *_ = CAPTURES[market]
    m: Market = "spot" if market == "spot" else "usdm" if market == "usdm" else "cm"
    out: list[BookEvent] = []
    for name in files:
        for line in _lines(BINANCE / name):
            if b"@trade" in line[:80]:
                continue
            out.extend(e for e in parse_line(line, m, symbol) if isinstance(e, BookDelta | BookSnapshot | BookTicker))
    return tuple(out)


def sync_for(event: BookEvent, **kwargs: Any) -> SequencedBook:
    rules = rules_for_venue(event.venue)
    assert rules is not None
    return SequencedBook(event.venue, event.symbol, rules, **kwargs)


def same_as_ticker(best: Any, t: BookTicker) -> bool:
    bid, ask = best
    return bool(bid == (t.bid_price, t.bid_size) and ask == (t.ask_price, t.ask_size))


# ---- the book against the exchange's bookTicker ---------------------------------------------


@pytest.mark.parametrize("market", list(CAPTURES))
def test_book_equals_every_bookticker_at_its_update_id(market: str) -> None:
    _, _, readme_matches, readme_applied, readme_diffs = CAPTURES[market]
    events = recorded(market)
    sync = sync_for(events[0])
    checker = TickerCheck()  # the project's own check, compared with the one written here
    seen: dict[int, BookTicker] = {}  # tickers read so far, by update id
    held = direct = mismatched = diffs = 0
    for e in events:
        if isinstance(e, BookTicker):
            checker.on_ticker(sync, e)
            if sync.valid and sync.last_update_id == e.update_id:
                # the book is already at the ticker's id when it arrives
                direct += 1
                mismatched += not same_as_ticker(sync.best(), e)
            else:
                seen[e.update_id] = e
            continue
        diffs += isinstance(e, BookDelta)
        outcome = sync.update(e)
        assert not outcome.quality, outcome.quality  # the recordings are gap-free
        assert sync.valid == (sync.state is not SyncState.AWAITING_SNAPSHOT)
        if outcome.applied:
            checker.on_book(sync)
        if sync.valid:
            (bid, _), (ask, _) = sync.best()  # type: ignore[misc]
            assert bid < ask, f"crossed at {sync.last_update_id}"
        if outcome.applied and isinstance(e, BookDelta):
            ticker = seen.pop(e.last_update_id, None)
            if ticker is not None:
                held += 1
                mismatched += not same_as_ticker(sync.best(), ticker)
    print(f"\n{market}: bookTicker checked {held + direct} ({held} at the diff reaching the ticker's id, "
          f"{direct} arriving at the book's id), matched {held + direct - mismatched}, mismatched {mismatched}; "
          f"diffs applied {sync.applied} of {diffs}")
    assert mismatched == 0
    assert held == readme_matches  # the data README's count: tickers read before the diff with their id
    assert (sync.applied, diffs) == (readme_applied, readme_diffs)
    assert (checker.checked_held, checker.checked_direct, checker.mismatched) == (held, direct, 0)
    assert sync.gaps == 0 and sync.resyncs == 0


# ---- a dropped diff: one gap, then a resync ------------------------------------------------


class OracleBook:
    """The README's rules done the plain way on a gap-free stream: after the one snapshot,
    apply every diff not older than it, to dicts. Shares no code with the core."""

    def __init__(self, snap: BookSnapshot) -> None:
        self.bids = {p: s for p, s in snap.bids if s}
        self.asks = {p: s for p, s in snap.asks if s}
        self.last = snap.last_update_id

    def apply(self, d: BookDelta) -> None:
        if d.last_update_id <= self.last:  # spot: stale
            return
        for side, changes in ((self.bids, d.bids), (self.asks, d.asks)):
            for p, s in changes:
                if s:
                    side[p] = s
                else:
                    side.pop(p, None)
        self.last = d.last_update_id

    def sides(self) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


def book_sides(book: L2Book) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    return list(reversed(book.bids.items())), list(book.asks.items())


@pytest.mark.parametrize("snapshot_levels", [None, 1000])
def test_dropped_diff_gives_one_gap_and_a_correct_book_after_resync(snapshot_levels: int | None) -> None:
    """`snapshot_levels` None: the injected snapshot is the oracle's whole book, so the book must
    equal the oracle exactly afterwards. 1000: cut like a REST `depth?limit=1000` snapshot; levels
    beyond that range are then unknown to the book, so the top 100 levels must be equal."""
    events = list(recorded("spot"))
    first_snapshot = next(i for i, e in enumerate(events) if isinstance(e, BookSnapshot))
    delta_at = [i for i, e in enumerate(events) if isinstance(e, BookDelta) and i > first_snapshot]
    k = 3000  # the diff to drop, well inside the stream
    dropped, after = events[delta_at[k]], events[delta_at[k + 1]]
    assert isinstance(dropped, BookDelta) and isinstance(after, BookDelta)

    # The independent replay of the full stream, to the state at the resync point X.
    x_index = delta_at[k + 20]
    oracle = OracleBook(events[first_snapshot])  # type: ignore[arg-type]
    for e in events[first_snapshot + 1 : x_index + 1]:
        if isinstance(e, BookDelta):
            oracle.apply(e)
    x_diff = events[x_index]
    assert isinstance(x_diff, BookDelta) and oracle.last == x_diff.last_update_id
    bids, asks = oracle.sides()
    if snapshot_levels is not None:
        bids, asks = bids[:snapshot_levels], asks[:snapshot_levels]
    injected = BookSnapshot(venue=x_diff.venue, symbol=x_diff.symbol, event_ts_ns=x_diff.event_ts_ns,
                            recv_ts_ns=x_diff.recv_ts_ns, last_update_id=x_diff.last_update_id,
                            bids=tuple(bids), asks=tuple(asks))
    # Like the collector's: the snapshot arrives after some diffs newer than it.
    arrives_after = delta_at[k + 25]
    stream = events[: delta_at[k]] + events[delta_at[k] + 1 : arrives_after + 1] + [injected] + \
        events[arrives_after + 1 :]

    sync = sync_for(events[0])
    reference = OracleBook(events[first_snapshot])  # type: ignore[arg-type]
    quality: list[QualityEvent] = []
    invalid_steps = tops_while_invalid = 0
    resynced = False
    checked = mismatched = 0
    seen: dict[int, BookTicker] = {}
    for e in stream:
        if isinstance(e, BookTicker):
            seen[e.update_id] = e
            continue
        outcome = sync.update(e)
        quality.extend(outcome.quality)
        if e is after:
            reference.apply(dropped)  # the reference sees the whole stream
        if isinstance(e, BookDelta):
            reference.apply(e)
        if not sync.valid:
            invalid_steps += bool(quality)  # counted from the gap (not before the first snapshot)
            tops_while_invalid += sync.top() is not None or sync.best() is not None or sync.snapshot() is not None
            assert sync.last_update_id is None
            continue
        if e is injected:
            resynced = True
        if resynced and isinstance(e, BookDelta) and outcome.applied:
            assert sync.last_update_id == reference.last == e.last_update_id
            if snapshot_levels is None:
                assert book_sides(sync.book) == reference.sides()
            else:
                want_bids, want_asks = reference.sides()
                assert sync.top(100) == (want_bids[:100], want_asks[:100])
            ticker = seen.pop(e.last_update_id, None)
            if ticker is not None:
                checked += 1
                mismatched += not same_as_ticker(sync.best(), ticker)
        if outcome.applied and not resynced:
            # before the gap the book is the reference too
            assert sync.last_update_id == reference.last

    assert [q.kind for q in quality] == [QualityKind.BOOK_GAP, QualityKind.BOOK_RESYNC]
    gap, resync = quality
    assert gap.detail["reason"] == "gap" and gap.detail["field"] == "U"
    assert gap.detail["expected"] == dropped.first_update_id and gap.detail["got"] == after.first_update_id
    assert gap.detail["last_update_id"] == dropped.first_update_id - 1
    assert resync.detail["snapshot_update_id"] == x_diff.last_update_id
    assert resync.detail["buffered_replayed"] == 5 and resync.detail["buffered_dropped"] == 20
    assert resync.detail["last_update_id"] == events[arrives_after].last_update_id  # type: ignore[union-attr]
    assert invalid_steps == 25 and tops_while_invalid == 0  # the gap's diff and the 24 after it, until the snapshot
    assert (sync.gaps, sync.resyncs, sync.snapshots_loaded) == (1, 1, 2)
    assert checked > 100 and mismatched == 0
    print(f"\nafter the resync: bookTicker checked {checked}, mismatched {mismatched}")


# ---- hand-made books -----------------------------------------------------------------------

V, S = "binance", "ETH-USDT"


def delta(first: int, last: int, bids: Any = (), asks: Any = (), pu: int | None = None, ts: int = 1) -> BookDelta:
    return BookDelta(venue=V, symbol=S, event_ts_ns=ts, recv_ts_ns=ts, first_update_id=first, last_update_id=last,
                     prev_update_id=pu, bids=levels(bids), asks=levels(asks))


def snapshot(last: int, bids: Any, asks: Any, ts: int = 1) -> BookSnapshot:
    return BookSnapshot(venue=V, symbol=S, event_ts_ns=ts, recv_ts_ns=ts, last_update_id=last, bids=levels(bids),
                        asks=levels(asks))


BASE_BIDS = [("100", "1"), ("99", "2"), ("98", "3")]
BASE_ASKS = [("101", "1"), ("102", "2"), ("103", "3")]


def spot_sync(depth: int = 2, **kwargs: Any) -> SequencedBook:
    return SequencedBook(V, S, SPOT_RULES, depth=depth, **kwargs)


def live_spot(last: int = 10) -> SequencedBook:
    sync = spot_sync()
    sync.update(snapshot(last, BASE_BIDS, BASE_ASKS))
    assert sync.update(delta(last + 1, last + 1, [("97", "1")])).applied
    assert sync.state is SyncState.LIVE
    return sync


def test_spot_buffers_until_snapshot_drops_stale_and_checks_the_first_diff() -> None:
    sync = spot_sync()
    assert sync.update(delta(5, 8, [("100", "9")])) == (False, False, False, ())  # before any snapshot: buffered
    assert sync.update(delta(9, 12, [("99", "7")])) == (False, False, False, ())
    assert sync.top() is None and sync.best() is None and sync.last_update_id is None
    out = sync.update(snapshot(10, BASE_BIDS, BASE_ASKS))
    # 5-8 is stale (u <= 10); 9-12 bridges (U <= 11 <= u) and is replayed
    assert out.applied and out.valid and out.top_changed and out.quality == ()
    assert (sync.stale, sync.applied, sync.last_update_id) == (1, 1, 12)
    assert sync.top(3) == (list(levels([("100", "1"), ("99", "7"), ("98", "3")])), list(levels(BASE_ASKS)))
    assert sync.update(delta(13, 13, asks=[("101", "0")])).top_changed
    assert sync.best() == ((Decimal(100), Decimal(1)), (Decimal(102), Decimal(2)))


def test_spot_snapshot_then_first_diff_must_bridge() -> None:
    sync = spot_sync()
    sync.update(snapshot(10, BASE_BIDS, BASE_ASKS))
    assert sync.state is SyncState.SYNCED and sync.valid and sync.last_update_id == 10
    assert sync.update(delta(3, 10, [("100", "5")])) == (False, True, False, ())  # stale after the snapshot
    out = sync.update(delta(12, 14))  # U 12 > 11: update 11 is missing
    assert not out.valid and [q.detail["reason"] for q in out.quality] == ["gap"]
    assert out.quality[0].detail["expected"] == 11 and out.quality[0].detail["got"] == 12


def test_futures_rules_use_pu_and_keep_the_diff_holding_the_snapshot_id() -> None:
    sync = SequencedBook("binance-usdm", S, "futures")
    sync.update(BookDelta(venue="binance-usdm", symbol=S, event_ts_ns=1, recv_ts_ns=1, first_update_id=90,
                          last_update_id=99, prev_update_id=80, bids=levels([("100", "9")]), asks=()))
    sync.update(BookDelta(venue="binance-usdm", symbol=S, event_ts_ns=2, recv_ts_ns=2, first_update_id=100,
                          last_update_id=110, prev_update_id=99, bids=levels([("99", "8")]), asks=()))
    snap = BookSnapshot(venue="binance-usdm", symbol=S, event_ts_ns=3, recv_ts_ns=3, last_update_id=105,
                        bids=levels(BASE_BIDS), asks=levels(BASE_ASKS))
    out = sync.update(snap)
    # 90-99: u < 105, stale; 100-110 holds 105 (U <= L <= u) and is applied
    assert out.valid and sync.last_update_id == 110 and sync.stale == 1
    assert sync.top(2)[0] == list(levels([("100", "1"), ("99", "8")]))  # type: ignore[index]

    def fut(first: int, last: int, pu: int) -> BookDelta:
        return BookDelta(venue="binance-usdm", symbol=S, event_ts_ns=4, recv_ts_ns=4, first_update_id=first,
                         last_update_id=last, prev_update_id=pu, bids=(), asks=levels([("104", "1")]))

    assert sync.update(fut(115, 120, 110)).applied  # pu == previous u, even with ids skipped in between
    assert sync.update(fut(118, 120, 110)) == (False, True, False, ())  # a repeat: ignored, still valid
    assert sync.duplicates == 1
    out = sync.update(fut(125, 130, 122))
    assert not out.valid
    assert {k: out.quality[0].detail[k] for k in ("reason", "field", "expected", "got")} == {
        "reason": "gap", "field": "pu", "expected": 120, "got": 122}


def test_gap_invalidates_then_resync_replays_the_buffered_diffs() -> None:
    sync = live_spot(10)  # at 11
    out = sync.update(delta(13, 14, [("100", "4")], ts=50))
    assert (out.applied, out.valid, out.top_changed) == (False, False, False)
    (gap,) = out.quality
    assert gap.kind is QualityKind.BOOK_GAP and gap.event_ts_ns == 50
    assert {k: gap.detail[k] for k in ("reason", "expected", "got", "last_update_id", "rules")} == {
        "reason": "gap", "expected": 12, "got": 13, "last_update_id": 11, "rules": "spot"}
    assert sync.top() is None and sync.snapshot() is None and len(sync.book) == 0
    assert sync.update(delta(15, 16, [("99", "5")])).quality == ()  # buffered quietly while invalid
    assert sync.update(delta(17, 18)).quality == ()
    out = sync.update(snapshot(15, [("100", "1"), ("99", "1")], [("101", "1")], ts=60))
    assert out.valid and out.top_changed
    assert [q.kind for q in out.quality] == [QualityKind.BOOK_RESYNC]
    assert {k: out.quality[0].detail[k] for k in ("snapshot_update_id", "buffered_replayed", "buffered_dropped",
                                                  "last_update_id", "invalid_since_update_id")} == {
        "snapshot_update_id": 15, "buffered_replayed": 2, "buffered_dropped": 1, "last_update_id": 18,
        "invalid_since_update_id": 14}
    assert sync.top(2) == (list(levels([("100", "1"), ("99", "5")])), list(levels([("101", "1")])))
    assert (sync.gaps, sync.resyncs) == (1, 1)


def test_out_of_order_diffs() -> None:
    # 12 arrives after 13: the gap shows at 13; 12 then only waits for the next snapshot.
    sync = live_spot(10)
    d12, d13 = delta(12, 12, [("99", "9")]), delta(13, 13, [("98", "9")])
    assert [q.detail["reason"] for q in sync.update(d13).quality] == ["gap"]
    assert sync.update(d12) == (False, False, False, ())
    assert sync.gaps == 1 and sync.buffered == 2
    # A diff overlapping ids the book holds without continuing it (U <= last < u): out of order.
    sync = live_spot(10)
    out = sync.update(delta(11, 14))
    assert [(q.detail["reason"], q.detail["expected"], q.detail["got"]) for q in out.quality] == [
        ("out_of_order", 12, 11)]
    assert not sync.valid
    # Futures: pu behind the book's id while u is ahead.
    fut = SequencedBook("binance-coinm", "ETH-USD", FUTURES_RULES)
    fut.update(BookSnapshot(venue="binance-coinm", symbol="ETH-USD", event_ts_ns=1, recv_ts_ns=1, last_update_id=10,
                            bids=levels(BASE_BIDS), asks=levels(BASE_ASKS)))
    mk = {"venue": "binance-coinm", "symbol": "ETH-USD", "event_ts_ns": 1, "recv_ts_ns": 1, "bids": (), "asks": ()}
    assert fut.update(BookDelta(first_update_id=8, last_update_id=12, prev_update_id=7, **mk)).applied
    out = fut.update(BookDelta(first_update_id=11, last_update_id=15, prev_update_id=10, **mk))
    assert [(q.detail["reason"], q.detail["field"]) for q in out.quality] == [("out_of_order", "pu")]


def test_repeated_diff_is_ignored_without_invalidating() -> None:
    sync = live_spot(10)
    assert sync.update(delta(11, 11, [("97", "1")])) == (False, True, False, ())
    assert sync.update(delta(5, 9)) == (False, True, False, ())
    assert sync.valid and sync.duplicates == 2 and sync.gaps == 0


def test_crossed_book_invalidates_and_crossed_snapshot_is_refused() -> None:
    sync = live_spot(10)
    out = sync.update(delta(12, 12, bids=[("101", "1")]))  # a bid at the best ask
    assert not out.valid and sync.top() is None
    (gap,) = out.quality
    assert (gap.detail["reason"], gap.detail["bid"], gap.detail["ask"], gap.detail["update_id"]) == (
        "crossed", "101", "101", 12)
    out = sync.update(snapshot(13, [("102", "1")], [("101", "1")]))  # itself crossed
    assert out == (False, False, False, ()) and sync.snapshots_rejected == 1
    out = sync.update(snapshot(13, BASE_BIDS, BASE_ASKS))
    assert out.valid and [q.kind for q in out.quality] == [QualityKind.BOOK_RESYNC]


def test_newer_snapshot_replaces_a_valid_book_and_later_diffs_must_bridge_it() -> None:
    sync = live_spot(10)
    out = sync.update(snapshot(50, [("1", "1")], [("2", "1")]))
    assert out == (True, True, True, ()) and sync.best() == ((Decimal(1), Decimal(1)), (Decimal(2), Decimal(1)))
    assert sync.update(snapshot(60, [("1", "1")], [("2", "1")])) == (True, True, False, ())  # same top
    assert sync.update(delta(55, 60)).valid and sync.last_update_id == 60  # covered: stale, dropped
    out = sync.update(delta(62, 63))  # 61 never seen
    assert not out.valid and [q.kind for q in out.quality] == [QualityKind.BOOK_GAP]
    assert sync.update(snapshot(70, [("3", "1")], [("2", "1")])).valid is False  # newer but crossed: refused


def test_snapshot_older_than_the_buffer_is_refused_until_a_newer_one() -> None:
    sync = spot_sync()
    sync.update(delta(20, 22))
    sync.update(delta(23, 25))
    assert sync.update(snapshot(15, BASE_BIDS, BASE_ASKS)) == (False, False, False, ())  # 16..19 never seen
    assert sync.snapshots_rejected == 1 and sync.buffered == 2
    assert sync.update(snapshot(21, BASE_BIDS, BASE_ASKS)).valid
    assert sync.last_update_id == 25


def test_older_snapshot_on_a_valid_book_is_ignored_and_buffer_is_bounded() -> None:
    sync = live_spot(10)
    assert sync.update(snapshot(10, [("1", "1")], [("2", "1")])) == (False, True, False, ())
    assert sync.snapshots_ignored == 1 and sync.best() == ((Decimal(100), Decimal(1)), (Decimal(101), Decimal(1)))
    small = spot_sync(max_buffer=3)
    for i in range(5):
        small.update(delta(10 + i, 10 + i))
    assert small.buffered == 3 and small.buffer_overflow == 2


def test_top_ordering_depth_limits_and_top_changed() -> None:
    sync = spot_sync(depth=2)
    sync.update(snapshot(1, [("98", "1"), ("100", "2"), ("99", "3"), ("97", "0")], [("103", "1"), ("101", "2")]))
    assert sync.top(10) == (list(levels([("100", "2"), ("99", "3"), ("98", "1")])),
                            list(levels([("101", "2"), ("103", "1")])))  # best first; a zero size is no level
    assert sync.top(1) == (list(levels([("100", "2")])), list(levels([("101", "2")])))
    assert sync.top(0) == ([], [])
    with pytest.raises(ValueError):
        sync.top(101)
    with pytest.raises(ValueError):
        spot_sync(depth=101)
    # depth 2: bids 100, 99 and asks 101, 103 are watched
    assert not sync.update(delta(2, 2, bids=[("98", "5")])).top_changed  # third bid
    assert not sync.update(delta(3, 3, bids=[("50", "1")], asks=[("200", "1")])).top_changed  # new deep levels
    assert not sync.update(delta(4, 4, bids=[("99", "3")])).top_changed  # same size
    assert not sync.update(delta(5, 5, asks=[("150", "0")])).top_changed  # deleting an absent level
    assert sync.update(delta(6, 6, bids=[("99", "4")])).top_changed
    assert sync.update(delta(7, 7, asks=[("102", "1")])).top_changed  # enters the top 2
    assert sync.update(delta(8, 8, bids=[("100", "0")])).top_changed
    snap = sync.snapshot(2)
    assert snap is not None and snap.last_update_id == 8
    assert snap.bids == levels([("99", "4"), ("98", "5")]) and snap.asks == levels([("101", "2"), ("102", "1")])
    BookSnapshot.model_validate(snap.model_dump())  # what `trusted` built is a valid event


# ---- property: the book against a naive sorted-dict oracle ----------------------------------

level_st = st.tuples(st.integers(1, 40), st.integers(0, 3))  # (price, size); size 0 deletes
delta_st = st.tuples(st.lists(level_st, max_size=4), st.lists(level_st, max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.lists(delta_st, min_size=1, max_size=60), st.integers(1, 5))
def test_book_matches_a_naive_oracle(deltas: list[Any], depth: int) -> None:
    book = L2Book()
    oracle: tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]] = ({}, {})

    def oracle_top(n: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        return sorted(oracle[0].items(), reverse=True)[:n], sorted(oracle[1].items())[:n]

    for raw_bids, raw_asks in deltas:
        # bids and asks on separate price ranges, so the random book never crosses
        bids = [(Decimal(p), Decimal(s)) for p, s in raw_bids]
        asks = [(Decimal(p + 100), Decimal(s)) for p, s in raw_asks]
        before = oracle_top(depth)
        changed = book.apply(bids, asks, depth)
        for side, changes in zip(oracle, (bids, asks), strict=True):
            for p, s in changes:
                if s:
                    side[p] = s
                else:
                    side.pop(p, None)
        after = oracle_top(depth)
        if before != after:
            assert changed  # never a missed change
        if len(bids) + len(asks) == 1:
            assert changed == (before != after)  # exact for single-level diffs
        for n in (1, depth, 50):
            assert book.top(n) == oracle_top(n)
        best_bid, best_ask = book.best()
        assert best_bid == (max(oracle[0].items()) if oracle[0] else None)
        assert best_ask == (min(oracle[1].items()) if oracle[1] else None)
        assert len(book) == len(oracle[0]) + len(oracle[1])


# ---- publication rules ------------------------------------------------------------------------

MS = 1_000_000


def test_throttle_limits_and_never_loses_the_last_change() -> None:
    t = TopThrottle(100 * MS)
    assert t.offer(True, 0)  # first change: at once
    assert not t.offer(True, 50 * MS)  # held
    assert not t.offer(False, 99 * MS)
    assert t.offer(False, 100 * MS)  # the held change goes out at the interval's end
    assert not t.offer(False, 300 * MS)  # nothing held
    assert t.offer(True, 301 * MS)
    assert not t.offer(True, 302 * MS)
    assert not t.offer(False, 250 * MS)  # time going back never publishes early
    assert t.flush(302 * MS) and not t.flush(302 * MS)  # the idle flush takes what is held, once
    assert not t.offer(True, 350 * MS)  # the interval counts from the flush
    assert t.offer(False, 402 * MS)
    assert not t.offer(True, 450 * MS)
    t.drop()  # the book went invalid
    assert not t.offer(False, 10_000 * MS) and not t.flush(10_000 * MS)


def test_snapshot_schedule_takes_the_first_state_of_each_bucket() -> None:
    s = SnapshotSchedule(10 * 10**9)
    assert [s.due(t * 10**9) for t in (3, 5, 9, 10, 19, 25, 24, 40)] == [
        True, False, False, True, False, True, False, True]


# ---- the sequenced book under each venue's rules ----------------------------------------------

# Per rule set, worked by hand from the venues' documentation, after a snapshot at id 10:
# (a stale diff, the first diff that bridges the snapshot, a diff that continues it (the book is
# then at 15), a diff that leaves a gap and the gap's (field, expected, got)).
RULE_CASES: dict[str, dict[str, Any]] = {
    "spot": {"stale": (5, 10, None), "first": (9, 12, None), "next": (13, 15, None), "gap": (17, 18, None),
             "gap_detail": ("U", 16, 17)},
    "futures": {"stale": (5, 9, 4), "first": (8, 12, 7), "next": (14, 15, 12), "gap": (17, 18, 16),
                "gap_detail": ("pu", 15, 16)},
    # whole books: only snapshots come; a diff, should one come, would chain like spot's
    "whole_books": {"stale": (5, 10, None), "first": (11, 12, None), "next": (13, 15, None),
                    "gap": (17, 18, None), "gap_detail": ("U", 16, 17)},
}


@pytest.mark.parametrize("venue", sorted(VENUES))
def test_sequenced_book_follows_each_venues_rules(venue: str) -> None:
    rules = VENUES[venue].book_rules
    case = RULE_CASES[rules.name]  # a venue with new rules needs its hand-worked case here

    def diff(ids: tuple[int, int, int | None], bids: Any = ()) -> BookDelta:
        first, last, pu = ids
        return BookDelta(venue=venue, symbol=S, event_ts_ns=1, recv_ts_ns=1, first_update_id=first,
                         last_update_id=last, prev_update_id=pu, bids=levels(bids), asks=())

    sync = SequencedBook(venue, S, rules, depth=2)
    assert sync.update(BookSnapshot(venue=venue, symbol=S, event_ts_ns=1, recv_ts_ns=1, last_update_id=10,
                                    bids=levels(BASE_BIDS), asks=levels(BASE_ASKS))).valid
    assert sync.update(diff(case["stale"], [("100", "9")])) == (False, True, False, ())
    assert sync.update(diff(case["first"], [("100", "5")])).top_changed
    assert sync.update(diff(case["next"], [("99", "6")])).top_changed
    assert sync.last_update_id == 15 and sync.top(2)[0] == list(levels([("100", "5"), ("99", "6")]))  # type: ignore[index]
    out = sync.update(diff(case["gap"]))
    assert not out.valid and sync.top() is None
    (gap,) = out.quality
    assert (gap.detail["rules"], gap.detail["reason"]) == (rules.name, "gap")
    assert (gap.detail["field"], gap.detail["expected"], gap.detail["got"]) == case["gap_detail"]


@pytest.mark.parametrize("venue", [n for n, v in VENUES.items() if v.book_rules.name == "whole_books"])
def test_whole_book_venues_take_each_newer_snapshot_as_the_book(venue: str) -> None:
    sync = SequencedBook(venue, "BTC-USD", VENUES[venue].book_rules, depth=1)

    def snap(update_id: int, bid: str, ask: str) -> BookSnapshot:
        return BookSnapshot(venue=venue, symbol="BTC-USD", event_ts_ns=update_id, recv_ts_ns=update_id,
                            last_update_id=update_id, bids=levels([(bid, "1")]), asks=levels([(ask, "1")]))

    assert sync.update(snap(100, "10", "11")) == (True, True, True, ())
    assert sync.update(snap(200, "12", "13")) == (True, True, True, ())
    assert sync.update(snap(150, "1", "2")) == (False, True, False, ())  # older: ignored
    assert sync.best() == ((Decimal(12), Decimal(1)), (Decimal(13), Decimal(1)))
    assert sync.snapshot() is not None and sync.snapshot().last_update_id == 200  # type: ignore[union-attr]
    assert (sync.gaps, sync.snapshots_loaded, sync.snapshots_ignored) == (0, 2, 1)


def test_each_binance_market_keeps_its_own_rules() -> None:
    assert VENUES["binance"].book_rules == SPOT_RULES
    assert VENUES["binance-usdm"].book_rules == FUTURES_RULES
    assert VENUES["binance-coinm"].book_rules == FUTURES_RULES
    assert SequencedBook(V, S, "futures").rules is FUTURES_RULES
    assert rules_for_venue("bitstamp") is None


# ---- deep books and fine prices against a dict oracle ------------------------------------------


@pytest.mark.parametrize("front", [None, (16, 32, 64)], ids=["front as built", "small front"])
def test_deep_book_matches_a_dict_oracle_through_refills_and_trims(
        front: tuple[int, int, int] | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of levels a side, prices walking away and back: the sorted front of each side
    is drained (refilled from the dict) and overgrown (trimmed); tops, best and top_changed are
    checked against plain dicts sorted at every step. A small front (min, refill, max) makes
    refills and trims frequent."""
    if front is not None:
        for name, value in zip(("_FRONT_MIN", "_FRONT", "_FRONT_MAX"), front, strict=True):
            monkeypatch.setattr(orderbook, name, value)
    rng = random.Random(11)
    book = L2Book()
    oracle: tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]] = ({}, {})
    tick = Decimal("0.01")

    def oracle_top(n: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        return sorted(oracle[0].items(), reverse=True)[:n], sorted(oracle[1].items())[:n]

    def level(i: int) -> tuple[Decimal, Decimal]:
        return (Decimal(i) * tick, Decimal(rng.randint(1, 5)))

    mid = 300_000  # in ticks
    bids = [level(i) for i in range(mid - 3000, mid)]
    asks = [level(i) for i in range(mid + 1, mid + 3001)]
    book.load(bids, asks)
    oracle[0].update(bids)
    oracle[1].update(asks)
    depth = 5
    for step in range(3000):
        # the mid walks 1000 ticks down then 1000 up then down again: the top of one side is
        # deleted wholesale while the other side grows levels ahead of its front
        mid += -1 if step < 1000 or step >= 2000 else 1
        changes: tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]] = ([], [])
        for i in range(mid - 3, mid + 4):
            side = 0 if i <= mid else 1
            changes[side].append((Decimal(i) * tick, Decimal(rng.choice((0, 0, 1, 2)))))
        for i in rng.sample(range(mid - 4000, mid + 4000), 8):  # deep levels, either side
            if i != mid:
                changes[0 if i < mid else 1].append(level(i))
        # clear the book where the other side is now (a real book is never crossed)
        changes[0].extend((p, Decimal(0)) for p in list(oracle[0]) if p >= (mid + 1) * tick)
        changes[1].extend((p, Decimal(0)) for p in list(oracle[1]) if p <= mid * tick)
        before = oracle_top(depth)
        changed = book.apply(changes[0], changes[1], depth)
        for side_oracle, side_changes in zip(oracle, changes, strict=True):
            for p, sz in side_changes:
                if sz:
                    side_oracle[p] = sz
                else:
                    side_oracle.pop(p, None)
        after = oracle_top(depth)
        assert changed or before == after, step
        assert book.best() == (after[0][0], after[1][0])
        if step % 50 == 0:
            assert book.top(100) == oracle_top(100)
            assert len(book) == len(oracle[0]) + len(oracle[1])
    assert book.top(100) == oracle_top(100)
    bid_items = book.bids.items()
    assert bid_items == sorted(oracle[0].items()) and book.asks.items() == sorted(oracle[1].items())


def test_prices_finer_than_the_keys_rescale_the_book_exactly() -> None:
    book = L2Book()
    assert book.places == 8
    book.load(levels([("0.00001234", "1"), ("0.00001233", "2")]), levels([("0.00001236", "1")]))
    # ten places: would truncate onto 0.00001234's key at eight
    assert book.apply(levels([("0.0000123401", "5")]), ()) is True
    assert book.places == 10
    assert book.top(3)[0] == list(levels([("0.0000123401", "5"), ("0.00001234", "1"), ("0.00001233", "2")]))
    assert book.apply((), levels([("0.000012355", "3")]))  # between the best bid and ask
    assert book.best() == ((Decimal("0.0000123401"), Decimal(5)), (Decimal("0.000012355"), Decimal(3)))
    # a snapshot finer still loads exactly
    book.load(levels([("1.000000000001", "1"), ("1", "1")]), levels([("1.000000000002", "1")]))
    assert book.places == 12 and not book.crossed()
    assert book.top(2) == (list(levels([("1.000000000001", "1"), ("1", "1")])), list(levels([("1.000000000002", "1")])))
