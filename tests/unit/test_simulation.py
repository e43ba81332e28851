"""The seeded synthetic feed: determinism, sanity, and the runner's limits and pacing."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from decimal import Decimal
from statistics import median

import pytest

from schemas.codecs.book import decode_book_batch
from schemas.events import BookSnapshot, Trade
from schemas.topics import BOOK, TRADES
from schemas.wire import decode_trade_batch, encode_trade_batch, trades_from_batch
from streams.core.simulation import FixedPointText, SimSymbol, TradeSimulator, default_symbol
from streams.ingest.publisher import ListPublisher
from streams.ingest.simulated import run_simulator, simulate

START_NS = 1_723_161_600_000_000_000  # 2024-08-09T00:00:00Z


def make(seed: int, rate: float = 50.0, **kwargs: object) -> TradeSimulator:
    symbols = [default_symbol("BTC-USDT", rate), default_symbol("ETH-USDT", rate)]
    return TradeSimulator(symbols, seed=seed, start_ns=START_NS, **kwargs)  # type: ignore[arg-type]


def wire(simulator: TradeSimulator, windows: int) -> list[bytes]:
    return [encode_trade_batch(b.venue, b.symbol, b.trades) for _ in range(windows) for b in simulator.next_window()]


def test_the_same_seed_gives_identical_bytes() -> None:
    first, second = wire(make(7), 400), wire(make(7), 400)
    assert first == second
    assert len(first) > 100


def test_another_seed_or_start_gives_other_bytes() -> None:
    assert wire(make(7), 100) != wire(make(8), 100)
    later = TradeSimulator(
        [default_symbol("BTC-USDT", 50.0), default_symbol("ETH-USDT", 50.0)], seed=7, start_ns=START_NS + 1
    )
    assert wire(make(7), 100) != wire(later, 100)


def test_the_runner_output_is_deterministic() -> None:
    outputs = []
    for _ in range(2):
        publisher = ListPublisher()
        simulate(publisher, ["BTC-USDT", "ETH-USDT"], seed=3, start_ns=START_NS, trades_per_s=500, n_trades=5000)
        outputs.append(publisher.messages)
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    ("seed", "rate", "books", "max_batch"),
    [(7, 50.0, False, 100), (11, 30_000.0, False, 100), (5, 400.0, True, 3), (2, 9_000.0, False, 1)],
)
def test_the_publishing_path_writes_the_bytes_the_trade_objects_encode_to(
    seed: int, rate: float, books: bool, max_batch: int
) -> None:
    """Oracle: the Trade objects of `next_market_window`, encoded by the codec; the feed's
    columnar path (`next_wire_window`) must give the same messages, counts, ids and times, and
    leave the books as they were."""
    objects, columns = make(seed, rate, books=books, max_batch=max_batch), make(seed, rate, books=books,
                                                                                max_batch=max_batch)  # fmt: skip
    for _ in range(60):
        expected, got = objects.next_market_window(), columns.next_wire_window()
        assert [b.payload for b in got.trades] == [encode_trade_batch(b.venue, b.symbol, b.trades)
                                                   for b in expected.trades]  # fmt: skip
        assert [(b.venue, b.symbol, b.n_trades, b.last_id, b.first_ns, b.last_ns) for b in got.trades] == [
            (b.venue, b.symbol, len(b.trades), b.trades[-1].trade_id, b.trades[0].event_ts_ns,
             b.trades[-1].event_ts_ns) for b in expected.trades]  # fmt: skip
        assert got.books == expected.books


def test_a_limited_window_keeps_its_first_trades_in_order() -> None:
    whole, cut = make(4, 5_000.0), make(4, 5_000.0)
    rows = [row for b in whole.next_wire_window().trades for row in decode_trade_batch(b.payload)[2]]
    kept = [row for b in cut.next_wire_window(limit=317).trades for row in decode_trade_batch(b.payload)[2]]
    assert len(rows) > 317
    assert kept == rows[:317]
    assert cut.next_wire_window(limit=0).trades == []


@pytest.mark.parametrize("places", [2, 4])
def test_fixed_point_text_is_the_decimal_format(places: int) -> None:
    text = FixedPointText(places, max_entries=50)  # small: the cache is cleared many times over
    for units in [*range(1, 300), *(10**k + d for k in range(1, 19) for d in (-1, 0, 1)), 2**63 - 1]:
        assert text[units] == format(Decimal(units).scaleb(-places), "f"), units
        assert text[units] == format(Decimal(units).scaleb(-places), "f")  # from the cache, when kept
    assert len(text) <= 50


def test_trades_are_sane() -> None:
    simulator = make(11, rate=200.0, max_batch=20)
    per_symbol: dict[str, list[Trade]] = defaultdict(list)
    window_end = START_NS
    for _ in range(2000):
        window_start, window_end = window_end, window_end + simulator.window_ns
        for batch in simulator.next_window():
            assert 1 <= len(batch.trades) <= 20
            assert all(window_start <= t.event_ts_ns < window_end for t in batch.trades)
            # What travels decodes into valid models (the generator skips validation).
            assert trades_from_batch(encode_trade_batch(batch.venue, batch.symbol, batch.trades)) == batch.trades
            per_symbol[batch.symbol].extend(batch.trades)
    assert set(per_symbol) == {"BTC-USDT", "ETH-USDT"}
    for symbol, trades in per_symbol.items():
        assert [int(t.trade_id) for t in trades] == list(range(1, len(trades) + 1))
        times = [t.event_ts_ns for t in trades]
        assert times == sorted(times)
        assert all(t.venue == "sim" and t.recv_ts_ns == t.event_ts_ns for t in trades)
        assert all(t.price > 0 and t.size > 0 for t in trades)
        assert all(t.price.as_tuple().exponent == -2 and t.size.as_tuple().exponent == -4 for t in trades)
        assert {t.side.value for t in trades} == {"buy", "sell"}
        # 100 s at 200 trades/s: Poisson count within 5 sigma.
        assert abs(len(trades) - 20_000) < 5 * math.sqrt(20_000), symbol
        assert median(float(t.size) for t in trades) == pytest.approx(0.05, rel=0.1)
        # A random walk of 0.05 % per sqrt(s) stays within a few percent over 100 s.
        start = Decimal("60000") if symbol == "BTC-USDT" else Decimal("2600")
        assert all(abs(t.price / start - 1) < Decimal("0.05") for t in trades)


def test_trades_move_with_their_side() -> None:
    simulator = make(5, rate=100.0)
    trades = [t for _ in range(500) for b in simulator.next_window() if b.symbol == "BTC-USDT" for t in b.trades]
    moves = [(b.price - a.price, b.side.value) for a, b in itertools.pairwise(trades) if b.price != a.price]
    assert all((diff > 0) == (side == "buy") for diff, side in moves)


def test_n_trades_is_exact_and_fast_runs_need_a_limit() -> None:
    publisher = ListPublisher()
    summary = simulate(publisher, ["BTC-USDT"], seed=1, start_ns=START_NS, trades_per_s=10_000, n_trades=1234)
    rows = [row for m in publisher.messages for row in decode_trade_batch(m.value)[2]]
    assert summary.trades == len(rows) == 1234
    assert summary.messages == len(publisher.messages)
    assert summary.last_trade_ids == {"sim:BTC-USDT": "1234"}
    assert {m.topic for m in publisher.messages} == {TRADES.name}
    assert {m.key for m in publisher.messages} == {b"sim:BTC-USDT"}
    assert all(len(decode_trade_batch(m.value)[2]) <= 100 for m in publisher.messages)
    with pytest.raises(ValueError, match="n_trades or duration_s"):
        simulate(ListPublisher(), ["BTC-USDT"], seed=1, start_ns=START_NS)


def test_with_books_the_runner_publishes_each_symbols_book_on_the_book_topic_before_its_trades() -> None:
    publisher = ListPublisher()
    summary = simulate(publisher, ["BTC-USDT", "ETH-USDT"], seed=4, start_ns=START_NS, books=True,
                       namespace="sim-2.", duration_s=3.0)
    books = publisher.on_topic(BOOK.full_name("sim-2."))
    assert summary.book_messages == len(books) > 0
    decoded = [decode_book_batch(m.value) for m in books]
    assert {m.key for m in books} == {b"sim:BTC-USDT", b"sim:ETH-USDT"}
    assert all(m.key == f"{venue}:{symbol}".encode() for m, (venue, symbol, _) in zip(books, decoded, strict=True))
    assert summary.book_updates == sum(len(updates) for _, _, updates in decoded)
    # three seconds: a whole snapshot at 0, 1 and 2 s per symbol, diffs in between
    snapshots = [u for _, _, updates in decoded for u in updates if isinstance(u, BookSnapshot)]
    assert len(snapshots) == 6 and all(len(s.bids) >= 100 and len(s.asks) >= 100 for s in snapshots)
    first_trade = next(i for i, m in enumerate(publisher.messages) if m.topic == TRADES.full_name("sim-2."))
    assert publisher.messages[0].topic == BOOK.full_name("sim-2.") and first_trade > 0
    # without books (the default: the as-fast-as-possible mode), the trades alone, unchanged
    alone = ListPublisher()
    simulate(alone, ["BTC-USDT", "ETH-USDT"], seed=4, start_ns=START_NS, namespace="sim-2.", duration_s=3.0)
    assert alone.messages == publisher.on_topic(TRADES.full_name("sim-2."))


def test_duration_limits_event_time() -> None:
    publisher = ListPublisher()
    simulator = TradeSimulator([default_symbol("ETH-USDT", 100)], seed=2, start_ns=START_NS)
    summary = run_simulator(simulator, publisher, namespace="sim-1.", duration_s=3.0)
    assert {m.topic for m in publisher.messages} == {TRADES.full_name("sim-1.")}
    assert simulator.now_ns == START_NS + 3 * 10**9
    assert summary.first_event_ns is not None and summary.last_event_ns is not None
    assert START_NS <= summary.first_event_ns <= summary.last_event_ns < START_NS + 3 * 10**9
    assert summary.trades > 200


class FakeWall:
    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns
        self.sleeps = 0

    def __call__(self) -> int:
        return self.now_ns

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now_ns += round(seconds * 1e9)


def test_paced_runs_publish_each_window_once_the_wall_clock_has_passed_it() -> None:
    wall = FakeWall(START_NS)
    published_at: list[tuple[int, int]] = []  # (wall ns at publish, latest event ns in the message)

    class Recorder(ListPublisher):
        def publish(self, topic: str, key: bytes, value: bytes) -> None:
            super().publish(topic, key, value)
            published_at.append((wall.now_ns, max(r.event_ts_ns for r in decode_trade_batch(value)[2])))

    summary = simulate(
        Recorder(), ["ETH-USDT"], seed=4, trades_per_s=200, paced=True, duration_s=2.0, wall_ns=wall, sleep=wall.sleep
    )
    assert summary.first_event_ns is not None and summary.first_event_ns >= START_NS  # started at the wall clock
    assert wall.sleeps == 40  # one per 50 ms window
    assert all(0 <= at - event <= 50_000_000 for at, event in published_at)


def test_should_stop_ends_a_paced_run() -> None:
    wall = FakeWall(START_NS)
    calls = iter(range(10**6))
    summary = simulate(
        ListPublisher(),
        ["ETH-USDT"],
        seed=4,
        paced=True,
        should_stop=lambda: next(calls) >= 10,
        wall_ns=wall,
        sleep=wall.sleep,
        clock=lambda: (wall.now_ns - START_NS) / 1e9,
    )
    assert wall.now_ns == START_NS + 10 * 50_000_000
    assert summary.elapsed_s == 0.5  # the ten waits, on the same fake clock


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        SimSymbol("BTC-USDT", start_price=Decimal(0))
    with pytest.raises(ValueError):
        TradeSimulator([default_symbol("BTC-USDT")] * 2, seed=1, start_ns=0)
    with pytest.raises(ValueError):
        TradeSimulator([default_symbol("BTC-USDT")], seed=1, start_ns=0, venue="Not A Venue")
    assert default_symbol("eth-usdt").symbol == "ETH-USDT"
