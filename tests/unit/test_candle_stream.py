"""Window logic of every interval: property tests for arrival order and revisions, roll-up
equality, idle close, duplicate dropping and state round trips."""

from __future__ import annotations

import random
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Candle
from schemas.wire import TradeRow
from streams.core.candle_stream import CandleStream

SEC = 10**9
MIN = 60 * SEC
LATENESS = 5 * SEC


@st.composite
def trade_series(draw: st.DrawFn) -> list[TradeRow]:
    n = draw(st.integers(1, 120))
    gaps = draw(st.lists(st.integers(1, 40 * SEC), min_size=n, max_size=n))  # strictly increasing times
    prices = draw(st.lists(st.integers(1, 500), min_size=n, max_size=n))
    sizes = draw(st.lists(st.integers(1, 9), min_size=n, max_size=n))
    ts, out = 1_700_000_000 * SEC, []
    for i in range(n):
        ts += gaps[i]
        out.append(TradeRow(str(i), Decimal(prices[i]) / 100, Decimal(sizes[i]) / 1000, "buy", ts, ts))
    return out


def final_candles(trades: list[TradeRow], batch: int = 7, grace_ns: int = 0) -> dict[tuple[str, int], Candle]:
    """The last emission of every window, plus the still-open windows at the end."""
    stream = CandleStream("v", "A-B", lateness_ns=LATENESS, grace_ns=grace_ns)
    last: dict[tuple[str, int], Candle] = {}
    for i in range(0, len(trades), batch):
        for c in stream.update(trades[i : i + batch]).candles:
            last[(c.interval.value, c.open_ts_ns)] = c
    for c in stream.open_candles():
        last[(c.interval.value, c.open_ts_ns)] = c
    return {k: c.model_copy(update={"is_final": False, "revision": 0}) for k, c in last.items()}


@settings(max_examples=60, deadline=None)
@given(trade_series(), st.randoms(use_true_random=False), st.integers(1, 20))
def test_any_arrival_order_within_lateness_gives_the_sorted_result(trades, rnd: random.Random, batch: int) -> None:
    # arrival key = event time + a delay below the lateness: every trade arrives before the
    # watermark can pass it, so no trade is late and the result must not depend on order
    shuffled = sorted(trades, key=lambda t: t.event_ts_ns + rnd.randrange(LATENESS))
    assert final_candles(shuffled, batch) == final_candles(trades, batch)


@settings(max_examples=60, deadline=None)
@given(trade_series(), st.randoms(use_true_random=False))
def test_revisions_only_grow_and_final_is_last(trades, rnd: random.Random) -> None:
    # delays up to 4x the lateness: some trades are late, some make revisions within the grace
    shuffled = sorted(trades, key=lambda t: t.event_ts_ns + rnd.randrange(4 * LATENESS))
    stream = CandleStream("v", "A-B", lateness_ns=LATENESS, grace_ns=2 * LATENESS)
    seen: dict[tuple[str, int], list[Candle]] = {}
    for i in range(0, len(shuffled), 3):
        for c in stream.update(shuffled[i : i + 3]).candles:
            seen.setdefault((c.interval.value, c.open_ts_ns), []).append(c)
    for emissions in seen.values():
        revisions = [c.revision for c in emissions]
        assert revisions == sorted(revisions)
        finals = [c.is_final for c in emissions]
        assert not any(finals[:-1])  # nothing after a final emission
        non_final = [c.revision for c in emissions if not c.is_final]
        assert len(non_final) == len(set(non_final))  # each revision emitted once (the final repeats the last)


def rollup(candles: list[Candle]) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal, int]:
    return (candles[0].open, max(c.high for c in candles), min(c.low for c in candles), candles[-1].close,
            sum((c.volume for c in candles), Decimal(0)), sum(c.trades for c in candles))


@settings(max_examples=40, deadline=None)
@given(trade_series(), st.randoms(use_true_random=False))
def test_higher_intervals_equal_the_rolled_up_1m_candles(trades, rnd: random.Random) -> None:
    shuffled = sorted(trades, key=lambda t: t.event_ts_ns + rnd.randrange(3 * LATENESS))  # some late ones
    got = final_candles(shuffled, batch=5)
    minutes = sorted((c for (iv, _), c in got.items() if iv == "1m"), key=lambda c: c.open_ts_ns)
    for (interval, open_ts), candle in got.items():
        if interval == "1m":
            continue
        inside = [m for m in minutes if open_ts <= m.open_ts_ns < open_ts + candle.interval.ns]
        assert rollup(inside) == (candle.open, candle.high, candle.low, candle.close, candle.volume, candle.trades)


def t(i: int, ts: int, price: str = "10") -> TradeRow:
    return TradeRow(str(i), Decimal(price), Decimal("1"), "buy", ts, ts)


def test_idle_close_emits_a_quiet_markets_candle_without_another_trade() -> None:
    stream = CandleStream("v", "A-B", intervals=("1m", "5m"), lateness_ns=LATENESS)
    assert stream.update([t(1, 10 * SEC), t(2, 20 * SEC)]).candles == []
    # the caller's clock says event time must be past 1m + lateness by now
    assert stream.advance_to(30 * SEC) == []
    closed = stream.advance_to(MIN)
    assert [(c.interval.value, c.open_ts_ns, c.trades, c.is_final) for c in closed] == [("1m", 0, 2, True)]
    assert [c.interval.value for c in stream.advance_to(5 * MIN)] == ["5m"]
    # a trade for the idle-closed minute is now late, for every interval
    update = stream.update([t(3, 50 * SEC)])
    assert update.candles == [] and [x.trade_id for x in update.late] == ["3"]


def test_duplicates_are_dropped_and_reported() -> None:
    stream = CandleStream("v", "A-B", intervals=("1m",), dedupe_capacity=3)
    stream.update([t(1, 1), t(2, 2), t(3, 3)])
    update = stream.update([t(2, 2), t(4, 4)])
    assert [x.trade_id for x in update.duplicates] == ["2"]
    stream.update([t(5, 5), t(6, 6)])  # pushes 1..3 out of the bounded memory
    assert stream.update([t(1, 7)]).duplicates == []


def test_state_round_trip_continues_exactly() -> None:
    rows = [t(i, i * 7 * SEC, str(10 + i % 5)) for i in range(60)]
    whole = CandleStream("v", "A-B", lateness_ns=LATENESS, grace_ns=LATENESS)
    expected = whole.update(rows).candles + whole.open_candles()
    first = CandleStream("v", "A-B", lateness_ns=LATENESS, grace_ns=LATENESS)
    got = first.update(rows[:25]).candles
    second = CandleStream("v", "A-B", lateness_ns=LATENESS, grace_ns=LATENESS)
    second.restore(orjson.loads(orjson.dumps(first.to_state())))  # through JSON, as stored
    got += second.update(rows[25:]).candles + second.open_candles()
    assert got == expected
