"""The API's read model (api/read_model.py) and its store fallback (api/market_memory.py), pure:
hand-worked oracles for the 24 h volume window, the latest trade and its tie rules, candles with
revisions plus buckets aggregated from trades, and when memory says it does not cover."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest

from api.market_memory import MemoryMarket
from api.read_model import MemTrade, NotCovered, ReadModel, VersionedCandle, candle_version
from api.ws.feed import apply_candle, apply_quality, apply_trade_batch
from api.ws.hub import MarketHub
from infra.store.repository import CandleRow, FeedState, LastTrade
from schemas.events import Candle, Interval, QualityEvent, QualityKind, Side, Trade
from schemas.wire import encode_event, encode_trade_batch

S = 10**9
MIN = 60 * S
DAY = 86_400 * S
T0 = 1_723_161_600 * S  # 2024-08-09T00:00:00Z, a day boundary


def D(text: str) -> Decimal:
    return Decimal(text)


def trade(ns: int, tid: str, price: str, size: str) -> MemTrade:
    return MemTrade(ns, tid, D(price), D(size))


def warm_model(*trades: MemTrade, venue: str = "v", symbol: str = "AAA-USDT") -> ReadModel:
    model = ReadModel()
    model.apply_trades(venue, symbol, list(trades))
    model.warm(venue, symbol, [], {i.value: (0, []) for i in Interval}, None)
    return model


def test_volume_is_the_sum_over_the_24_hours_ending_at_the_latest_trade() -> None:
    model = warm_model(
        trade(T0, "1", "10", "1.5"),  # exactly 24 h before the last: outside (t - 24h, t]
        trade(T0 + 1, "2", "11", "0.25"),
        trade(T0 + DAY // 2, "3", "12", "2"),
    )
    assert model.volume_24h("AAA-USDT", "v", T0 + DAY // 2) == D("3.75")  # all three in the window
    model.apply_trades("v", "AAA-USDT", [trade(T0 + DAY, "4", "13", "0.5")])
    # hand-worked: 0.25 + 2 + 0.5; trade 1 sits on the open bound and drops out
    assert model.volume_24h("AAA-USDT", "v", T0 + DAY) == D("2.75")
    model.apply_trades("v", "AAA-USDT", [trade(T0 + DAY + 2, "5", "13", "1")])
    assert model.volume_24h("AAA-USDT", "v", T0 + DAY + 2) == D("3.5")  # trade 2 out, trade 5 in


def test_a_resent_trade_counts_once_and_a_window_not_ending_at_the_last_trade_is_not_covered() -> None:
    model = warm_model(trade(T0, "1", "10", "1"), trade(T0 + 5, "2", "10", "2"))
    model.apply_trades("v", "AAA-USDT", [trade(T0 + 5, "2", "10", "2")])  # the same (time, id) again
    assert model.volume_24h("AAA-USDT", "v", T0 + 5) == D("3")
    with pytest.raises(NotCovered):
        model.volume_24h("AAA-USDT", "v", T0)


def test_last_trade_ties_and_the_default_venue() -> None:
    model = ReadModel()
    model.apply_trades("kraken", "AAA-USDT", [trade(T0 + 7, "9", "100", "1")])
    model.apply_trades("binance", "AAA-USDT", [trade(T0 + 7, "1", "99", "1"), trade(T0 + 7, "2", "98", "1")])
    with pytest.raises(NotCovered):  # nothing is answered before the store filled in the past
        model.last_trade("AAA-USDT", None)
    for venue in ("kraken", "binance"):
        model.warm(venue, "AAA-USDT", [], {}, None)
    # same event time on both venues: the alphabetically first venue; on it the highest trade id
    assert model.last_trade("AAA-USDT", None) == LastTrade(D("98"), T0 + 7, "binance")
    assert model.last_trade("AAA-USDT", "kraken") == LastTrade(D("100"), T0 + 7, "kraken")
    model.apply_trades("kraken", "AAA-USDT", [trade(T0 + 8, "10", "101", "1")])
    assert model.last_trade("AAA-USDT", None).venue == "kraken"
    # an out-of-order trade is counted but does not become the last
    model.apply_trades("kraken", "AAA-USDT", [trade(T0 + 3, "8", "1", "4")])
    assert model.last_trade("AAA-USDT", "kraken").price == D("101")
    assert model.volume_24h("AAA-USDT", "kraken", T0 + 8) == D("6")


def test_candles_latest_revision_then_buckets_from_trades_after_the_last_candle() -> None:
    model = ReadModel()
    trades = [
        trade(T0 + 10 * S, "1", "100", "1"),  # minute 0 (closed, stored as a candle below)
        trade(T0 + MIN + 1 * S, "2", "105", "0.5"),  # minute 1: open 105
        trade(T0 + MIN + 2 * S, "4", "103", "0.25"),
        trade(T0 + MIN + 2 * S, "3", "108", "1"),  # same time, lower id: before "4" (close stays 103)
        trade(T0 + 3 * MIN, "5", "90", "2"),  # minute 3 (minute 2 has no trade)
    ]
    model.apply_trades("v", "AAA-USDT", trades)
    first = VersionedCandle(candle_version(0, False), CandleRow(T0, D("100"), D("100"), D("100"), D("100"), D("1")))
    model.apply_candle("v", "AAA-USDT", "1m", first)
    revised = VersionedCandle(candle_version(1, True), CandleRow(T0, D("100"), D("101"), D("99"), D("100"), D("3")))
    model.apply_candle("v", "AAA-USDT", "1m", revised)
    model.apply_candle("v", "AAA-USDT", "1m", first)  # an older revision arriving late changes nothing
    model.warm("v", "AAA-USDT", [], {i.value: (T0 - 10 * MIN, []) for i in Interval}, None)

    rows = model.candles("AAA-USDT", "1m", T0, T0 + 5 * MIN, "v")
    assert rows == [
        CandleRow(T0, D("100"), D("101"), D("99"), D("100"), D("3")),
        CandleRow(T0 + MIN, D("105"), D("108"), D("103"), D("103"), D("1.75")),
        CandleRow(T0 + 3 * MIN, D("90"), D("90"), D("90"), D("90"), D("2")),
    ]
    # [start, end) on open times; a start inside a bucket begins at the next bucket
    assert [r.open_ns for r in model.candles("AAA-USDT", "1m", T0 + 1, T0 + 3 * MIN, "v")] == [T0 + MIN]
    # 5m: no stored 5m candle, so every bucket from trades: one bucket with all five trades
    assert model.candles("AAA-USDT", "5m", T0, T0 + 5 * MIN, "v") == [
        CandleRow(T0, D("100"), D("108"), D("90"), D("90"), D("4.75"))
    ]
    with pytest.raises(NotCovered):  # before the candles memory holds
        model.candles("AAA-USDT", "1m", T0 - 11 * MIN, T0, "v")


def test_feed_state_is_the_latest_feed_state_event() -> None:
    model = warm_model(trade(T0, "1", "1", "1"))
    assert model.feed_state("AAA-USDT", "v") is None
    model.apply_quality("v", "AAA-USDT", "stale_feed", T0 + 5)
    model.apply_quality("v", "AAA-USDT", "late_trade", T0 + 9)  # not a feed state
    model.apply_quality("v", "AAA-USDT", "feed_connected", T0 + 3)  # older
    assert model.feed_state("AAA-USDT", "v") == FeedState("stale_feed", T0 + 5)


def test_the_feed_decodes_the_wire_formats_into_the_model() -> None:
    model = ReadModel()
    hub = MarketHub()
    batch = [
        Trade(venue="v", symbol="AAA-USDT", trade_id=str(i), price=D(p), size=D(q), side=Side.BUY,
              event_ts_ns=T0 + i, recv_ts_ns=T0 + i)
        for i, (p, q) in enumerate([("10.5", "1"), ("11", "0.125")])
    ]  # fmt: skip
    apply_trade_batch(hub, encode_trade_batch("v", "AAA-USDT", batch), model)
    candle = Candle(venue="v", symbol="AAA-USDT", event_ts_ns=T0 + 1, recv_ts_ns=T0 + 2, interval=Interval.M1,
                    open_ts_ns=T0, open=D("10.5"), high=D("11"), low=D("10.5"), close=D("11"), volume=D("1.125"),
                    trades=2, first_trade_id="0", last_trade_id="1", revision=0, is_final=True)  # fmt: skip
    apply_candle(model, encode_event(candle))
    apply_quality(model, encode_event(QualityEvent(venue="v", symbol="AAA-USDT", event_ts_ns=T0, recv_ts_ns=T0,
                                                   kind=QualityKind.FEED_CONNECTED)))  # fmt: skip
    model.warm("v", "AAA-USDT", [], {"1m": (T0, [])}, None)
    assert model.last_trade("AAA-USDT", "v") == LastTrade(D("11"), T0 + 1, "v")
    assert model.volume_24h("AAA-USDT", "v", T0 + 1) == D("1.125")
    assert model.feed_state("AAA-USDT", "v") == FeedState("feed_connected", T0)
    assert model.candles("AAA-USDT", "1m", T0, T0 + MIN, "v") == [
        CandleRow(T0, D("10.5"), D("11"), D("10.5"), D("11"), D("1.125"))
    ]
    assert hub.last_trade["AAA-USDT"].price == D("11")


class FakeStore:
    """The store's reads, recording what was asked."""

    def __init__(self, last: dict[str, LastTrade], before: list[tuple[Any, ...]]) -> None:
        self.last = last
        self.before = before
        self.calls: list[str] = []

    def knows(self, symbol: str) -> bool:
        return True

    def known_symbols(self) -> frozenset[str]:
        return frozenset()

    def last_trades_by_venue(self, symbol: str) -> dict[str, LastTrade]:
        self.calls.append("last_trades_by_venue")
        return self.last

    def trades_between(self, symbol: str, venue: str, after_ns: int, before_ns: int) -> list[tuple[Any, ...]]:
        self.calls.append(f"trades_between {after_ns} {before_ns}")
        return [row for row in self.before if after_ns < row[0] < before_ns]

    def last_candle_open(self, symbol: str, venue: str, interval: str) -> int | None:
        return None

    def candles_since(self, symbol: str, venue: str, interval: str, from_ns: int) -> list[Any]:
        return []

    def feed_state(self, symbol: str, venue: str) -> FeedState | None:
        self.calls.append("feed_state")
        return FeedState("feed_connected", 1)

    def last_price(self, symbol: str, venue: str | None = None) -> LastTrade | None:
        self.calls.append("last_price")
        return LastTrade(D("1"), 1, "store")

    def volume_24h(self, symbol: str, venue: str, until_ns: int) -> Decimal:
        self.calls.append("volume_24h")
        return D("-1")


