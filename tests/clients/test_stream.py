"""`MarketStream` against the real `/ws/market`: an app served by uvicorn in the test's loop (as
tests/api/test_ws_app.py does), updates pushed into its hub. Subscriptions on the three channels,
the reconnect and resubscribe after the server closes the socket or restarts, the venue kept
across reconnects, gaps from the server's own conflation, in-band errors, refused credentials,
pings, TLS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from entasis_client import (
    AsyncClient,
    AuthError,
    CandleUpdate,
    EntasisError,
    Forbidden,
    InvalidSymbol,
    MarketStream,
    MarketTick,
    OrderBookUpdate,
    ReconnectPolicy,
    StreamMessage,
    ValidationFailed,
)
from fastapi import FastAPI

from api.key_repository import ApiKeyRepository
from api.ws import MarketHub, install_market_websocket
from api.ws.protocol import CandleBar, format_levels
from api.ws.server_protocol import SendManyWebSocketProtocol
from infra.store.repository import MarketRepository
from tests.api.conftest import NS, Market, TradeRow, new_account, token_for
from tests.api.test_ws_support import Served, free_port, serve
from tests.clients.conftest import make_app, test_api_settings

TS = 1_711_013_400_123_000_000  # 2024-03-21T09:30:00.123Z
D = Decimal
FAST = ReconnectPolicy(initial=0.05, maximum=0.2, jitter=0)


@pytest.fixture
async def served(repository: MarketRepository, key_repository: ApiKeyRepository) -> AsyncIterator[Served]:
    async with serve(make_app(repository, key_repository), MarketHub()) as s:
        yield s


@pytest.fixture
def token() -> str:
    return token_for(new_account("st"))


def base(served: Served) -> str:
    return f"http://127.0.0.1:{served.port}"


def bar(minute: int, close: str, final: bool = False) -> CandleBar:
    c = D(close)
    return CandleBar(TS - TS % (60 * NS) + minute * 60 * NS, c, c + 1, c - 1, c, D("0.5"), final)


async def tick_of(stream: MarketStream, timeout: float = 5.0) -> MarketTick:
    message = await stream.recv(timeout)
    assert isinstance(message, MarketTick), message
    return message


async def take(stream: MarketStream, n: int, timeout: float = 5.0) -> list[StreamMessage]:
    return [await stream.recv(timeout) for _ in range(n)]


async def settle(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def server_subs(hub: MarketHub) -> set[tuple[str, ...]]:
    return {key for session in hub.sessions for key in session.subs}


async def test_three_channels_parse_and_count(served: Served, token: str, new_symbol: Callable[[str], str]) -> None:
    sym = new_symbol("SA")
    hub = served.hub
    hub.publish_trades("binance", sym, D("100"), TS, D("1"))
    hub.publish_trades("kraken", sym, D("99"), TS - NS, D("2"))
    hub.publish_book("binance", sym, format_levels([["100", "1"], ["99", "2"]]), format_levels([["101", "3"]]), TS)
    hub.publish_candle("binance", sym, "1m", bar(0, "100"))
    async with MarketStream(base(served), token=token) as stream:
        ack = await stream.subscribe_market([sym.lower()], exchange="KRAKEN")
        assert (ack.type, ack.channel, ack.symbols, ack.exchanges) == ("subscribed", "market", [sym], {sym: "kraken"})
        tick = await stream.recv(5)
        assert isinstance(tick, MarketTick) and tick.channel == "market"
        assert tick.model_dump(mode="json") == {"symbol": sym, "exchange": "kraken", "price": "99.00000000",
                                                "timestamp": "2024-03-21T09:29:59.123Z", "volume": "2.00000000",
                                                "seq": 1}
        assert (tick.gap, tick.resumed) == (0, False)

        book_ack = await stream.subscribe_orderbook(sym, depth=1)
        assert (book_ack.symbol, book_ack.depth, book_ack.exchange) == (sym, 1, "binance")  # the default venue
        book = await stream.recv(5)
        assert isinstance(book, OrderBookUpdate)
        assert (book.bids, book.asks, book.seq) == ([[D(100), D(1)]], [[D(101), D(3)]], 1)

        candle_ack = await stream.subscribe_candles(sym, "1m", exchange="binance")
        assert (candle_ack.interval, candle_ack.exchange) == ("1m", "binance")
        candle = await stream.recv(5)
        assert isinstance(candle, CandleUpdate) and (candle.interval, candle.close, candle.is_final) == (
            "1m", D(100), False)

        hub.publish_trades("kraken", sym, D("98"), TS + NS, D("0.5"))
        hub.publish_trades("binance", sym, D("101"), TS + NS, D("0.5"))  # not this subscription's venue
        hub.publish_candle("binance", sym, "1m", bar(0, "101", final=True))
        got = await take(stream, 2)
        assert [(type(g).__name__, g.exchange, g.seq) for g in got] == [("MarketTick", "kraken", 2),
                                                                      ("CandleUpdate", "binance", 2)]
        assert isinstance(got[1], CandleUpdate) and got[1].is_final
        assert stream.gaps == 0 and {s.channel for s in stream.subscriptions} == {"market", "orderbook", "candles"}


async def test_the_server_closing_the_socket_reconnects_and_resubscribes_on_the_same_venues(
    served: Served, token: str, new_symbol: Callable[[str], str]
) -> None:
    sym = new_symbol("SR")
    hub = served.hub
    hub.publish_trades("binance", sym, D("100"), TS, D("1"))
    hub.publish_book("binance", sym, format_levels([["100", "1"]]), format_levels([["101", "1"]]), TS)
    hub.publish_candle("binance", sym, "5m", bar(0, "100"))
    reconnects: list[int] = []
    async with MarketStream(base(served), token=token, reconnect=FAST, on_reconnect=reconnects.append) as stream:
        await stream.subscribe_market(sym)  # bound to binance, the venue with the latest trade
        await stream.subscribe_orderbook(sym, depth=5)
        await stream.subscribe_candles(sym, "5m")
        first = await take(stream, 3)
        assert {(m.channel, m.exchange, m.seq) for m in first} == {
            ("market", "binance", 1), ("orderbook", "binance", 1), ("candles", "binance", 1)}
        for i in range(2, 4):
            hub.publish_trades("binance", sym, D(100 + i), TS + i * NS, D("1"))
            assert (await stream.recv(5)).seq == i
        held = server_subs(hub)

        # kraken trades later: a fresh subscription without `exchange` would now bind to kraken
        hub.publish_trades("kraken", sym, D("90"), TS + 10 * NS, D("1"))
        for session in list(hub.sessions):
            session.kick(1012, "service restart")  # the server closes every socket
        await settle(lambda: reconnects == [1] and stream.connected)

        assert server_subs(hub) == held  # the same subscriptions, binance's, on the new socket
        again = await take(stream, 3)  # each subscription's latest value, numbered from 1 again
        assert {(m.channel, m.exchange, m.seq, m.gap, m.resumed) for m in again} == {
            ("market", "binance", 1, 0, True), ("orderbook", "binance", 1, 0, True),
            ("candles", "binance", 1, 0, True)}
        hub.publish_trades("binance", sym, D("104"), TS + 11 * NS, D("1"))
        hub.publish_trades("kraken", sym, D("91"), TS + 11 * NS, D("1"))
        tick = await stream.recv(5)
        assert (tick.exchange, tick.seq, tick.gap, tick.resumed) == ("binance", 2, 0, False)
        assert stream.reconnects == 1 and stream.connections == 2


async def test_a_restarted_server_is_reconnected_to(
    repository: MarketRepository, key_repository: ApiKeyRepository, token: str, new_symbol: Callable[[str], str]
) -> None:
    sym = new_symbol("SS")
    port = free_port()

    @contextlib.asynccontextmanager
    async def server(hub: MarketHub) -> AsyncIterator[FastAPI]:
        app = make_app(repository, key_repository)
        install_market_websocket(app, hub)
        instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                 ws=SendManyWebSocketProtocol))  # as `entasis api` serves
        task = asyncio.create_task(instance.serve())
        await settle(lambda: instance.started or task.done())
        try:
            yield app
        finally:
            instance.should_exit = True
            await asyncio.wait_for(task, 10)

    first, second = MarketHub(), MarketHub()
    first.publish_trades("binance", sym, D("1"), TS, D("1"))
    second.publish_trades("binance", sym, D("2"), TS + NS, D("1"))
    reconnects: list[int] = []
    stream = MarketStream(f"ws://127.0.0.1:{port}/ws/market", token=token, reconnect=FAST,
                          on_reconnect=reconnects.append)
    async with server(first):
        await stream.start()
        await stream.subscribe_market([sym])
        assert (await tick_of(stream)).price == D("1")
    await settle(lambda: not stream.connected)
    await asyncio.sleep(0.3)  # down for a while: connection attempts are refused
    async with server(second):
        tick = await tick_of(stream, 10)
        assert (tick.price, tick.seq, tick.resumed) == (D("2"), 1, True)
        assert reconnects == [1] and server_subs(second) == {("market", "binance", sym)}
        await stream.close()
    with pytest.raises(StopAsyncIteration):
        await stream.recv(1)


async def test_conflation_by_the_server_shows_as_gaps(
    repository: MarketRepository, key_repository: ApiKeyRepository, token: str, new_symbol: Callable[[str], str]
) -> None:
    """A hub that lets one update wait per socket: a burst the sender cannot keep up with is
    merged (volumes added) and the client sees the jumps in `seq`."""
    sym = new_symbol("SG")
    gaps: list[StreamMessage] = []
    async with serve(make_app(repository, key_repository), MarketHub(max_backlog=1)) as served:
        served.hub.publish_trades("binance", sym, D("100"), TS, D("1"))
        async with MarketStream(base(served), token=token, on_gap=gaps.append) as stream:
            await stream.subscribe_market(sym)
            assert (await stream.recv(5)).seq == 1
            for i in range(1, 21):  # one burst, no await: the socket's sender cannot run in between
                served.hub.publish_trades("binance", sym, D(100 + i), TS + i * NS, D("0.5"))
            received: list[StreamMessage] = []
            while not received or received[-1].seq < 21:
                received.append(await stream.recv(5))
    assert isinstance(received[-1], MarketTick) and received[-1].price == D(120)
    assert len(received) < 20 and gaps  # merged
    assert sum(m.gap for m in received) + len(received) == 20  # every update either arrived or is counted
    assert [m.seq for m in gaps] == [m.seq for m in received if m.gap]
    assert sum(m.volume for m in received if isinstance(m, MarketTick)) == D(10)  # merged volumes add up
    assert stream.gaps == sum(m.gap for m in received)


async def test_in_band_errors_raise_and_the_stream_goes_on(
    served: Served, token: str, new_symbol: Callable[[str], str]
) -> None:
    sym = new_symbol("SE")
    served.hub.publish_trades("binance", sym, D("1"), TS, D("1"))
    async with MarketStream(base(served), token=token, language="ko") as stream:
        with pytest.raises(InvalidSymbol) as unknown:
            await stream.subscribe_market(["NOPE9-USDT"])
        assert unknown.value.code == "MARKET_001" and unknown.value.status is None
        assert unknown.value.message == "유효하지 않은 심볼"
        with pytest.raises(ValidationFailed):
            await stream.subscribe_candles(sym, "2m")  # type: ignore[arg-type]
        with pytest.raises(ValidationFailed):
            await stream.subscribe_orderbook(sym, depth=0)
        with pytest.raises(InvalidSymbol):
            await stream.subscribe_market(sym, exchange="kraken")  # a venue that does not carry it
        assert stream.subscriptions == ()
        ack = await stream.subscribe_market(sym)
        assert ack.exchanges == {sym: "binance"}
        assert (await stream.recv(5)).symbol == sym
        rtt = await stream.ping()
        assert 0 < rtt < 5


async def test_unsubscribe_stops_the_updates_and_is_not_renewed(
    served: Served, token: str, new_symbol: Callable[[str], str]
) -> None:
    a, b = new_symbol("SU"), new_symbol("SV")
    hub = served.hub
    for sym in (a, b):
        hub.publish_trades("binance", sym, D("1"), TS, D("1"))
    reconnects: list[int] = []
    async with MarketStream(base(served), token=token, reconnect=FAST, on_reconnect=reconnects.append) as stream:
        await stream.subscribe_market([a, b])
        await take(stream, 2)
        ack = await stream.unsubscribe_market(a)
        assert (ack.type, ack.symbols) == ("unsubscribed", [a])
        assert [s.symbol for s in stream.subscriptions] == [b]
        hub.publish_trades("binance", a, D("2"), TS + NS, D("1"))
        hub.publish_trades("binance", b, D("2"), TS + NS, D("1"))
        assert (await stream.recv(5)).symbol == b
        for session in list(hub.sessions):
            session.kick(1013, "try again later")
        await settle(lambda: reconnects == [1] and stream.connected, timeout=10)
        assert server_subs(hub) == {("market", "binance", b)}


async def test_refused_credentials_end_the_stream(served: Served, new_symbol: Callable[[str], str]) -> None:
    with pytest.raises(AuthError) as refused:
        await MarketStream(base(served), token="not-a-jwt", reconnect=FAST).start()
    assert refused.value.code == "AUTH_FAILED" and not isinstance(refused.value, Forbidden)
    with pytest.raises(Forbidden):
        await MarketStream(base(served), token=token_for(new_account("np"), ["portfolio:read"])).start()


async def test_an_expired_token_is_renewed_when_the_token_is_a_function(
    repository: MarketRepository, key_repository: ApiKeyRepository, new_symbol: Callable[[str], str]
) -> None:
    """The server closes a socket with 4401 when its token expires; a stream whose token is a
    function opens a new socket with a fresh token and resubscribes."""
    sym = new_symbol("SX")
    settings = test_api_settings(jwt_leeway_seconds=0)
    account = new_account("exp")
    issued: list[str] = []

    def fresh() -> str:
        issued.append(token_for(account, settings=settings, ttl_s=3))  # `exp` in whole seconds: 2 to 3 s
        return issued[-1]

    async with serve(make_app(repository, key_repository, settings), MarketHub()) as served:
        served.hub.publish_trades("binance", sym, D("1"), TS, D("1"))
        reconnects: list[int] = []
        async with MarketStream(base(served), token=fresh, reconnect=FAST, on_reconnect=reconnects.append) as stream:
            await stream.subscribe_market(sym)
            assert (await tick_of(stream)).seq == 1
            await settle(lambda: len(reconnects) >= 1 and stream.connected, timeout=10)
            assert len(issued) >= 2 and (await tick_of(stream)).resumed
        with pytest.raises(AuthError):  # a plain string token that expires: the stream ends
            async with MarketStream(base(served), token=token_for(account, settings=settings, ttl_s=3),
                                    reconnect=FAST) as doomed:
                await doomed.subscribe_market(sym)
                while True:
                    await doomed.recv(10)


async def test_application_pings_keep_the_socket_and_measure_it(served: Served, token: str) -> None:
    async with MarketStream(base(served), token=token, ping_interval=0.05, ping_timeout=2) as stream:
        await settle(lambda: stream.last_rtt is not None)
        assert stream.connected and stream.connections == 1


async def test_tls_and_the_rest_clients_factory(
    repository: MarketRepository,
    key_repository: ApiKeyRepository,
    tls_files: tuple[Path, Path],
    token: str,
    market: Market,
    new_symbol: Callable[[str], str],
) -> None:
    sym = new_symbol("ST")
    market.trades([TradeRow("binance", sym, "t1", D("7"), D("1"), TS)])
    cert, key = tls_files
    options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    async with serve(make_app(repository, key_repository), MarketHub(), **options) as served:
        served.hub.publish_trades("binance", sym, D("7"), TS, D("1"))
        async with AsyncClient(f"https://127.0.0.1:{served.port}", token=token, ca_file=cert) as api:
            assert (await api.price(sym)).price == D("7")
            async with api.market_stream() as stream:
                assert stream.url == f"wss://127.0.0.1:{served.port}/ws/market"
                await stream.subscribe_market(sym)
                assert (await tick_of(stream)).price == D("7")
        with pytest.raises(EntasisError) as untrusted:
            await MarketStream(f"https://127.0.0.1:{served.port}", token=token, reconnect=FAST).start()
        assert untrusted.value.code == "TLS_FAILED"
