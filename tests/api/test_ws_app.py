"""`/ws/market` against a running app: a real uvicorn on loopback and real `websockets` clients;
updates are pushed into the hub directly (the Kafka feed is tested in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest
import websockets

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.principal import MARKET_READ, PORTFOLIO_READ
from api.ws import MarketHub
from api.ws.protocol import CandleBar, format_levels
from infra.store.repository import MarketRepository
from tests.api.conftest import NS, Market, TradeRow, new_account, test_api_settings, token_for
from tests.api.test_ws_support import Served, close_code, recv_json, send_json, serve

TS = 1_711_013_400_123_000_000  # 2024-03-21T09:30:00.123Z


def levels(start: int, step: int, n: int) -> list[tuple[str, str]]:
    return format_levels([[str(start + i * step), str(i + 1)] for i in range(n)])


@pytest.fixture
async def served(repository: MarketRepository, key_repository: ApiKeyRepository) -> AsyncIterator[Served]:
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository)
    async with serve(app, MarketHub(max_subscriptions=5)) as s:
        yield s


@pytest.fixture
def token() -> str:
    return token_for(new_account("ws"))


async def test_market_subscribe_updates_unsubscribe(
    served: Served, token: str, new_symbol: Callable[[str], str]
) -> None:
    btc, eth = new_symbol("WB"), new_symbol("WE")
    hub = served.hub
    hub.publish_trades("binance", btc, Decimal("100"), TS, Decimal("1"))
    hub.publish_trades("binance", eth, Decimal("10"), TS, Decimal("1"))
    async with served.connect(token) as ws:
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [btc.lower(), eth]})
        assert await recv_json(ws) == {
            "type": "subscribed",
            "channel": "market",
            "symbols": [btc, eth],
            "exchanges": {btc: "binance", eth: "binance"},
        }
        # the last known value of each symbol first
        first = [await recv_json(ws), await recv_json(ws)]
        assert {m["symbol"]: m["price"] for m in first} == {btc: "100.00000000", eth: "10.00000000"}
        for i in range(1, 6):
            hub.publish_trades("binance", btc, Decimal(100 + i), TS + i * NS, Decimal("0.5"))
            assert await recv_json(ws) == {
                "symbol": btc,
                "exchange": "binance",
                "price": f"{100 + i}.00000000",
                "timestamp": f"2024-03-21T09:30:{i:02d}.123Z",
                "volume": "0.50000000",
                "seq": 1 + i,
            }
        await send_json(ws, {"action": "unsubscribe", "channel": "market", "symbols": [btc]})
        assert await recv_json(ws) == {"type": "unsubscribed", "channel": "market", "symbols": [btc]}
        hub.publish_trades("binance", btc, Decimal("200"), TS + 10 * NS, Decimal("1"))
        hub.publish_trades("binance", eth, Decimal("11"), TS + 10 * NS, Decimal("1"))
        assert (await recv_json(ws))["symbol"] == eth  # nothing more of btc


async def test_orderbook_snapshot_then_updates_at_depth(
    served: Served, token: str, new_symbol: Callable[[str], str]
) -> None:
    sym = new_symbol("WO")
    hub = served.hub
    hub.publish_book("binance", sym, levels(100, -1, 30), levels(101, 1, 30), TS)
    async with served.connect(token) as ws:
        await send_json(ws, {"action": "subscribe", "channel": "orderbook", "symbol": sym, "depth": 3})
        assert await recv_json(ws) == {
            "type": "subscribed",
            "channel": "orderbook",
            "symbol": sym,
            "depth": 3,
            "exchange": "binance",
        }
        snapshot = await recv_json(ws)
        assert snapshot == {
            "symbol": sym,
            "exchange": "binance",
            "bids": [["100.00000000", "1.00000000"], ["99.00000000", "2.00000000"], ["98.00000000", "3.00000000"]],
            "asks": [["101.00000000", "1.00000000"], ["102.00000000", "2.00000000"], ["103.00000000", "3.00000000"]],
            "timestamp": "2024-03-21T09:30:00.123Z",
            "seq": 1,
        }
        for i in range(1, 4):
            hub.publish_book("binance", sym, levels(100 - i, -1, 30), levels(101 + i, 1, 30), TS + i * NS)
            update = await recv_json(ws)
            assert update["bids"][0][0] == f"{100 - i}.00000000"
            assert len(update["bids"]) == len(update["asks"]) == 3
            assert update["timestamp"] == f"2024-03-21T09:30:{i:02d}.123Z"
            assert update["seq"] == 1 + i
        # a new depth replaces the old one, with a fresh snapshot
        await send_json(ws, {"action": "subscribe", "channel": "orderbook", "symbol": sym, "depth": 100})
        assert (await recv_json(ws))["depth"] == 100
        assert len((await recv_json(ws))["bids"]) == 30  # all the published top holds
        await send_json(ws, {"action": "unsubscribe", "channel": "orderbook", "symbol": sym})
        assert await recv_json(ws) == {"type": "unsubscribed", "channel": "orderbook", "symbol": sym}


async def test_both_channels_on_one_socket(served: Served, token: str, new_symbol: Callable[[str], str]) -> None:
    sym = new_symbol("WX")
    hub = served.hub
    hub.publish_trades("binance", sym, Decimal("5"), TS, Decimal("1"))
    async with served.connect(token) as ws:
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [sym]})
        await send_json(ws, {"action": "subscribe", "channel": "orderbook", "symbol": sym, "depth": 1})
        got = [await recv_json(ws) for _ in range(3)]  # two acks and the last price; no book yet
        assert sorted(m.get("type", "data") for m in got) == ["data", "subscribed", "subscribed"]
        hub.publish_book("binance", sym, levels(5, -1, 2), levels(6, 1, 2), TS + NS)
        hub.publish_trades("binance", sym, Decimal("6"), TS + 2 * NS, Decimal("1"))
        book, trade = await recv_json(ws), await recv_json(ws)
        assert set(book) == {"symbol", "exchange", "bids", "asks", "timestamp", "seq"}
        assert set(trade) == {"symbol", "exchange", "price", "timestamp", "volume", "seq"}
        assert (book["exchange"], book["seq"], trade["exchange"], trade["seq"]) == ("binance", 1, "binance", 2)


async def test_symbol_known_from_the_store(
    served: Served, token: str, market: Market, new_symbol: Callable[[str], str]
) -> None:
    sym = new_symbol("WS")
    market.trades([TradeRow("kraken", sym, "t0", Decimal("1"), Decimal("1"), TS - NS)])
    market.trades([TradeRow("binance", sym, "t1", Decimal("1"), Decimal("1"), TS)])
    async with served.connect(token) as ws:
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [sym]})
        ack = await recv_json(ws)
        # the hub has no trade of it: the store's default venue (its latest trade), fixed now
        assert (ack["type"], ack["exchanges"]) == ("subscribed", {sym: "binance"})
        served.hub.publish_trades("kraken", sym, Decimal("7"), TS + NS, Decimal("1"))
        served.hub.publish_trades("binance", sym, Decimal("8"), TS + NS, Decimal("1"))
        assert await recv_json(ws) == {
            "symbol": sym,
            "exchange": "binance",
            "price": "8.00000000",
            "timestamp": "2024-03-21T09:30:01.123Z",
            "volume": "1.00000000",
            "seq": 1,
        }
        # a venue the store holds for the symbol is accepted; one it does not is MARKET_001
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [sym], "exchange": "nowhere"})
        assert (await recv_json(ws))["code"] == "MARKET_001"


async def test_venues_candles_and_ping_on_one_socket(
    served: Served, token: str, new_symbol: Callable[[str], str]
) -> None:
    sym = new_symbol("WV")
    hub = served.hub
    hub.publish_trades("binance-usdm", sym, Decimal("2000"), TS, Decimal("1"))
    hub.publish_trades("binance", sym, Decimal("1999"), TS + 1, Decimal("1"))
    async with served.connect(token) as spot, served.connect(token) as perp:
        await send_json(spot, {"action": "subscribe", "channel": "market", "symbols": [sym]})  # default
        await send_json(
            perp, {"action": "subscribe", "channel": "market", "symbols": [sym], "exchange": "BINANCE-USDM"}
        )
        assert (await recv_json(spot))["exchanges"] == {sym: "binance"}
        assert (await recv_json(perp))["exchanges"] == {sym: "binance-usdm"}
        published: dict[str, list[str]] = {"binance": ["1999.00000000"], "binance-usdm": ["2000.00000000"]}
        for i in range(1, 13):
            venue = "binance" if i % 2 else "binance-usdm"
            price = Decimal(1990 + i) if venue == "binance" else Decimal(2000 + i)
            published[venue].append(f"{price}.00000000")
            hub.publish_trades(venue, sym, price, TS + i * NS, Decimal("1"))
        for ws, venue in ((spot, "binance"), (perp, "binance-usdm")):
            got = [await recv_json(ws) for _ in published[venue]]
            assert [(m["exchange"], m["price"]) for m in got] == [(venue, p) for p in published[venue]]
            assert [m["seq"] for m in got] == list(range(1, len(got) + 1))
        await send_json(spot, {"action": "subscribe", "channel": "candles", "symbol": sym, "interval": "5m"})
        assert await recv_json(spot) == {
            "type": "subscribed",
            "channel": "candles",
            "symbol": sym,
            "interval": "5m",
            "exchange": "binance-usdm",  # the default now: the venue of the latest trade (i = 12)
        }
        open_ns = TS - TS % (300 * NS)
        for close, final in (("10", False), ("11", True)):
            bar = CandleBar(open_ns, Decimal("9"), Decimal("12"), Decimal("8"), Decimal(close), Decimal("4"), final)
            hub.publish_candle("binance", sym, "5m", bar)  # the other venue: not on this subscription
            hub.publish_candle("binance-usdm", sym, "5m", bar)
        got = [await recv_json(spot) for _ in range(2)]
        assert [(m["exchange"], m["close"], m["is_final"], m["seq"]) for m in got] == [
            ("binance-usdm", "10.00000000", False, 1),
            ("binance-usdm", "11.00000000", True, 2),
        ]
        await send_json(spot, {"action": "ping"})
        assert await recv_json(spot) == {"type": "pong"}
        await send_json(spot, {"action": "subscribe", "channel": "candles", "symbol": sym, "interval": "2h"})
        assert (await recv_json(spot))["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "BAD_REQUEST"),
        ('{"action":"dance","channel":"market","symbols":["BTC-USDT"]}', "BAD_REQUEST"),
        ('{"action":"subscribe","channel":"trades","symbols":["BTC-USDT"]}', "BAD_REQUEST"),
        ('{"action":"subscribe","channel":"market","symbols":["XYZQ-USDT"]}', "MARKET_001"),
        ('{"action":"subscribe","channel":"market","symbols":["BTC$USDT"]}', "MARKET_001"),
        ('{"action":"subscribe","channel":"orderbook","symbol":"XYZQ-USDT","depth":5}', "MARKET_001"),
        ('{"action":"subscribe","channel":"orderbook","symbol":"BTC-USDT","depth":0}', "BAD_REQUEST"),
        ('{"action":"subscribe","channel":"orderbook","symbol":"BTC-USDT","depth":101}', "BAD_REQUEST"),
        (b"\x00binary", "BAD_REQUEST"),
    ],
)
async def test_bad_input_gets_an_error_and_the_socket_stays_open(
    served: Served, token: str, frame: str | bytes, code: str, new_symbol: Callable[[str], str]
) -> None:
    sym = new_symbol("WG")
    served.hub.publish_trades("binance", sym, Decimal("1"), TS, Decimal("1"))
    async with served.connect(token) as ws:
        await ws.send(frame)
        error = await recv_json(ws)
        assert set(error) == {"type", "code", "message"}
        assert error["type"] == "error" and error["code"] == code
        # still usable
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [sym]})
        assert (await recv_json(ws))["type"] == "subscribed"


async def test_korean_errors(served: Served, token: str) -> None:
    async with served.connect(token, headers={"Accept-Language": "ko"}) as ws:
        await ws.send("{")
        assert (await recv_json(ws))["message"] == "잘못된 요청"


async def test_subscription_cap(served: Served, token: str, new_symbol: Callable[[str], str]) -> None:
    symbols = [new_symbol("WC") for _ in range(6)]
    for sym in symbols:
        served.hub.publish_trades("binance", sym, Decimal("1"), TS, Decimal("1"))
    async with served.connect(token) as ws:
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": symbols[:5]})
        assert (await recv_json(ws))["type"] == "subscribed"
        for _ in range(5):
            await recv_json(ws)
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": symbols[5:]})
        assert (await recv_json(ws))["code"] == "BAD_REQUEST"
        # re-subscribing to held symbols costs nothing against the cap
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": symbols[:2]})
        assert (await recv_json(ws))["type"] == "subscribed"


# --- authentication and rate limit --------------------------------------------------------


async def test_unauthenticated_sockets_close_4401(served: Served) -> None:
    async with served.connect() as ws:
        assert await close_code(ws) == 4401
    async with served.connect("not-a-jwt") as ws:
        assert await close_code(ws) == 4401
    async with served.connect(query="?token=garbage") as ws:
        assert await close_code(ws) == 4401


async def test_query_token_and_scope(served: Served, new_symbol: Callable[[str], str]) -> None:
    sym = new_symbol("WQ")
    served.hub.publish_trades("binance", sym, Decimal("1"), TS, Decimal("1"))
    async with served.connect(query=f"?token={token_for(new_account('wq'), [MARKET_READ])}") as ws:
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [sym]})
        assert (await recv_json(ws))["type"] == "subscribed"
    async with served.connect(token_for(new_account("wf"), [PORTFOLIO_READ])) as ws:
        assert await close_code(ws) == 4403


async def test_frames_count_toward_the_rate_limit(
    repository: MarketRepository, key_repository: ApiKeyRepository, new_symbol: Callable[[str], str]
) -> None:
    app = create_app(
        repository=repository, api_settings=test_api_settings(rate_limit="4/minute"), key_repository=key_repository
    )
    sym = new_symbol("WR")
    async with serve(app) as served:
        served.hub.publish_trades("binance", sym, Decimal("1"), TS, Decimal("1"))
        token = token_for(new_account("wr"))
        async with served.connect(token) as ws:  # the handshake is request 1
            for _ in range(3):
                await send_json(ws, {"action": "unsubscribe", "channel": "market", "symbols": [sym]})
                assert (await recv_json(ws))["type"] == "unsubscribed"
            await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [sym]})
            assert await recv_json(ws) == {"type": "error", "code": "RATE_LIMITED", "message": "Rate limit exceeded"}
            served.hub.publish_trades("binance", sym, Decimal("2"), TS, Decimal("1"))
            with pytest.raises(TimeoutError):  # not applied
                await recv_json(ws, timeout=0.3)
        async with served.connect(token) as ws:  # the account is out of budget: refused at the door
            assert await close_code(ws) == 4429


# --- slow clients ---------------------------------------------------------------------------


async def test_a_stalled_client_is_closed_1013_and_fast_ones_keep_up(
    repository: MarketRepository, key_repository: ApiKeyRepository, new_symbol: Callable[[str], str]
) -> None:
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository)
    sym = new_symbol("WL")
    big_bids, big_asks = levels(10_000, -1, 100), levels(10_001, 1, 100)
    async with serve(app, MarketHub(slow_close_after_s=0.5)) as served:
        hub = served.hub
        hub.publish_book("binance", sym, big_bids, big_asks, TS)
        subscribe = {"action": "subscribe", "channel": "orderbook", "symbol": sym, "depth": 100}
        # max_queue=1: the stalled client's library stops reading its socket after one message.
        stalled = await served.connect(token_for(new_account("slow")), max_queue=1)
        fast = [await served.connect(token_for(new_account("fast"))) for _ in range(3)]
        for ws in (stalled, *fast):
            await send_json(ws, subscribe)
        for ws in fast:
            assert (await recv_json(ws))["type"] == "subscribed"
            await recv_json(ws)
        received = [0] * len(fast)
        last_ts: list[str] = [""] * len(fast)

        async def read(i: int) -> None:
            ws = fast[i]
            async for raw in ws:
                received[i] += 1
                last_ts[i] = json.loads(raw)["timestamp"]

        readers = [asyncio.create_task(read(i)) for i in range(len(fast))]
        n = 0
        # about 8 MB a second of books: loopback socket buffers fill within a few seconds
        while stalled.close_code is None and n < 20_000:
            n += 1
            hub.publish_book("binance", sym, big_bids, big_asks, TS + n * 1_000_000)
            await asyncio.sleep(0.001)
            if hub.slow_closed:
                break
        assert hub.slow_closed == 1
        final_ts = "2024-03-21T09:30:%06.3fZ" % (0.123 + n / 1000)
        deadline = asyncio.get_running_loop().time() + 30  # for the readers to drain; the assert tells what differs
        while last_ts != [final_ts] * len(fast) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert last_ts == [final_ts] * len(fast)  # everyone fast got the latest book
        assert all(count > 0 for count in received)
        assert all(ws.close_code is None for ws in fast)
        assert await close_code(stalled, timeout=10) == 1013
        for task in readers:
            task.cancel()
        for ws in fast:
            await ws.close()
        assert len(hub.sessions) == 0 or all(s.close_code is None for s in hub.sessions)


async def test_dead_sockets_are_reaped_by_server_pings(
    repository: MarketRepository, key_repository: ApiKeyRepository
) -> None:
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository)
    async with serve(app, ws_ping_interval=0.2, ws_ping_timeout=0.3) as served:
        # A raw TCP client that completes the handshake and then never answers a ping.
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        token = token_for(new_account("dead"))
        writer.write(
            (
                f"GET /ws/market?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        await asyncio.sleep(0.05)
        assert len(served.hub.sessions) == 1
        data = await asyncio.wait_for(reader.read(2), 5)
        assert data[0] == 0x89  # FIN + ping opcode: the server pings
        for _ in range(100):
            if not served.hub.sessions:
                break
            await asyncio.sleep(0.05)
        assert not served.hub.sessions  # reaped
        writer.close()


def test_websockets_version() -> None:
    assert int(websockets.__version__.split(".")[0]) >= 13