def test_memory_market_falls_back_until_the_store_caught_up_then_loads_the_past_once() -> None:
    clock = [0.0]
    model = ReadModel()
    model.apply_trades("v", "AAA-USDT", [trade(T0 + 100, "50", "20", "1")])
    before = [(T0 - DAY, "1", D("9"), D("100")), (T0 - 10, "49", D("19"), D("2"))]  # the first is > 24 h old
    store = FakeStore({"v": LastTrade(D("19"), T0 - 10, "v")}, before)  # not caught up: no trade >= T0 + 100
    memory = MemoryMarket(model, store, clock=lambda: clock[0])  # type: ignore[arg-type]

    assert memory.last_price("AAA-USDT", "v") == LastTrade(D("1"), 1, "store")
    assert memory.misses == 1

    store.last = {"v": LastTrade(D("20"), T0 + 100, "v")}  # the sink wrote the first consumed trade
    assert memory.last_price("AAA-USDT", "v") == LastTrade(D("1"), 1, "store")  # retried after 1 s only
    clock[0] = 2.0
    assert memory.last_price("AAA-USDT", "v") == LastTrade(D("20"), T0 + 100, "v")
    assert f"trades_between {T0 + 100 - DAY} {T0 + 100}" in store.calls
    # 24 h ending at T0 + 100: the stored trade at T0 - 10 (size 2) plus the consumed one (1)
    assert memory.volume_24h("AAA-USDT", "v", T0 + 100) == D("3")
    assert memory.feed_state("AAA-USDT", "v") == FeedState("feed_connected", 1)
    calls = len(store.calls)
    memory.last_price("AAA-USDT", None)
    memory.volume_24h("AAA-USDT", "v", T0 + 100)
    assert len(store.calls) == calls  # warm: no more store reads


