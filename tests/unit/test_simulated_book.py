"""The simulated order books (streams.core.simulated_book through streams.core.simulation),
checked from the wire: every book message is decoded by the book topic's codec and applied to a
plain dict book written here (sizes are absolute, 0 deletes), independent of the code under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from schemas.codecs.book import decode_book_batch, encode_book_batch
from schemas.events import BookDelta, BookSnapshot, QualityKind, Trade
from schemas.wire import encode_trade_batch, trades_from_batch
from streams.core.orderbook import SequencedBook
from streams.core.simulation import TradeSimulator, default_symbol
from streams.core.venues.simulated import VENUE as SIM

START_NS = 1_723_161_600_000_000_000  # 2024-08-09T00:00:00Z
SYMBOLS = ("BTC-USDT", "ETH-USDT")


def make(seed: int, rate: float = 20.0, gaps: float = 0.0) -> TradeSimulator:
    return TradeSimulator([default_symbol(s, rate) for s in SYMBOLS], seed=seed, start_ns=START_NS,
                          books=True, book_gap_rate=gaps)


@dataclass
class DictBook:
    """The oracle: levels as price -> size, the last update id, nothing else."""

    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    last_id: int | None = None

    def apply(self, update: BookDelta | BookSnapshot) -> None:
        if isinstance(update, BookSnapshot):
            self.bids, self.asks = dict(update.bids), dict(update.asks)
            self.last_id = update.last_update_id
            return
        assert self.last_id is not None and update.first_update_id == self.last_id + 1
        self.last_id = update.last_update_id
        for side, levels in ((self.bids, update.bids), (self.asks, update.asks)):
            for price, size in levels:
                if size == 0:
                    side.pop(price, None)
                else:
                    side[price] = size

    def best(self) -> tuple[Decimal, Decimal]:
        return max(self.bids), min(self.asks)


@dataclass
class Event:
    ts: int
    order: int  # trades after book updates of the same time: the fill diff comes with its trade
    trade: Trade | None = None
    update: BookDelta | BookSnapshot | None = None


def wire_events(simulator: TradeSimulator, windows: int) -> dict[str, list[Event]]:
    """Per symbol, the trades and book updates as decoded from their wire messages, merged by
    event time (a book update before a trade of the same time)."""
    out: dict[str, list[Event]] = {s: [] for s in SYMBOLS}
    for _ in range(windows):
        window = simulator.next_market_window()
        for book in window.books:
            _, symbol, updates = decode_book_batch(encode_book_batch(book.venue, book.symbol, book.updates))
            out[symbol] += [Event(u.event_ts_ns, 0, update=u) for u in updates]
        for batch in window.trades:
            trades = trades_from_batch(encode_trade_batch(batch.venue, batch.symbol, batch.trades))
            out[batch.symbol] += [Event(t.event_ts_ns, 1, trade=t) for t in trades]
    for events in out.values():
        events.sort(key=lambda e: (e.ts, e.order))  # stable: publication order within a kind
    return out


def states(events: list[Event]) -> Iterator[tuple[Event, DictBook]]:
    book = DictBook()
    for event in events:
        if event.update is not None:
            book.apply(event.update)
        yield event, book


def test_every_trade_lies_within_the_spread_and_takes_its_size_from_the_level_it_hits() -> None:
    per_symbol = wire_events(make(5, rate=50.0), 1200)  # a minute of event time
    for symbol, events in per_symbol.items():
        trades = [e.trade for e in events if e.trade is not None]
        assert len(trades) > 2000
        # the oracle reads "the book at the trade's time" from event times: they must be distinct
        assert len({t.event_ts_ns for t in trades}) == len(trades)
        book = DictBook()
        before: dict[Decimal, Decimal] | None = None
        for i, event in enumerate(events):
            if event.update is not None:
                nxt = events[i + 1] if i + 1 < len(events) else None
                if isinstance(event.update, BookDelta) and nxt is not None and nxt.trade is not None \
                        and nxt.ts == event.ts:
                    # the fill: what the level at the trade's price held just before it
                    hit = book.asks if nxt.trade.side == "buy" else book.bids
                    before = dict(hit)
                book.apply(event.update)
                continue
            trade = event.trade
            assert trade is not None and before is not None, f"{symbol}: a trade with no fill diff"
            bid, ask = book.best()
            assert bid <= trade.price <= ask, f"{symbol} trade {trade.trade_id} at {trade.price}: book {bid}/{ask}"
            hit_side = book.asks if trade.side == "buy" else book.bids
            # the side the taker hit had the trade's price as its best level, with enough size
            assert trade.price == (min(before) if trade.side == "buy" else max(before))
            assert before[trade.price] >= trade.size
            assert before[trade.price] - trade.size == hit_side.get(trade.price, Decimal(0))
            before = None


def test_the_book_is_never_crossed_and_always_100_levels_deep_with_plausible_spreads() -> None:
    per_symbol = wire_events(make(9, rate=50.0), 600)
    for symbol, events in per_symbol.items():
        spreads: list[Decimal] = []
        tops: set[tuple[tuple[Decimal, Decimal], ...]] = set()
        for event, book in states(events):
            if event.update is None:
                continue
            bid, ask = book.best()
            assert bid < ask, f"{symbol} crossed at update {book.last_id}: {bid} >= {ask}"
            assert len(book.bids) >= 100 and len(book.asks) >= 100
            assert all(p > 0 and s > 0 for side in (book.bids, book.asks) for p, s in side.items())
            spreads.append(ask - bid)
            tops.add(tuple(sorted(book.bids.items())[-5:]))
        spreads.sort()
        price = {"BTC-USDT": Decimal(60000), "ETH-USDT": Decimal(2600)}[symbol]
        # a tick or a few most of the time, wider for a moment after a fill emptied the best levels
        assert spreads[0] == Decimal("0.01")
        assert spreads[len(spreads) // 2] <= Decimal("0.05")
        assert spreads[len(spreads) * 9 // 10] <= price * Decimal("0.0001")  # 1 bp
        assert len(set(spreads)) > 5 and len(tops) > 1000  # the book moves: prices and sizes
        # levels of a few trades each (the median trade is 0.05), of many sizes
        sizes = sorted([*book.bids.values(), *book.asks.values()])
        assert Decimal("0.1") <= sizes[len(sizes) // 2] <= Decimal(1)
        assert len(set(sizes)) > len(sizes) // 2


def test_one_seed_gives_identical_books_another_seed_other_books() -> None:
    def book_bytes(seed: int) -> list[bytes]:
        sim = make(seed)
        return [encode_book_batch(b.venue, b.symbol, b.updates) for _ in range(600)
                for b in sim.next_market_window().books]

    first = book_bytes(3)
    assert first == book_bytes(3)
    assert first != book_bytes(4)
    assert len(first) > 500


def test_books_leave_the_trades_as_they_were() -> None:
    def trade_bytes(books: bool) -> list[bytes]:
        sim = TradeSimulator([default_symbol(s, 50.0) for s in SYMBOLS], seed=7, start_ns=START_NS, books=books)
        return [encode_trade_batch(b.venue, b.symbol, b.trades) for _ in range(300) for b in sim.next_window()]

    assert trade_bytes(True) == trade_bytes(False)


def test_a_snapshot_every_second_of_event_time_at_the_current_update_id() -> None:
    events = wire_events(make(2), 200)["BTC-USDT"]  # ten seconds
    snapshots = [e.update for e in events if isinstance(e.update, BookSnapshot)]
    assert [s.event_ts_ns - START_NS for s in snapshots] == [i * 1_000_000_000 for i in range(10)]
    ids = [e.update.last_update_id for e in events if e.update is not None]
    assert ids == sorted(ids)  # a snapshot repeats the id of the diff before it, diffs go up by one
    built: DictBook | None = None  # from the first snapshot and the diffs only
    for event in events:
        update = event.update
        if isinstance(update, BookSnapshot):
            if built is None:
                built = DictBook()
                built.apply(update)
            else:  # the whole book, as the diffs built it
                assert (dict(update.bids), dict(update.asks), update.last_update_id) == \
                    (built.bids, built.asks, built.last_id)
        elif update is not None:
            assert built is not None
            built.apply(update)


@pytest.mark.parametrize("depth", [1, 5, 20, 100])
def test_the_book_agent_keeps_the_simulated_book_at_any_depth(depth: int) -> None:
    sim = make(4)
    agent = SequencedBook("sim", "BTC-USDT", SIM.book_rules, depth=depth)
    oracle = DictBook()
    for _ in range(400):
        for batch in sim.next_market_window().books:
            if batch.symbol != "BTC-USDT":
                continue
            for update in batch.updates:
                assert not agent.update(update).quality
                oracle.apply(update)
            top = agent.top(depth)
            assert top is not None
            bids, asks = top
            assert bids == sorted(oracle.bids.items(), reverse=True)[:depth]
            assert asks == sorted(oracle.asks.items())[:depth]
            assert len(bids) == len(asks) == depth


def test_dropped_diffs_are_gaps_the_book_agent_reports_and_resyncs_from_the_next_snapshot() -> None:
    sim = make(6, gaps=0.02)
    agent = SequencedBook("sim", "ETH-USDT", SIM.book_rules, depth=5)
    kinds: list[QualityKind] = []
    ids: list[int] = []
    for _ in range(600):
        for batch in sim.next_market_window().books:
            if batch.symbol == "ETH-USDT":
                for update in batch.updates:
                    if isinstance(update, BookDelta):
                        ids.append(update.last_update_id)
                    kinds += [q.kind for q in agent.update(update).quality]
    missing = sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))
    assert missing, "some diffs must be dropped at a 2 % rate"
    assert kinds.count(QualityKind.BOOK_GAP) >= 5
    # each gap is followed by a resync before the next gap, and the book ends valid
    assert kinds[::2] == [QualityKind.BOOK_GAP] * len(kinds[::2])
    assert kinds[1::2] == [QualityKind.BOOK_RESYNC] * len(kinds[1::2])
    assert agent.valid or kinds[-1] == QualityKind.BOOK_GAP


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="book gaps need books"):
        TradeSimulator([default_symbol("BTC-USDT")], seed=1, start_ns=0, book_gap_rate=0.1)
    with pytest.raises(ValueError, match="gap_rate"):
        TradeSimulator([default_symbol("BTC-USDT")], seed=1, start_ns=0, books=True, book_gap_rate=1.0)
