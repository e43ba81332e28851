"""The `/ws/market` WebSocket client: subscriptions that survive reconnects, and gap detection.

    async with MarketStream("https://127.0.0.1:8000", token=TOKEN, ca_file=".entasis/tls/cert.pem") as stream:
        await stream.subscribe_market(["BTC-USDT"])
        await stream.subscribe_orderbook("BTC-USDT", depth=5)
        await stream.subscribe_candles("BTC-USDT", "1m", exchange="sim")
        async for message in stream:          # MarketTick | OrderBookUpdate | CandleUpdate
            if message.gap:
                print(f"{message.gap} updates merged before this one")
            print(message.channel, message.symbol, message.exchange, message.seq)

The protocol (the server's `api/ws/protocol.py`, README "WebSocket /ws/market"): every frame the
client sends gets exactly one control reply, in order (`subscribed`/`unsubscribed`, `error` or
`pong`), so the client pairs replies with requests first-in first-out: `subscribe_*` returns the
acknowledgement with the venue the server bound, or raises the error's exception
(`InvalidSymbol`, `ValidationFailed`, `RateLimited`).

Reconnects: when the connection drops (or the server closes it: restart, 1013 too slow, 4408 idle),
the client reconnects with backoff (`ReconnectPolicy`) and subscribes again to everything it held,
each subscription on the venue the server bound it to the first time, so a subscription never
changes venue. Close codes 4401 (credentials refused) and 4403 (scope) end the stream with
`AuthError` / `Forbidden`: retrying cannot help. One exception: with `token` a function (asked at
every connection), a socket that worked and is then closed with 4401 (its token expired) is opened
again with a fresh token; a 4401 on the new socket ends the stream.

Gaps: the server numbers each subscription's updates (`seq` 1, 2, 3, ...) and, when the client
falls behind, merges them (conflation). A jump in `seq` sets `message.gap` to the number of
updates that were merged away and calls `on_gap(message)`. A reconnect starts every subscription
again at 1; the first message of each after a reconnect has `message.resumed` set (what happened
while disconnected is not replayed).

Application pings: every `ping_interval` seconds the client sends `{"action": "ping"}`; without a
`pong` within `ping_timeout` the connection is taken for dead and replaced. `ping()` measures the
round trip on demand.

Back-pressure: at most `max_queue` messages wait for the consumer; beyond that the client stops
reading the socket, the server then conflates (gaps show it) and eventually closes a client that
stays behind (1013), after which the client reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from entasis_client import _core
from entasis_client.errors import (
    AuthError,
    ConnectionFailed,
    EntasisError,
    Forbidden,
    InvalidResponse,
    RateLimited,
    error_for,
)
from entasis_client.models import Ack, CandleUpdate, Interval, MarketTick, OrderBookUpdate, StreamMessage
from entasis_client.retry import ReconnectPolicy

__all__ = ["WS_PATH", "MarketStream", "SequenceTracker", "Subscription"]

logger = logging.getLogger("entasis_client.stream")

WS_PATH: Final = "/ws/market"
MAX_SYMBOLS_PER_MESSAGE: Final = 100
# Close codes after which reconnecting cannot help: the credentials or their scope were refused.
_FATAL_CLOSE: Final = {4401: ("AUTH_FAILED", AuthError), 4403: ("FORBIDDEN", Forbidden)}
# Close codes that ask the client to come back later, not at once.
_SLOW_DOWN_CLOSE: Final = {1008, 1013, 4429}

M = TypeVar("M")
Callback = Callable[[M], Awaitable[None] | None]
SeqKey = tuple[str, str, str, str]  # channel, venue, symbol, interval ("" when none)


class SequenceTracker:
    """The last `seq` seen per subscription (channel, venue, symbol, interval) and the gaps.

    `observe` returns how many updates were skipped before this one: 0 in order, n when the seq
    jumped by n + 1. A seq that does not move forward (a subscription the server started again)
    restarts the count without a gap. `reset` forgets everything (a new connection numbers from 1
    again); `forget` drops the subscriptions of one symbol (after an unsubscribe)."""

    def __init__(self) -> None:
        self._last: dict[SeqKey, int] = {}

    def observe(self, key: SeqKey, seq: int) -> int:
        last = self._last.get(key, 0)
        self._last[key] = seq
        return seq - last - 1 if seq > last + 1 else 0

    def last(self, key: SeqKey) -> int | None:
        return self._last.get(key)

    def reset(self) -> None:
        self._last.clear()

    def forget(self, channel: str, symbol: str, exchange: str | None = None, interval: str | None = None) -> None:
        for key in [k for k in self._last if _matches(k, channel, symbol, exchange, interval)]:
            del self._last[key]


def _matches(key: SeqKey, channel: str, symbol: str, exchange: str | None, interval: str | None) -> bool:
    return (
        key[0] == channel
        and key[2] == symbol
        and (exchange is None or key[1] == exchange)
        and (interval is None or key[3] == interval)
    )


@dataclass(frozen=True)
class Subscription:
    """One subscription the stream holds and renews after every reconnect. `exchange`: the venue
    asked for (None: the server's default); `bound`: the venue the server bound it to (pinned on
    resubscribe); `depth` for `orderbook`, `interval` for `candles`."""

    channel: str
    symbol: str
    exchange: str | None = None
    interval: str | None = None
    depth: int | None = None
    bound: str | None = None

    @property
    def venue(self) -> str | None:
        return self.exchange or self.bound

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.channel, self.symbol, self.interval or "", self.exchange or "")


class _Disconnected(Exception):
    """The connection a request went out on is gone (the request is tried on the next one)."""


@dataclass
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    on_reply: Callable[[dict[str, Any]], None] | None


def _ws_url(url: str) -> str:
    """`https://host:port` (the REST base URL) or `wss://host:port/ws/market`, as a WebSocket URL."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    path = parts.path if parts.path not in ("", "/") else WS_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _venue(exchange: str | None) -> str | None:
    return exchange.strip().lower() if exchange is not None else None