def test_a_venue_only_the_store_knows_decides_the_default_venue_in_the_store() -> None:
    model = ReadModel()
    model.apply_trades("v", "AAA-USDT", [trade(T0, "1", "20", "1")])
    store = FakeStore({"v": LastTrade(D("20"), T0, "v"), "aaa": LastTrade(D("7"), T0, "aaa")}, [])
    memory = MemoryMarket(model, store)  # type: ignore[arg-type]
    # "aaa" traded at the same time and sorts first: only the store can answer the default venue
    assert memory.last_price("AAA-USDT", None) == LastTrade(D("1"), 1, "store")
    assert memory.last_price("AAA-USDT", "v") == LastTrade(D("20"), T0, "v")  # a named venue: memory
    assert memory.knows("AAA-USDT")


def _oracle_page(
    trades: list[MemTrade], start: int, end: int, after: tuple[int, str], limit: int
) -> list[tuple[int, str, str]]:
    """The store's page computed plainly: one row per (time, id), in range, strictly after `after`,
    sorted, the first `limit`."""
    rows = {(t.event_ns, t.trade_id): t.side for t in trades}
    keys = sorted(k for k in rows if start <= k[0] < end and k > after)
    return [(ns, tid, rows[(ns, tid)]) for ns, tid in keys[:limit]]


