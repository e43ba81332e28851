"""The pure parts of `/ws/market`: parsing, message shapes, the conflating queue and the hub's
routing, without a socket or a broker."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from api.errors import ErrorCode
from api.ws.hub import CLOSE_TRY_AGAIN_LATER, MarketHub
from api.ws.protocol import (
    Command,
    ProtocolError,
    ack_message,
    error_message,
    format_levels,
    market_message,
    orderbook_message,
    parse_command,
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


def test_depth_bounds_are_inclusive() -> None:
    for depth in (1, 100):
        raw = json.dumps({"action": "subscribe", "channel": "orderbook", "symbol": "BTC-USDT", "depth": depth})
        assert parse_command(raw).depth == depth


# --- shapes ----------------------------------------------------------------------------


def test_market_message_shape() -> None:
    body = json.loads(market_message("BTC-USDT", Decimal("65432.1"), TS, Decimal("0.5")))
    assert body == {
        "symbol": "BTC-USDT",
        "price": "65432.10000000",
        "timestamp": "2024-03-21T09:30:00.123Z",
        "volume": "0.50000000",
    }


def test_orderbook_message_shape_and_depth() -> None:
    bids = format_levels([["100.5", "1"], ["100.4", "2"], ["100.3", "3"]])
    asks = format_levels([["100.6", "0.25"]])
    body = json.loads(orderbook_message("BTC-USDT", bids, asks, TS, 2))
    assert body == {
        "symbol": "BTC-USDT",
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


async def test_hub_sends_every_update_to_a_client_that_keeps_up() -> None:
    hub = MarketHub()
    session = hub.open_session()
    hub.subscribe_market(session, ["BTC-USDT"])
    hub.publish_trades("BTC-USDT", Decimal("101"), TS + NS, Decimal("2"))
    hub.publish_trades("BTC-USDT", Decimal("102"), TS + 2 * NS, Decimal("0.5"))
    assert [(m["price"], m["volume"]) for m in map(json.loads, session.queue.take())] == [
        ("101.00000000", "2.00000000"),
        ("102.00000000", "0.50000000"),
    ]
    hub.publish_trades("BTC-USDT", Decimal("103"), TS + 3 * NS, Decimal("1"))
    hub.unsubscribe_market(session, ["BTC-USDT"])  # nothing of it may arrive after the unsubscribe
    assert session.queue.take() == []
    assert session.queue.lag() == 0.0


async def test_merged_updates_are_shared_by_clients_behind_at_the_same_point() -> None:
    hub = MarketHub(max_backlog=0)
    a, b, c = hub.open_session(), hub.open_session(), hub.open_session()
    for session in (a, b, c):
        hub.subscribe_market(session, ["BTC-USDT"])
    hub.publish_trades("BTC-USDT", Decimal("101"), TS, Decimal("2"))
    c.queue.take()  # c got the first one, a and b did not
    hub.publish_trades("BTC-USDT", Decimal("102"), TS + NS, Decimal("0.5"))
    pending = [s.queue._data[("market", "BTC-USDT")] for s in (a, b, c)]
    assert pending[0] is pending[1]  # one merge (volume 2.5), one rendering, for both
    assert pending[2] is hub.last_trade["BTC-USDT"]  # c holds the plain update (volume 0.5)
    assert [json.loads(s.queue.take()[0])["volume"] for s in (a, b, c)] == ["2.50000000", "2.50000000", "0.50000000"]


async def test_hub_routes_market_and_merges_volume_when_conflated() -> None:
    hub = MarketHub(max_backlog=0)  # every client counts as behind: updates conflate at once
    fast, other = hub.open_session(), hub.open_session()
    hub.subscribe_market(fast, ["BTC-USDT"])
    hub.subscribe_market(other, ["ETH-USDT"])
    hub.publish_trades("BTC-USDT", Decimal("100"), TS, Decimal("1"))
    assert [json.loads(m)["price"] for m in fast.queue.take()] == ["100.00000000"]
    hub.publish_trades("BTC-USDT", Decimal("101"), TS + NS, Decimal("2"))
    hub.publish_trades("BTC-USDT", Decimal("102"), TS + 2 * NS, Decimal("0.5"))
    (merged,) = fast.queue.take()
    assert json.loads(merged) == {
        "symbol": "BTC-USDT",
        "price": "102.00000000",
        "timestamp": "2024-03-21T09:30:02.123Z",
        "volume": "2.50000000",  # everything traded since the last delivered message
    }
    assert other.queue.take() == []
    # a new subscriber starts from the last price
    late = hub.open_session()
    hub.subscribe_market(late, ["BTC-USDT"])
    assert json.loads(late.queue.take()[0])["price"] == "102.00000000"
    hub.unsubscribe_market(fast, ["BTC-USDT"])
    hub.publish_trades("BTC-USDT", Decimal("103"), TS + 3 * NS, Decimal("1"))
    assert fast.queue.take() == []
    hub.close_session(late)
    hub.close_session(other)
    assert hub._market_subs == {}
    assert hub.sessions == {fast}


async def test_hub_book_snapshot_on_subscribe_at_each_depth() -> None:
    hub = MarketHub()
    levels = format_levels([[str(100 - i), "1"] for i in range(30)])
    hub.publish_book("binance", "BTC-USDT", levels, format_levels([[str(101 + i), "2"] for i in range(30)]), TS)
    shallow, deep = hub.open_session(), hub.open_session()
    hub.subscribe_book(shallow, "BTC-USDT", 1)
    hub.subscribe_book(deep, "BTC-USDT", 25)
    (s,) = shallow.queue.take()
    (d,) = deep.queue.take()
    assert json.loads(s)["bids"] == [["100.00000000", "1.00000000"]]
    assert len(json.loads(d)["asks"]) == 25
    # another venue's book of the same symbol does not interleave with the first one's
    hub.publish_book("okx", "BTC-USDT", levels[:1], levels[:1], TS + NS)
    assert shallow.queue.take() == []
    hub.publish_book("binance", "BTC-USDT", levels[1:], levels[1:], TS + NS)
    assert json.loads(shallow.queue.take()[0])["bids"] == [["99.00000000", "1.00000000"]]


async def test_hub_kicks_a_client_that_stays_behind() -> None:
    clock = Clock()
    hub = MarketHub(slow_close_after_s=5.0, clock=clock, max_backlog=4)
    slow, fast = hub.open_session(), hub.open_session()
    for session in (slow, fast):
        hub.subscribe_market(session, ["BTC-USDT"])
    for i in range(10):
        clock.now = i
        hub.publish_trades("BTC-USDT", Decimal(100 + i), TS + i * NS, Decimal("1"))
        fast.queue.take()  # the fast one keeps up
    assert slow.close_code == CLOSE_TRY_AGAIN_LATER
    assert fast.close_code is None
    assert hub.slow_closed == 1