def _symbols(symbols: str | Sequence[str]) -> list[str]:
    """As the server spells them (`btc-usdt` -> `BTC-USDT`), so replies and data match."""
    return [s.strip().upper() for s in ([symbols] if isinstance(symbols, str) else symbols)]


class MarketStream:
    """A self-healing `/ws/market` connection (see the module's doc).

    `url`: the API's base URL (`https://127.0.0.1:8000`) or the socket's (`wss://.../ws/market`).
    Credentials and TLS as `Client` (`token`, `api_key`, `ca_file`, `verify`). `reconnect`: the
    backoff (`ReconnectPolicy`; default forever, 0.5 s doubling to 30 s). `ping_interval`: seconds
    between application pings (None: none); `ping_timeout`: how long a pong may take.
    `request_timeout`: how long `subscribe_*`, `unsubscribe_*` and `ping` wait for their reply
    (across reconnects). `connect_timeout`: how long `start()` keeps trying to open the first
    connection. Callbacks (plain functions or coroutines): `on_gap(message)`,
    `on_reconnect(count)`, `on_error(error)` (a subscription the server refused on a resubscribe,
    which is dropped). `connect` and `sleep`: the websockets `connect` and the wait between pings and
    between connection attempts (tests replace them)."""

    def __init__(
        self,
        url: str = _core.DEFAULT_BASE_URL,
        *,
        token: _core.Credential | None = None,
        api_key: str | None = None,
        ca_file: str | Path | None = None,
        verify: bool | ssl.SSLContext = True,
        headers: Mapping[str, str] | None = None,
        language: str | None = None,
        reconnect: ReconnectPolicy | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 10.0,
        request_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        open_timeout: float = 10.0,
        max_queue: int = 1024,
        on_gap: Callback[StreamMessage] | None = None,
        on_reconnect: Callback[int] | None = None,
        on_error: Callback[EntasisError] | None = None,
        connect: Callable[..., Awaitable[ClientConnection]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = _ws_url(url)
        self._token = token
        self._api_key = api_key
        tls = _core.ssl_context(ca_file, verify)
        if tls is False:
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        self._ssl: ssl.SSLContext | None = tls if isinstance(tls, ssl.SSLContext) else None
        self._headers = dict(headers or {})
        if language is not None:
            self._headers["Accept-Language"] = language
        self.reconnect_policy = reconnect if reconnect is not None else ReconnectPolicy()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.open_timeout = open_timeout
        if max_queue < 1:
            raise ValueError("max_queue: at least 1")
        self.max_queue = max_queue
        self._on_gap = on_gap
        self._on_reconnect = on_reconnect
        self._on_error = on_error
        self._connect = connect if connect is not None else ws_connect
        self._sleep = sleep

        self._subs: dict[tuple[str, str, str, str], Subscription] = {}
        self._tracker = SequenceTracker()
        self._seen_keys: set[SeqKey] = set()  # subscriptions that delivered on an earlier connection
        self._conn_keys: set[SeqKey] = set()  # ... and on this one
        self._items: deque[StreamMessage] = deque()
        self._available = asyncio.Event()
        self._space = asyncio.Event()
        self._connected = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._pending: deque[_Pending] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._finished = False
        self._failure: BaseException | None = None
        self._stalled = False
        self.connections = 0  # connections opened (1 + reconnects, once running)
        self.reconnects = 0  # connections opened after the first
        self.gaps = 0  # updates merged away by the server, as the seq jumps showed
        self.last_rtt: float | None = None  # the latest ping's round trip, seconds

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the first connection; returns once the server answered on it. Raises
        `AuthError`/`Forbidden` when the credentials are refused and `ConnectionFailed` when no
        connection came up within `connect_timeout`."""
        if self._runner is not None:
            return
        self._runner = asyncio.create_task(self._run(), name="entasis-market-stream")
        try:
            await asyncio.wait_for(self._until_connected(), self.connect_timeout)
        except TimeoutError:
            await self.close()
            raise ConnectionFailed(
                "CONNECTION_FAILED", f"no connection to {self.url} within {self.connect_timeout:g} s"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection and stop reconnecting; iteration ends after the queued messages."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(BaseException):
                await runner
        self._finished = True
        self._available.set()
        self._space.set()

    async def __aenter__(self) -> MarketStream:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """What the stream holds (and renews on reconnect)."""
        return tuple(self._subs.values())

    # --- consuming ------------------------------------------------------------------------------

    def __aiter__(self) -> MarketStream:
        return self

    async def __anext__(self) -> StreamMessage:
        while True:
            if self._items:
                item = self._items.popleft()
                self._space.set()
                return item
            if self._failure is not None:
                raise self._failure
            if self._finished or self._runner is None:
                raise StopAsyncIteration
            self._available.clear()
            await self._available.wait()

    async def recv(self, timeout: float | None = None) -> StreamMessage:
        """The next message (TimeoutError after `timeout` seconds; StopAsyncIteration once closed)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    # --- requests -------------------------------------------------------------------------------

    async def subscribe_market(
        self, symbols: str | Sequence[str], *, exchange: str | None = None, timeout: float | None = None
    ) -> Ack:
        """Trades of `symbols` (`MarketTick`), each on `exchange` or the server's default venue."""
        names = _symbols(symbols)
        venue = _venue(exchange)
        frame: dict[str, Any] = {"action": "subscribe", "channel": "market", "symbols": names}
        if venue is not None:
            frame["exchange"] = venue

        def held(ack: Ack) -> None:
            for symbol in ack.symbols or []:
                bound = (ack.exchanges or {}).get(symbol) or venue
                self._hold(Subscription("market", symbol, venue, bound=bound))

        return await self._ack(frame, held, timeout)

    async def subscribe_orderbook(
        self, symbol: str, depth: int = 20, *, exchange: str | None = None, timeout: float | None = None
    ) -> Ack:
        """The order book of `symbol` at `depth` levels a side (1-100; `OrderBookUpdate`, a full
        book every time). Subscribing again with another depth replaces it."""
        venue, symbol = _venue(exchange), _symbols(symbol)[0]
        frame: dict[str, Any] = {"action": "subscribe", "channel": "orderbook", "symbol": symbol, "depth": depth}
        if venue is not None:
            frame["exchange"] = venue

        def held(ack: Ack) -> None:
            if ack.symbol is not None:
                self._hold(Subscription("orderbook", ack.symbol, venue, depth=depth, bound=ack.exchange or venue))

        return await self._ack(frame, held, timeout)

    async def subscribe_candles(
        self, symbol: str, interval: Interval = "1m", *, exchange: str | None = None, timeout: float | None = None
    ) -> Ack:
        """Every revision of `symbol`'s `interval` candles (`CandleUpdate`; `is_final` on the last)."""
        venue, symbol = _venue(exchange), _symbols(symbol)[0]
        frame: dict[str, Any] = {"action": "subscribe", "channel": "candles", "symbol": symbol, "interval": interval}
        if venue is not None:
            frame["exchange"] = venue

        def held(ack: Ack) -> None:
            if ack.symbol is not None:
                self._hold(Subscription("candles", ack.symbol, venue, interval=interval, bound=ack.exchange or venue))

        return await self._ack(frame, held, timeout)

    async def unsubscribe_market(
        self, symbols: str | Sequence[str], *, exchange: str | None = None, timeout: float | None = None
    ) -> Ack:
        """Stop `symbols`' trades (of `exchange` only, or of every venue)."""
        names = _symbols(symbols)
        venue = _venue(exchange)
        frame: dict[str, Any] = {"action": "unsubscribe", "channel": "market", "symbols": names}
        if venue is not None:
            frame["exchange"] = venue

        def dropped(ack: Ack) -> None:
            for symbol in ack.symbols or []:
                self._drop("market", symbol, venue, None)

        return await self._ack(frame, dropped, timeout)

    async def unsubscribe_orderbook(
        self, symbol: str, *, exchange: str | None = None, timeout: float | None = None
    ) -> Ack:
        venue, symbol = _venue(exchange), _symbols(symbol)[0]
        frame: dict[str, Any] = {"action": "unsubscribe", "channel": "orderbook", "symbol": symbol}
        if venue is not None:
            frame["exchange"] = venue

        def dropped(ack: Ack) -> None:
            if ack.symbol is not None:
                self._drop("orderbook", ack.symbol, venue, None)

        return await self._ack(frame, dropped, timeout)

    async def unsubscribe_candles(
        self, symbol: str, interval: Interval, *, exchange: str | None = None, timeout: float | None = None
    ) -> Ack:
        venue, symbol = _venue(exchange), _symbols(symbol)[0]
        frame: dict[str, Any] = {"action": "unsubscribe", "channel": "candles", "symbol": symbol, "interval": interval}
        if venue is not None:
            frame["exchange"] = venue

        def dropped(ack: Ack) -> None:
            if ack.symbol is not None:
                self._drop("candles", ack.symbol, venue, interval)

        return await self._ack(frame, dropped, timeout)

    async def ping(self, timeout: float | None = None) -> float:
        """An application ping; the round trip in seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._request({"action": "ping"}, None, timeout)
        self.last_rtt = loop.time() - started
        return self.last_rtt

    async def _ack(self, frame: dict[str, Any], on_ack: Callable[[Ack], None], timeout: float | None) -> Ack:
        def on_reply(reply: dict[str, Any]) -> None:
            on_ack(Ack.model_validate(reply))

        return Ack.model_validate(await self._request(frame, on_reply, timeout))

    async def _request(
        self, frame: dict[str, Any], on_reply: Callable[[dict[str, Any]], None] | None, timeout: float | None
    ) -> dict[str, Any]:
        """Send `frame` and return its reply; a reply registers what it means (`on_reply`) as it
        is read, so the next reconnect already knows of it. A connection lost before the reply
        sends the frame again on the next one, within `timeout`."""
        async with asyncio.timeout(timeout if timeout is not None else self.request_timeout):
            while True:
                await self._until_connected()
                ws = self._ws
                if ws is None:
                    continue
                try:
                    return await self._exchange(ws, frame, on_reply)
                except _Disconnected:
                    await asyncio.sleep(0)  # let the runner notice the loss and clear `connected`

    async def _until_connected(self) -> None:
        while not self._connected.is_set():
            self._raise_if_over()
            runner = self._runner
            if runner is None:
                raise ConnectionFailed("STREAM_CLOSED", "the stream is not started")
            waiter = asyncio.ensure_future(self._connected.wait())
            try:
                await asyncio.wait({waiter, runner}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        self._raise_if_over()

    def _raise_if_over(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing or self._finished:
            raise ConnectionFailed("STREAM_CLOSED", "the stream is closed")

    async def _exchange(
        self, ws: ClientConnection, frame: dict[str, Any], on_reply: Callable[[dict[str, Any]], None] | None
    ) -> dict[str, Any]:
        if ws is not self._ws:
            raise _Disconnected
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        # Appended and written with no await in between: replies come back in this order.
        self._pending.append(_Pending(future, on_reply))
        try:
            try:
                await ws.send(json.dumps(frame))
            except ConnectionClosed:
                raise _Disconnected from None
            return await future
        finally:
            if not future.done():
                future.cancel()

    # --- subscriptions held ---------------------------------------------------------------------

    def _hold(self, sub: Subscription) -> None:
        self._subs[sub.key] = sub

    def _drop(self, channel: str, symbol: str, exchange: str | None, interval: str | None) -> None:
        for key, sub in list(self._subs.items()):
            if sub.channel != channel or sub.symbol != symbol:
                continue
            if interval is not None and sub.interval != interval:
                continue
            if exchange is not None and exchange not in (sub.exchange, sub.bound):
                continue
            del self._subs[key]
        self._tracker.forget(channel, symbol, exchange, interval)
        for keys in (self._seen_keys, self._conn_keys):
            for key in [k for k in keys if _matches(k, channel, symbol, exchange, interval)]:
                keys.discard(key)

    def _pin(self, channel: str, symbol: str, interval: str, venue: str) -> None:
        """A subscription the server bound to no venue yet takes the first one that publishes."""
        for key, sub in list(self._subs.items()):
            held = sub.channel == channel and sub.symbol == symbol and (sub.interval or "") == interval
            if held and sub.venue is None:
                self._subs[key] = replace(sub, bound=venue)

    def _renewals(self) -> list[tuple[dict[str, Any], list[Subscription]]]:
        """The frames that subscribe again to everything held, each with what it renews."""
        frames: list[tuple[dict[str, Any], list[Subscription]]] = []
        market: dict[str | None, list[Subscription]] = {}
        for sub in self._subs.values():
            if sub.channel == "market":
                market.setdefault(sub.venue, []).append(sub)
                continue
            frame: dict[str, Any] = {"action": "subscribe", "channel": sub.channel, "symbol": sub.symbol}
            if sub.channel == "orderbook":
                frame["depth"] = sub.depth
            else:
                frame["interval"] = sub.interval
            if sub.venue is not None:
                frame["exchange"] = sub.venue
            frames.append((frame, [sub]))
        for venue, subs in market.items():
            symbols = list(dict.fromkeys(s.symbol for s in subs))
            for start in range(0, len(symbols), MAX_SYMBOLS_PER_MESSAGE):
                chunk = symbols[start : start + MAX_SYMBOLS_PER_MESSAGE]
                frame = {"action": "subscribe", "channel": "market", "symbols": chunk}
                if venue is not None:
                    frame["exchange"] = venue
                frames.append((frame, [s for s in subs if s.symbol in chunk]))
        return frames

    def _rebound(self, subs: list[Subscription]) -> Callable[[dict[str, Any]], None]:
        def on_reply(reply: dict[str, Any]) -> None:
            ack = Ack.model_validate(reply)
            for sub in subs:
                bound = (ack.exchanges or {}).get(sub.symbol) if sub.channel == "market" else ack.exchange
                if sub.venue is None and bound is not None and sub.key in self._subs:
                    self._subs[sub.key] = replace(self._subs[sub.key], bound=bound)

        return on_reply

    # --- the connection -------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        try:
            while not self._closing:
                try:
                    ws = await self._open()
                except EntasisError:
                    raise
                except (OSError, TimeoutError, InvalidHandshake) as exc:
                    if _core.is_tls_failure(exc):
                        raise ConnectionFailed("TLS_FAILED", f"{type(exc).__name__}: {exc}") from exc
                    failures += 1
                    delay = self.reconnect_policy.delay(failures)
                    if delay is None:
                        raise ConnectionFailed(
                            "CONNECTION_FAILED", f"{failures} connections to {self.url} failed; last: {exc}"
                        ) from exc
                    logger.info("connecting to %s failed (%s); again in %.2f s", self.url, exc, delay)
                    await self._sleep(delay)
                    continue
                renewed, code, reason = await self._session(ws)
                if self._closing:
                    return
                refreshable = code == 4401 and renewed and callable(self._token)  # e.g. the token expired
                if code in _FATAL_CLOSE and not refreshable:
                    error_code, cls = _FATAL_CLOSE[code]
                    raise cls(error_code, reason or f"the server closed the socket with {code}")
                failures = 1 if renewed else failures + 1
                delay = self.reconnect_policy.delay(failures)
                if delay is None:
                    raise ConnectionFailed(
                        "CONNECTION_FAILED", f"gave up reconnecting to {self.url} (last close {code})"
                    )
                if code in _SLOW_DOWN_CLOSE:
                    delay = max(delay, 1.0)
                logger.info("connection closed (%s %s); reconnecting in %.2f s", code, reason, delay)
                await self._sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failure = exc
            logger.warning("market stream stopped: %s", exc)
        finally:
            self._finished = True
            self._connected.clear()
            self._available.set()
            self._space.set()

    async def _open(self) -> ClientConnection:
        headers = {**self._headers, **_core.auth_headers(self._token, self._api_key)}
        options: dict[str, Any] = {
            "additional_headers": headers,
            "user_agent_header": _core.USER_AGENT,
            "open_timeout": self.open_timeout,
            "close_timeout": 5.0,
        }
        if self.url.startswith("wss:"):
            options["ssl"] = self._ssl
        try:
            return await self._connect(self.url, **options)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                code = "AUTH_FAILED" if status == 401 else "FORBIDDEN"
                raise error_for(code, f"the server refused the WebSocket handshake ({status})", status=status) from exc
            raise

    async def _session(self, ws: ClientConnection) -> tuple[bool, int | None, str]:
        """Serve one connection until it ends: subscribe again, then read. Returns whether the
        subscriptions were renewed, and the close code and reason."""
        self._ws = ws
        self._pending = deque()
        self._tracker.reset()
        self._conn_keys = set()
        self.connections += 1
        reader = asyncio.create_task(self._read(ws, self._pending))
        pinger: asyncio.Task[None] | None = None
        renewed = False
        try:
            renewed = await self._renew(ws, reader)
            if renewed:
                if self.connections > 1:
                    self.reconnects += 1
                    await self._notify(self._on_reconnect, self.reconnects)
                self._connected.set()
                if self.ping_interval is not None:
                    pinger = asyncio.create_task(self._keepalive(ws, self.ping_interval))
                await reader
        finally:
            self._connected.clear()
            if pinger is not None:
                pinger.cancel()
            if not reader.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5)
                reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if pinger is not None:
                with contextlib.suppress(BaseException):
                    await pinger
            self._ws = None
        return renewed, ws.close_code, ws.close_reason or ""

    async def _renew(self, ws: ClientConnection, reader: asyncio.Task[None]) -> bool:
        """Subscribe again to everything held (pipelined), then ping: the server answered, the
        socket is good. False when the connection failed meanwhile (or was rate limited)."""
        renewals = self._renewals()
        requests = [asyncio.ensure_future(self._exchange(ws, frame, self._rebound(subs))) for frame, subs in renewals]
        requests.append(asyncio.ensure_future(self._exchange(ws, {"action": "ping"}, None)))
        try:
            while True:
                _, waiting = await asyncio.wait(requests, timeout=self.request_timeout)
                if not waiting:
                    break
                if reader.done():
                    return False
                if not self._stalled:  # the server does not answer: try another connection
                    logger.warning("no reply to %d subscription(s) in %g s", len(waiting), self.request_timeout)
                    return False
        finally:
            for request in requests:
                if not request.done():
                    request.cancel()
                elif not request.cancelled():
                    request.exception()  # retrieved, whichever way this ends
        for (frame, subs), request in zip(renewals, requests, strict=False):
            failure = request.exception() if not request.cancelled() else _Disconnected()
            if failure is None:
                continue
            if isinstance(failure, _Disconnected):
                return False
            if isinstance(failure, RateLimited):
                return False
            if isinstance(failure, EntasisError):
                for sub in subs:
                    self._subs.pop(sub.key, None)
                logger.warning("resubscribing %s refused: %s", frame, failure)
                await self._notify(self._on_error, failure)
                continue
            raise failure
        last = requests[-1]
        return not last.cancelled() and last.exception() is None

    async def _keepalive(self, ws: ClientConnection, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._sleep(interval)
            if self._stalled:
                continue  # replies wait behind unread messages; the consumer is the slow one
            started = loop.time()
            try:
                await asyncio.wait_for(self._exchange(ws, {"action": "ping"}, None), self.ping_timeout)
            except _Disconnected:
                return
            except TimeoutError:
                if self._stalled:
                    continue
                logger.warning("no pong within %g s: replacing the connection", self.ping_timeout)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(code=1001, reason="no pong"), 2)
                ws.transport.abort()
                return
            self.last_rtt = loop.time() - started

    async def _read(self, ws: ClientConnection, pending: deque[_Pending]) -> None:
        try:
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    logger.warning("not JSON from the server: %.80r", raw)
                    continue
                if not isinstance(message, dict):
                    continue
                if "type" in message:
                    self._control(message, pending)
                    continue
                item = await self._data(message)
                if item is not None:
                    await self._deliver(item)
        except ConnectionClosed:
            pass
        finally:
            while pending:
                waiting = pending.popleft()
                if not waiting.future.done():
                    waiting.future.set_exception(_Disconnected())
                    waiting.future.exception()  # retrieved: nobody may be waiting any more

    def _control(self, message: dict[str, Any], pending: deque[_Pending]) -> None:
        kind = message.get("type")
        if kind not in ("subscribed", "unsubscribed", "error", "pong"):
            return  # a keep-alive or a kind this client does not know
        if not pending:
            logger.warning("a reply nobody asked for: %s", message)
            return
        waiting = pending.popleft()
        if kind == "error":
            error = error_for(str(message.get("code", "UNKNOWN")), str(message.get("message", "")))
            if not waiting.future.done():
                waiting.future.set_exception(error)
            return
        if waiting.on_reply is not None:
            try:
                waiting.on_reply(message)
            except Exception:  # a malformed ack must not kill the reader
                logger.exception("could not apply the reply %s", message)
        if not waiting.future.done():
            waiting.future.set_result(message)

    async def _data(self, message: dict[str, Any]) -> StreamMessage | None:
        model: type[MarketTick] | type[OrderBookUpdate] | type[CandleUpdate]
        if "bids" in message:
            model, channel = OrderBookUpdate, "orderbook"
        elif "interval" in message:
            model, channel = CandleUpdate, "candles"
        elif "price" in message:
            model, channel = MarketTick, "market"
        else:
            return None
        venue, symbol = str(message.get("exchange", "")), str(message.get("symbol", ""))
        interval = str(message.get("interval", "")) if channel == "candles" else ""
        key: SeqKey = (channel, venue, symbol, interval)
        seq = message.get("seq")
        gap = self._tracker.observe(key, seq) if isinstance(seq, int) and not isinstance(seq, bool) else 0
        resumed = key in self._seen_keys and key not in self._conn_keys
        self._conn_keys.add(key)
        self._seen_keys.add(key)
        self._pin(channel, symbol, interval, venue)
        try:
            item: StreamMessage = model.model_validate({**message, "gap": gap, "resumed": resumed})
        except ValidationError as exc:
            logger.warning("unreadable %s message: %s", channel, exc)
            await self._notify(self._on_error, InvalidResponse("INVALID_RESPONSE", f"unreadable {channel} message"))
            return None
        if gap:
            self.gaps += gap
            await self._notify(self._on_gap, item)
        return item

    async def _deliver(self, item: StreamMessage) -> None:
        while len(self._items) >= self.max_queue and not self._closing:
            self._stalled = True
            self._space.clear()
            await self._space.wait()
        self._stalled = False
        self._items.append(item)
        self._available.set()

    async def _notify(self, callback: Callback[M] | None, value: M) -> None:
        if callback is None:
            return
        try:
            result = callback(value)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("a %s callback failed", getattr(callback, "__name__", "stream"))
