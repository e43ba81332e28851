"""The pure parts of `/ws/market`: parsing, message shapes, the conflating queue and the hub's
routing, without a socket or a broker."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from api.errors import ErrorCode
from api.ws.hub import CLOSE_TRY_AGAIN_LATER, MarketHub, Session, sub_key
from api.ws.protocol import (
    CANDLES,
    MARKET,
    ORDERBOOK,
    CandleBar,
    Command,
    ProtocolError,
    ack_message,
    error_message,
    format_levels,
    market_message,
    orderbook_message,
    parse_command,
    parse_message,
    with_seq,
)
from api.ws.queue import ConflatingQueue, QueueOverflow

NS = 10**9
TS = 1_711_013_400_123_456_789  # 2024-03-21T09:30:00.123456789Z


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- parsing ---------------------------------------------------------------------------


def test_parse_market_subscribe_normalises_and_deduplicates() -> None:
    cmd = parse_command('{"action":"subscribe","channel":"market","symbols":["btc-usdt","ETH-USDT","BTC-USDT"]}')
    assert cmd == Command("subscribe", "market", ("BTC-USDT", "ETH-USDT"))


def test_parse_orderbook() -> None:
    assert parse_command('{"action":"subscribe","channel":"orderbook","symbol":"btc-usdt","depth":10}') == Command(
        "subscribe", "orderbook", ("BTC-USDT",), 10
    )
    # depth is not needed to unsubscribe
    assert parse_command('{"action":"unsubscribe","channel":"orderbook","symbol":"BTC-USDT"}') == Command(
        "unsubscribe", "orderbook", ("BTC-USDT",)
    )


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "{",
        "[1, 2]",
        '"subscribe"',
        '{"action":"subscrib","channel":"market","symbols":["BTC-USDT"]}',
        '{"channel":"market","symbols":["BTC-USDT"]}',
        '{"action":"subscribe","channel":"trades","symbols":["BTC-USDT"]}',
        '{"action":"subscribe","channel":"market","symbols":[]}',
        '{"action":"subscribe","channel":"market","symbols":"BTC-USDT"}',
        '{"action":"subscribe","channel":"orderbook","symbol":"BTC-USDT"}',
        '{"action":"subscribe","channel":"orderbook","symbol":"BTC-USDT","depth":0}',
        '{"action":"subscribe","channel":"orderbook","symbol":"BTC-USDT","depth":101}',
        '{"action":"subscribe","channel":"orderbook","symbol":"BTC-USDT","depth":"10"}',
        '{"action":"subscribe","channel":"orderbook","symbol":"BTC-USDT","depth":10.5}',
        '{"action":"subscribe","channel":"orderbook","symbol":"BTC-USDT","depth":true}',
        '{"action":"subscribe","channel":"candles","symbol":"BTC-USDT"}',
        '{"action":"subscribe","channel":"candles","symbol":"BTC-USDT","interval":"2m"}',
        '{"action":"unsubscribe","channel":"candles","symbol":"BTC-USDT","interval":60}',
        '{"action":"subscribe","channel":"market","symbols":["BTC-USDT"],"exchange":"Bin ance"}',
        '{"action":"subscribe","channel":"market","symbols":["BTC-USDT"],"exchange":7}',
        '{"action":"subscribe","channel":"orderbook","symbol":"BTC-USDT","depth":5,"exchange":""}',
        json.dumps({"action": "subscribe", "channel": "market", "symbols": [f"S{i}-USDT" for i in range(101)]}),
        " " * 20000,
    ],
)
def test_bad_requests(raw: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(raw)
    assert info.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("symbol", ["BTC$USDT", "-USDT", "BTC-", "A" * 16 + "-USDT", 7, None])
def test_malformed_symbols_are_market_001(symbol: object) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(json.dumps({"action": "subscribe", "channel": "market", "symbols": ["BTC-USDT", symbol]}))
    assert info.value.code == ErrorCode.MARKET_001
    with pytest.raises(ProtocolError) as info:
        parse_command(json.dumps({"action": "subscribe", "channel": "orderbook", "symbol": symbol, "depth": 5}))
    assert info.value.code == ErrorCode.MARKET_001


def test_parse_exchange_and_candles() -> None:
    raw = '{"action":"subscribe","channel":"market","symbols":["btc-usdt"],"exchange":"Binance-USDM"}'
    assert parse_command(raw) == Command("subscribe", "market", ("BTC-USDT",), exchange="binance-usdm")
    raw = '{"action":"subscribe","channel":"orderbook","symbol":"btc-usdt","depth":3,"exchange":"okx"}'
    assert parse_command(raw) == Command("subscribe", "orderbook", ("BTC-USDT",), 3, exchange="okx")
    for interval in ("1m", "5m", "1h", "1d"):
        raw = json.dumps({"action": "subscribe", "channel": "candles", "symbol": "eth-usdt", "interval": interval})
        assert parse_command(raw) == Command("subscribe", "candles", ("ETH-USDT",), interval=interval)
    raw = '{"action":"unsubscribe","channel":"candles","symbol":"ETH-USDT","interval":"1h","exchange":"okx"}'
    assert parse_command(raw) == Command("unsubscribe", "candles", ("ETH-USDT",), exchange="okx", interval="1h")
    assert parse_message('{"action":"ping"}') == parse_message('{"type":"ping"}')


def test_with_seq_appends_the_field_last() -> None:
    text = market_message("binance", "BTC-USDT", Decimal("1"), TS, Decimal("2"))
    assert json.loads(with_seq(text, 42)) == {**json.loads(text), "seq": 42}
    assert with_seq(text, 42).endswith(',"seq":42}')


def test_depth_bounds_are_inclusive() -> None:
    for depth in (1, 100):
        raw = json.dumps({"action": "subscribe", "channel": "orderbook", "symbol": "BTC-USDT", "depth": depth})
        assert parse_command(raw).depth == depth


# --- shapes ----------------------------------------------------------------------------


def test_market_message_shape() -> None:
    body = json.loads(market_message("binance", "BTC-USDT", Decimal("65432.1"), TS, Decimal("0.5")))
    assert body == {
        "symbol": "BTC-USDT",
        "exchange": "binance",
        "price": "65432.10000000",
        "timestamp": "2024-03-21T09:30:00.123Z",
        "volume": "0.50000000",
    }


def test_orderbook_message_shape_and_depth() -> None:
    bids = format_levels([["100.5", "1"], ["100.4", "2"], ["100.3", "3"]])
    asks = format_levels([["100.6", "0.25"]])
    body = json.loads(orderbook_message("okx", "BTC-USDT", bids, asks, TS, 2))
    assert body == {
        "symbol": "BTC-USDT",
        "exchange": "okx",
        "bids": [["100.50000000", "1.00000000"], ["100.40000000", "2.00000000"]],
        "asks": [["100.60000000", "0.25000000"]],
        "timestamp": "2024-03-21T09:30:00.123Z",
    }


def test_acks_and_errors() -> None:
    assert json.loads(ack_message(Command("subscribe", "market", ("A-B", "C-D")))) == {
        "type": "subscribed",
        "channel": "market",
        "symbols": ["A-B", "C-D"],
    }
    assert json.loads(ack_message(Command("subscribe", "orderbook", ("A-B",), 5))) == {
        "type": "subscribed",
        "channel": "orderbook",
        "symbol": "A-B",
        "depth": 5,
    }
    assert json.loads(ack_message(Command("unsubscribe", "orderbook", ("A-B",)))) == {
        "type": "unsubscribed",
        "channel": "orderbook",
        "symbol": "A-B",
    }
    # a subscribe acknowledges the venue each subscription is bound to (null: not known yet)
    venues: dict[str, str | None] = {"A-B": "binance", "C-D": None}
    assert json.loads(ack_message(Command("subscribe", "market", ("A-B", "C-D")), venues))["exchanges"] == venues
    candles = Command("subscribe", "candles", ("A-B",), interval="1h")
    assert json.loads(ack_message(candles, {"A-B": "okx"})) == {
        "type": "subscribed",
        "channel": "candles",
        "symbol": "A-B",
        "interval": "1h",
        "exchange": "okx",
    }
    assert json.loads(ack_message(Command("unsubscribe", "orderbook", ("A-B",), exchange="okx")))["exchange"] == "okx"
    assert json.loads(error_message(ErrorCode.MARKET_001)) == {
        "type": "error",
        "code": "MARKET_001",
        "message": "Invalid symbol",
    }
    assert json.loads(error_message(ErrorCode.MARKET_001, "ko"))["message"] == "유효하지 않은 심볼"


# --- queue -----------------------------------------------------------------------------


class Text:
    def __init__(self, text: str) -> None:
        self.text = text

    def render(self) -> str:
        return self.text

    def merge(self, newer: object) -> object:
        return newer


def test_queue_sends_every_update_in_order_while_the_client_keeps_up() -> None:
    q = ConflatingQueue(max_keys=10, max_backlog=3)
    for text in ("a1", "b1", "a2"):
        q.put(("market", text[0].upper()), Text(text))  # type: ignore[arg-type]
    q.put_control("ack")
    assert q.take() == ["ack", "a1", "b1", "a2"]
    assert q.conflated == 0
    # a fourth pending update is past the backlog: the client is behind, updates conflate
    for text in ("a3", "b3", "a4", "a5"):
        q.put(("market", text[0].upper()), Text(text))  # type: ignore[arg-type]
    assert q.take() == ["a5", "b3"]
    assert q.conflated == 2
    # caught up again (it took everything): every update once more
    q.put(("market", "A"), Text("a6"))  # type: ignore[arg-type]
    q.put(("market", "A"), Text("a7"))  # type: ignore[arg-type]
    assert q.take() == ["a6", "a7"]


def test_queue_conflates_per_key_and_keeps_first_order() -> None:
    q = ConflatingQueue(max_keys=10, max_backlog=0)
    q.put(("market", "A"), Text("a1"))  # type: ignore[arg-type]
    q.put(("market", "B"), Text("b1"))  # type: ignore[arg-type]
    q.put(("market", "A"), Text("a2"))  # type: ignore[arg-type]
    q.put_control("ack")
    assert q.take() == ["ack", "a2", "b1"]
    assert q.conflated == 1
    assert q.take() == []


def test_queue_bounds_and_lag() -> None:
    clock = Clock()
    q = ConflatingQueue(max_keys=2, max_control=1, clock=clock, max_backlog=0)
    q.put(("market", "A"), Text("a"))  # type: ignore[arg-type]
    clock.now = 3.0
    q.put(("market", "B"), Text("b"))  # type: ignore[arg-type]
    assert q.lag() == 3.0  # from the oldest pending update
    with pytest.raises(QueueOverflow):
        q.put(("market", "C"), Text("c"))  # type: ignore[arg-type]
    q.put_control("x")
    with pytest.raises(QueueOverflow):
        q.put_control("y")
    q.take()
    assert q.lag() == 0.0


async def test_queue_get_waits_for_data() -> None:
    import asyncio

    q = ConflatingQueue(max_keys=2)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put_control("hello")
    assert await asyncio.wait_for(getter, 1) == ["hello"]


# --- hub -------------------------------------------------------------------------------

BTC = "BTC-USDT"


def msgs(session: Session) -> list[dict[str, object]]:
    return [json.loads(text) for text in session.queue.take()]


async def test_hub_sends_every_update_to_a_client_that_keeps_up() -> None:
    hub = MarketHub()
    session = hub.open_session()
    hub.subscribe(session, sub_key(MARKET, "binance", BTC))
    hub.publish_trades("binance", BTC, Decimal("101"), TS + NS, Decimal("2"))
    hub.publish_trades("binance", BTC, Decimal("102"), TS + 2 * NS, Decimal("0.5"))
    assert [(m["exchange"], m["price"], m["volume"], m["seq"]) for m in msgs(session)] == [
        ("binance", "101.00000000", "2.00000000", 1),
        ("binance", "102.00000000", "0.50000000", 2),
    ]
    hub.publish_trades("binance", BTC, Decimal("103"), TS + 3 * NS, Decimal("1"))
    hub.unsubscribe(session, MARKET, BTC, None)  # nothing of it may arrive after the unsubscribe
    assert session.queue.take() == []
    assert session.queue.lag() == 0.0


async def test_merged_updates_are_shared_by_clients_behind_at_the_same_point() -> None:
    hub = MarketHub(max_backlog=0)
    a, b, c = hub.open_session(), hub.open_session(), hub.open_session()
    key = sub_key(MARKET, "binance", BTC)
    for session in (a, b, c):
        hub.subscribe(session, key)
    hub.publish_trades("binance", BTC, Decimal("101"), TS, Decimal("2"))
    c.queue.take()  # c got the first one, a and b did not
    hub.publish_trades("binance", BTC, Decimal("102"), TS + NS, Decimal("0.5"))
    pending = [s.queue._data[key][0] for s in (a, b, c)]
    assert pending[0] is pending[1]  # one merge (volume 2.5), one rendering, for both
    assert pending[2] is hub.trades[("binance", BTC)]  # c holds the plain update (volume 0.5)
    got = [json.loads(s.queue.take()[0]) for s in (a, b, c)]
    assert [(m["volume"], m["seq"]) for m in got] == [("2.50000000", 2), ("2.50000000", 2), ("0.50000000", 2)]


async def test_hub_routes_market_and_merges_volume_when_conflated() -> None:
    hub = MarketHub(max_backlog=0)  # every client counts as behind: updates conflate at once
    fast, other = hub.open_session(), hub.open_session()
    hub.subscribe(fast, sub_key(MARKET, "binance", BTC))
    hub.subscribe(other, sub_key(MARKET, "binance", "ETH-USDT"))
    hub.publish_trades("binance", BTC, Decimal("100"), TS, Decimal("1"))
    assert [(m["price"], m["seq"]) for m in msgs(fast)] == [("100.00000000", 1)]
    hub.publish_trades("binance", BTC, Decimal("101"), TS + NS, Decimal("2"))
    hub.publish_trades("binance", BTC, Decimal("102"), TS + 2 * NS, Decimal("0.5"))
    (merged,) = fast.queue.take()
    assert json.loads(merged) == {
        "symbol": BTC,
        "exchange": "binance",
        "price": "102.00000000",
        "timestamp": "2024-03-21T09:30:02.123Z",
        "volume": "2.50000000",  # everything traded since the last delivered message
        "seq": 3,  # 2 was merged into it: the gap shows the conflation
    }
    assert other.queue.take() == []
    # a new subscriber starts from the last price, at seq 1
    late = hub.open_session()
    hub.subscribe_market(late, [BTC])
    assert [(m["price"], m["seq"]) for m in msgs(late)] == [("102.00000000", 1)]
    hub.unsubscribe_market(fast, [BTC])
    hub.publish_trades("binance", BTC, Decimal("103"), TS + 3 * NS, Decimal("1"))
    assert fast.queue.take() == []
    hub.close_session(late)
    hub.close_session(other)
    assert hub._subs == {}
    assert hub.sessions == {fast}


async def test_seq_counts_every_update_offered_and_gaps_only_where_conflated() -> None:
    hub = MarketHub(max_backlog=2)  # a third undelivered update makes the client behind
    session = hub.open_session()
    hub.subscribe(session, sub_key(MARKET, "binance", BTC))
    delivered: list[int] = []
    for i in range(1, 3):  # keeps up: every update, seq 1, 2
        hub.publish_trades("binance", BTC, Decimal(i), TS + i * NS, Decimal("1"))
        delivered += [m["seq"] for m in msgs(session)]  # type: ignore[misc]
    for i in range(3, 8):  # five updates while it does not read: behind, one merged message
        hub.publish_trades("binance", BTC, Decimal(i), TS + i * NS, Decimal("1"))
    (merged,) = msgs(session)
    delivered.append(merged["seq"])  # type: ignore[arg-type]
    hub.publish_trades("binance", BTC, Decimal(8), TS + 8 * NS, Decimal("1"))
    delivered += [m["seq"] for m in msgs(session)]  # type: ignore[misc]
    assert delivered == [1, 2, 7, 8]
    assert merged["volume"] == "5.00000000" and merged["price"] == "7.00000000"


async def test_two_venues_of_one_symbol_never_interleave_on_a_subscription() -> None:
    hub = MarketHub()
    spot, perp, both = hub.open_session(), hub.open_session(), hub.open_session()
    hub.subscribe(spot, sub_key(MARKET, "binance", BTC))
    hub.subscribe(perp, sub_key(MARKET, "binance-usdm", BTC))
    hub.subscribe(both, sub_key(MARKET, "binance", BTC))
    hub.subscribe(both, sub_key(MARKET, "binance-usdm", BTC))
    published: dict[str, list[str]] = {"binance": [], "binance-usdm": []}
    for i in range(20):
        venue = "binance" if i % 3 else "binance-usdm"
        price = f"{1000 + i}.00000000"
        published[venue].append(price)
        hub.publish_trades(venue, BTC, Decimal(1000 + i), TS + i * NS, Decimal("1"))
    for session, venue in ((spot, "binance"), (perp, "binance-usdm")):
        got = msgs(session)
        assert {m["exchange"] for m in got} == {venue}
        assert [m["price"] for m in got] == published[venue]
        assert [m["seq"] for m in got] == list(range(1, len(got) + 1))
    got = msgs(both)
    for venue in published:  # each subscription its own venue, its own seq
        mine = [m for m in got if m["exchange"] == venue]
        assert [m["price"] for m in mine] == published[venue]
        assert [m["seq"] for m in mine] == list(range(1, len(mine) + 1))


async def test_default_venue_is_the_latest_trade_and_fixed_at_subscribe_time() -> None:
    hub = MarketHub()
    hub.publish_trades("okx", BTC, Decimal("1"), TS + 1, Decimal("1"))
    hub.publish_trades("binance", BTC, Decimal("2"), TS + 2, Decimal("1"))
    hub.publish_trades("okx", BTC, Decimal("3"), TS, Decimal("1"))  # okx's latest, older than binance's
    assert hub.default_venue(BTC) == "binance"
    early = hub.open_session()
    hub.subscribe_market(early, [BTC])
    assert [m["exchange"] for m in msgs(early)] == ["binance"]
    hub.publish_trades("okx", BTC, Decimal("4"), TS + 3, Decimal("1"))  # okx leads now
    assert hub.default_venue(BTC) == "okx"
    late = hub.open_session()
    hub.subscribe_market(late, [BTC])
    assert [(m["exchange"], m["price"]) for m in msgs(late)] == [("okx", "4.00000000")]
    assert msgs(early) == []  # the early subscription stays on binance
    hub.publish_trades("binance", BTC, Decimal("5"), TS + 3, Decimal("1"))  # a tie: alphabetically first
    assert hub.default_venue(BTC) == "binance"
    assert [m["exchange"] for m in msgs(early)] == ["binance"]
    assert msgs(late) == []


async def test_a_subscription_made_before_any_venue_binds_to_the_first_publisher() -> None:
    hub = MarketHub()
    session = hub.open_session()
    hub.subscribe_book(session, BTC, 1)  # nothing known of BTC yet
    assert hub.default_venue(BTC) is None
    levels = format_levels([["100", "1"]])
    hub.publish_book("okx", BTC, levels, levels, TS)
    hub.publish_book("binance", BTC, levels, levels, TS + 1)
    hub.publish_book("okx", BTC, levels, levels, TS + 2)
    assert [(m["exchange"], m["seq"]) for m in msgs(session)] == [("okx", 1), ("okx", 2)]
    assert set(session.subs) == {sub_key(ORDERBOOK, "okx", BTC)}


async def test_hub_book_snapshot_on_subscribe_at_each_depth() -> None:
    hub = MarketHub()
    levels = format_levels([[str(100 - i), "1"] for i in range(30)])
    hub.publish_book("binance", BTC, levels, format_levels([[str(101 + i), "2"] for i in range(30)]), TS)
    shallow, deep, okx = hub.open_session(), hub.open_session(), hub.open_session()
    hub.subscribe_book(shallow, BTC, 1, "binance")
    hub.subscribe_book(deep, BTC, 25, "binance")
    hub.subscribe_book(okx, BTC, 5, "okx")
    (s,) = shallow.queue.take()
    (d,) = deep.queue.take()
    assert json.loads(s)["bids"] == [["100.00000000", "1.00000000"]]
    assert json.loads(s)["exchange"] == "binance"
    assert len(json.loads(d)["asks"]) == 25
    assert okx.queue.take() == []  # no okx book yet
    # another venue's book of the same symbol goes to its own subscribers only
    hub.publish_book("okx", BTC, levels[:1], levels[:1], TS + NS)
    assert shallow.queue.take() == []
    assert [(m["exchange"], m["seq"]) for m in msgs(okx)] == [("okx", 1)]
    hub.publish_book("binance", BTC, levels[1:], levels[1:], TS + NS)
    (after,) = msgs(shallow)
    assert after["bids"] == [["99.00000000", "1.00000000"]] and after["seq"] == 2


async def test_candles_channel_sends_every_revision_with_is_final() -> None:
    hub = MarketHub()
    session = hub.open_session()
    hub.subscribe(session, sub_key(CANDLES, "binance", BTC, "1m"))
    minute = 60 * NS
    t0 = TS - TS % minute

    def bar(open_ns: int, close: str, final: bool) -> CandleBar:
        return CandleBar(open_ns, Decimal("10"), Decimal("12"), Decimal("9"), Decimal(close), Decimal("3"), final)

    hub.publish_candle("binance", BTC, "1m", bar(t0, "11", False))
    hub.publish_candle("binance", BTC, "5m", bar(t0, "11", False))  # another interval
    hub.publish_candle("okx", BTC, "1m", bar(t0, "50", True))  # another venue
    hub.publish_candle("binance", BTC, "1m", bar(t0, "11.5", True))  # a late trade's final revision
    hub.publish_candle("binance", BTC, "1m", bar(t0 + minute, "13", False))
    got = msgs(session)
    assert [(m["timestamp"], m["close"], m["is_final"], m["seq"]) for m in got] == [
        ("2024-03-21T09:30:00.000Z", "11.00000000", False, 1),
        ("2024-03-21T09:30:00.000Z", "11.50000000", True, 2),
        ("2024-03-21T09:31:00.000Z", "13.00000000", False, 3),
    ]
    assert got[0] == {
        "symbol": BTC,
        "exchange": "binance",
        "interval": "1m",
        "timestamp": "2024-03-21T09:30:00.000Z",
        "open": "10.00000000",
        "high": "12.00000000",
        "low": "9.00000000",
        "close": "11.00000000",
        "volume": "3.00000000",
        "is_final": False,
        "seq": 1,
    }
    late = hub.open_session()  # a new subscriber starts from the latest revision
    hub.subscribe(late, sub_key(CANDLES, "binance", BTC, "1m"))
    assert [(m["close"], m["seq"]) for m in msgs(late)] == [("13.00000000", 1)]
    hub.unsubscribe(session, CANDLES, BTC, None, "1m")
    hub.publish_candle("binance", BTC, "1m", bar(t0 + minute, "14", True))
    assert session.queue.take() == []


async def test_unsubscribe_without_exchange_drops_every_venue() -> None:
    hub = MarketHub()
    session = hub.open_session()
    for venue in ("binance", "okx"):
        hub.subscribe(session, sub_key(MARKET, venue, BTC))
    hub.unsubscribe(session, MARKET, BTC, "okx")
    assert set(session.subs) == {sub_key(MARKET, "binance", BTC)}
    hub.subscribe(session, sub_key(MARKET, "okx", BTC))
    hub.unsubscribe(session, MARKET, BTC, None)
    assert session.subs == {} and hub._subs == {}


def test_book_health_invalid_after_a_gap_and_stale_behind_trades() -> None:
    hub = MarketHub()
    levels = format_levels([["100", "1"]])
    hub.publish_book("binance", BTC, levels, levels, TS)
    assert hub.book_health("binance", BTC) is None
    hub.publish_quality("binance", BTC, "book_resync", TS + 1)  # not a reason to distrust the book
    hub.publish_quality("binance", BTC, "book_gap", TS + 1)
    health = hub.book_health("binance", BTC)
    assert health is not None and (health.state, health.reason, health.since_ns) == ("invalid", "book_gap", TS + 1)
    hub.publish_book("binance", BTC, levels, levels, TS + 2)  # the next snapshot after the gap
    assert hub.book_health("binance", BTC) is None
    hub.publish_trades("binance", BTC, Decimal("1"), TS + 2 + 30 * NS, Decimal("1"))
    assert hub.book_health("binance", BTC) is None  # exactly the limit: still live
    hub.publish_trades("binance", BTC, Decimal("1"), TS + 3 + 30 * NS, Decimal("1"))
    health = hub.book_health("binance", BTC)
    assert health is not None and health.state == "stale"
    hub.publish_quality("okx", BTC, "book_gap", TS + 10 * NS)  # another venue's gap
    hub.publish_book("binance", BTC, levels, levels, TS + 3 + 30 * NS)
    assert hub.book_health("binance", BTC) is None


async def test_hub_kicks_a_client_that_stays_behind() -> None:
    clock = Clock()
    hub = MarketHub(slow_close_after_s=5.0, clock=clock, max_backlog=4)
    slow, fast = hub.open_session(), hub.open_session()
    for session in (slow, fast):
        hub.subscribe_market(session, [BTC], "binance")
    for i in range(10):
        clock.now = i
        hub.publish_trades("binance", BTC, Decimal(100 + i), TS + i * NS, Decimal("1"))
        fast.queue.take()  # the fast one keeps up
    assert slow.close_code == CLOSE_TRY_AGAIN_LATER
    assert fast.close_code is None
    assert hub.slow_closed == 1