def test_trade_pages_from_memory_are_the_store_s_pages_and_older_ones_are_not_covered() -> None:
    rng = random.Random(7)
    # a day and an hour of trades, several per nanosecond stamp, ids not in time order, some re-sent
    # and some out of order: what the topics deliver
    trades = [
        MemTrade(T0 + rng.randrange(0, DAY + 3600 * S, 10 * S // 3), f"{rng.randrange(10**6)}", D("1"), D("1"),
                 rng.choice(("buy", "sell", "unknown")))
        for _ in range(3000)
    ]  # fmt: skip
    ordered = sorted(trades, key=lambda t: (t.event_ns, t.trade_id))
    model = ReadModel()
    model.apply_trades("v", "AAA-USDT", ordered[:2500])
    model.warm("v", "AAA-USDT", [], {i.value: (0, []) for i in Interval}, None)
    late = ordered[2500:]
    rng.shuffle(late)
    model.apply_trades("v", "AAA-USDT", late + late[:50])
    latest = ordered[-1].event_ns
    held = [t for t in trades if t.event_ns > latest - DAY]  # what memory must hold
    cases = 0
    for _ in range(300):
        start = rng.randrange(latest - DAY + 1, latest + 1)
        end = rng.choice((latest + 1, rng.randrange(start, latest + 2)))
        pick = rng.choice(held)
        after = rng.choice(((0, ""), (pick.event_ns, pick.trade_id), (pick.event_ns, pick.trade_id + "5")))
        limit = rng.choice((1, 7, 100, 1001))
        got = model.trades_page("AAA-USDT", "v", start, end, after, limit)
        assert [(t.event_ns, t.trade_id, t.side) for t in got] == _oracle_page(held, start, end, after, limit)
        cases += bool(got)
    assert cases > 100  # most pages hold trades: the comparison is not of empty lists
    # a page that could reach the oldest held trade or before is the store's to answer
    with pytest.raises(NotCovered):
        model.trades_page("AAA-USDT", "v", latest - DAY, latest + 1, (0, ""), 10)
    with pytest.raises(NotCovered):
        model.trades_page("AAA-USDT", "w", latest - 60 * S, latest + 1, (0, ""), 10)  # unknown venue
    # a cursor inside the window makes an old `start` answerable
    inside = held[0]
    page = model.trades_page("AAA-USDT", "v", 0, latest + 1, (inside.event_ns, inside.trade_id), 5)
    assert [(t.event_ns, t.trade_id, t.side) for t in page] == _oracle_page(
        held, 0, latest + 1, (inside.event_ns, inside.trade_id), 5
    )


def test_expired_trades_are_compacted_away_and_the_window_stays_exact() -> None:
    """Five days of a trade a minute, in order: memory keeps the last 24 h only (the list is
    compacted as it goes), with their volume, and answers pages of them as the oracle does."""
    trades = [MemTrade(T0 + i * MIN, f"t{i}", D("1"), Decimal(i % 7 + 1) / 4, "sell") for i in range(5 * 1440)]
    model = warm_model(trades[0])
    for t in trades[1:]:
        model.apply_trades("v", "AAA-USDT", [t])
    latest = trades[-1].event_ns
    held = [t for t in trades if t.event_ns > latest - DAY]
    assert len(held) == 1440  # (latest - 24 h, latest]: the trade exactly 24 h back is out
    assert model.volume_24h("AAA-USDT", "v", latest) == sum((t.size for t in held), Decimal(0))
    series = model._series[("v", "AAA-USDT")]
    assert len(series.trades) - series.head == len(held) and len(series.trades) < 2 * len(held) + 1025
    page = model.trades_page("AAA-USDT", "v", latest - DAY + 1, latest + 1, (0, ""), 2000)
    assert [(t.event_ns, t.trade_id) for t in page] == [(t.event_ns, t.trade_id) for t in held]
