"""The `/ws/market` socket handler.

Authentication is the REST gate's (`SecurityGate.admit`); browsers, which cannot set headers on a
WebSocket, offer the credential as a subprotocol (`entasis.bearer.<jwt>` or `entasis.key.<key>`
beside `entasis.v1`, which is the one selected) or, for a token, `?token=` (logged with the URL);
the socket is accepted first and then closed with the gate's code (4401 unauthenticated, 4403
forbidden or lacking `market:read`, 4429 over the rate limit), because a handshake refused before
`accept` reaches a browser as a bare HTTP 403 with no reason at all.

Rate limit: the handshake counts one request of the account's 1000/minute, and so does every
frame the client sends (subscribe, unsubscribe or ping, valid or not); data the server pushes is
free. Over the limit, the frame gets a RATE_LIMITED error and is not applied; the socket stays open.
A socket holds at most `MarketHub.max_subscriptions` subscriptions (each (channel, venue, symbol,
interval) one). Which venue a subscription without `exchange` binds to: `_Connection._venues`.

Limits (docs/decisions.md, "WebSocket"; settings in docs/configuration.md):
- frames over 16 KiB are refused by uvicorn's WebSocket protocol itself (`ws_max_size`, close 1009);
- at most `ws_max_sockets_per_account` open sockets per account (the next one is closed with
  1008) and `ws_max_sockets` in this process (the next one is closed with 1013, try again later);
- a socket whose client sent nothing for `ws_idle_seconds` is closed with 4408; any frame counts,
  `{"action": "ping"}` (answered `{"type": "pong"}`) is the one meant for it;
- a socket opened with a token is closed with 4401 when the token stops being accepted (its
  `exp` plus the configured leeway, the moment REST starts refusing it);
- a socket opened with an API key re-reads the key every `api_key_cache_seconds` (at least once a
  second): revoked or deleted, 4401; no longer `market:read`, 4403. An unreachable key store
  leaves the socket open until the next check (an outage must not drop every client).

Keep-alive: uvicorn sends the WebSocket ping frames (`ws_ping_interval`, default 20 s) and drops a
peer that does not answer within `ws_ping_timeout`; the handler then sees the disconnect and the
hub forgets the socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio.to_thread
from fastapi import FastAPI
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from api.errors import ErrorCode, Language, negotiate_language
from api.keys import ApiKeyVerifier
from api.principal import MARKET_READ, Principal
from api.ratelimit import RateLimiter
from api.security import WS_PROTOCOL, SecurityGate, websocket_close_code
from api.ws.hub import CLOSE_TRY_AGAIN_LATER, PENDING, MarketHub, Session, sub_key
from api.ws.protocol import (
    PONG_MESSAGE,
    Command,
    Ping,
    ProtocolError,
    ack_message,
    error_message,
    parse_message,
)
from api.ws.queue import ConflatingQueue
from api.ws.server_protocol import SEND_MANY
from infra.config.api import ApiSettings

logger = logging.getLogger("api.ws")

WS_PATH = "/ws/market"
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_INTERNAL = 1011
CLOSE_POLICY = 1008  # RFC 6455 "policy violation": too many sockets for this account
CLOSE_IDLE = 4408  # like HTTP 408: the client sent nothing for too long
MIN_KEY_RECHECK_S = 1.0  # a 0 s key cache must not turn every socket into a query loop
_CLOSE_TIMEOUT_S = 2.0  # a peer that does not take our close frame in time is simply dropped


@dataclass
class SocketPolicy:
    """The per-socket limits, and the clocks they are measured with (injectable for tests):
    `clock` (monotonic) for idleness and key re-checks, `wall_clock` (epoch seconds) for token
    expiry, `sleep` for waiting between checks."""

    max_per_account: int = 10
    max_total: int = 2000
    idle_s: float = 600.0
    key_recheck_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> SocketPolicy:
        return cls(
            max_per_account=settings.ws_max_sockets_per_account,
            max_total=settings.ws_max_sockets,
            idle_s=settings.ws_idle_seconds,
            key_recheck_s=max(MIN_KEY_RECHECK_S, settings.api_key_cache_seconds),
        )


@dataclass
class SocketCounts:
    """Open sockets of this process, per account and in total (event-loop only: no lock)."""

    total: int = 0
    per_account: dict[str, int] = field(default_factory=dict)

    def take(self, account: str, policy: SocketPolicy) -> tuple[int, str] | None:
        """Counts a new socket of `account`; (close code, reason) instead when a cap refuses it."""
        if self.total >= policy.max_total:
            return CLOSE_TRY_AGAIN_LATER, "server at its socket limit"
        if self.per_account.get(account, 0) >= policy.max_per_account:
            return CLOSE_POLICY, f"at most {policy.max_per_account} sockets per account"
        self.total += 1
        self.per_account[account] = self.per_account.get(account, 0) + 1
        return None

    def release(self, account: str) -> None:
        self.total -= 1
        left = self.per_account[account] - 1
        if left:
            self.per_account[account] = left
        else:
            del self.per_account[account]  # accounts come and go: keep only those with sockets


def install_market_websocket(
    app: FastAPI, hub: MarketHub | None = None, policy: SocketPolicy | None = None
) -> MarketHub:
    """Serve `/ws/market` on `app` from `hub` (a new one when None), kept as `app.state.market_hub`.
    `policy`: the socket limits (when None, the one already set on `app.state.ws_policy`, or
    else one built from the gate's settings at the first connection)."""
    hub = hub if hub is not None else MarketHub()
    app.state.market_hub = hub
    if policy is not None:
        app.state.ws_policy = policy
    if getattr(app.state, "ws_sockets", None) is None:
        app.state.ws_sockets = SocketCounts()
    app.add_api_websocket_route(WS_PATH, market_websocket)
    return hub


def _policy(app: FastAPI, gate: SecurityGate) -> SocketPolicy:
    policy: SocketPolicy | None = getattr(app.state, "ws_policy", None)
    if policy is None:
        policy = app.state.ws_policy = SocketPolicy.from_settings(gate.settings)
    return policy


def _subprotocol(websocket: WebSocket) -> str | None:
    """WS_PROTOCOL when the client offered it (a browser sending its credential as a subprotocol,
    api/security.py): a browser fails a handshake that selects none of the protocols it offered,
    and would then see no close code at all."""
    return WS_PROTOCOL if WS_PROTOCOL in (websocket.scope.get("subprotocols") or ()) else None


async def _refuse(websocket: WebSocket, code: int, reason: str = "") -> None:
    await websocket.accept(subprotocol=_subprotocol(websocket))
    await websocket.close(code=code, reason=reason)


async def market_websocket(websocket: WebSocket) -> None:
    app = websocket.app
    gate: SecurityGate = app.state.gate
    hub: MarketHub = app.state.market_hub
    admission = await gate.admit(websocket.scope, allow_query_token=True)
    if admission.error is not None:
        await _refuse(websocket, websocket_close_code(admission.error))
        return
    principal = admission.principal
    if principal is None:
        await _refuse(websocket, CLOSE_UNAUTHENTICATED)
        return
    if not principal.allows(MARKET_READ):
        await _refuse(websocket, CLOSE_FORBIDDEN)
        return
    policy = _policy(app, gate)
    counts: SocketCounts = app.state.ws_sockets
    refused = counts.take(principal.account, policy)
    if refused is not None:
        await _refuse(websocket, *refused)
        return
    try:
        await websocket.accept(subprotocol=_subprotocol(websocket))
        connection = _Connection(
            websocket,
            hub,
            gate.limiter,
            identity=f"account:{principal.account}",
            language=negotiate_language(websocket.headers.get("accept-language")),
            policy=policy,
            principal=principal,
            token_valid_until=admission.token_valid_until,
            keys=gate.authenticator.keys,
        )
        await connection.run()
    finally:
        counts.release(principal.account)


class _Connection:
    def __init__(
        self,
        websocket: WebSocket,
        hub: MarketHub,
        limiter: RateLimiter,
        identity: str,
        language: Language,
        *,
        policy: SocketPolicy,
        principal: Principal,
        token_valid_until: float | None,
        keys: ApiKeyVerifier | None,
    ) -> None:
        self.websocket = websocket
        self.hub = hub
        self.limiter = limiter
        self.identity = identity
        self.language = language
        self.policy = policy
        self.key_id = principal.key_id
        self.token_valid_until = token_valid_until
        self.keys = keys
        self.last_message = policy.clock()
        self.session: Session = hub.open_session()

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive())
        sender = asyncio.create_task(self._send())
        kicked = asyncio.create_task(self.session.closing.wait())
        watcher = asyncio.create_task(self._watch())
        tasks = {receiver, sender, kicked, watcher}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.close_session(self.session)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        code = self.session.close_code
        for task in done:
            if task is not kicked and not task.cancelled():
                exc = task.exception()
                if exc is not None and not isinstance(exc, WebSocketDisconnect | OSError):
                    logger.error("WebSocket handler failed", exc_info=exc)
                    code = CLOSE_INTERNAL
        if code is not None:
            with contextlib.suppress(Exception):
                closing = self.websocket.close(code=code, reason=self.session.close_reason)
                await asyncio.wait_for(closing, _CLOSE_TIMEOUT_S)

    async def _send(self) -> None:
        queue = self.session.queue
        if SEND_MANY in self.websocket.scope.get("extensions", {}):
            await self._send_many(queue)  # returns only by raising, as the loop below
            return
        send = self.websocket.send_text
        while True:
            for text in await queue.get():
                await send(text)

    async def _send_many(self, queue: ConflatingQueue) -> None:
        """Everything pending in one write (api/ws/server_protocol.py). Past Starlette's
        `WebSocket.send`, which knows only the standard message types, to the server's own send;
        a lost connection ends the socket as Starlette's send would."""
        send = self.websocket._send
        while True:
            texts = await queue.get()
            try:
                await send({"type": SEND_MANY, "texts": texts})
            except OSError:
                self.websocket.application_state = WebSocketState.DISCONNECTED
                raise WebSocketDisconnect(code=1006) from None

    def _reply(self, text: str) -> None:
        try:
            self.session.queue.put_control(text)
        except Exception:  # QueueOverflow: a client that floods and never reads
            self.session.kick(1008, "too many unanswered requests")

    async def _watch(self) -> None:
        """Closes the socket when it has been idle too long, when its token stops being accepted
        or when its API key is revoked; sleeps until the next of those can happen."""
        policy = self.policy
        next_key_check = policy.clock() + policy.key_recheck_s if self.key_id is not None else math.inf
        while True:
            now = policy.clock()
            idle_left = self.last_message + policy.idle_s - now
            if idle_left <= 0:
                self.session.kick(CLOSE_IDLE, f"no message for {policy.idle_s:g} seconds")
                return
            token_left = math.inf
            if self.token_valid_until is not None:
                token_left = self.token_valid_until - policy.wall_clock()
                if token_left <= 0:
                    self.session.kick(CLOSE_UNAUTHENTICATED, "token expired")
                    return
            if now >= next_key_check:
                # The period runs from the start of a check: a slow store does not stretch it.
                next_key_check = now + policy.key_recheck_s
                refusal = await self._key_refusal()
                if refusal is not None:
                    self.session.kick(*refusal)
                    return
                continue  # the check took time: look at the clocks again
            await policy.sleep(max(0.0, min(idle_left, token_left, next_key_check - now)))

    async def _key_refusal(self) -> tuple[int, str] | None:
        if self.keys is None or self.key_id is None:
            return None
        try:
            record = await self.keys.record(self.key_id)
        except Exception as exc:  # store unreachable: keep the socket, ask again next period
            logger.warning("API key re-check failed for a WebSocket: %s", exc)
            return None
        if record is None or record.revoked:
            return CLOSE_UNAUTHENTICATED, "API key revoked"
        if MARKET_READ not in record.scopes:
            return CLOSE_FORBIDDEN, "API key lacks market:read"
        return None

    async def _receive(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.last_message = self.policy.clock()
            text = message.get("text")
            decision = await self.limiter.hit(self.identity)
            if not decision.allowed:
                self._reply(error_message(ErrorCode.RATE_LIMITED, self.language))
                continue
            if text is None:
                self._reply(error_message(ErrorCode.BAD_REQUEST, self.language))
                continue
            try:
                parsed = parse_message(text)
                if isinstance(parsed, Ping):
                    self._reply(PONG_MESSAGE)
                    continue
                await self._apply(parsed)
            except ProtocolError as exc:
                logger.debug("refused WebSocket frame: %s", exc.reason)
                self._reply(error_message(exc.code, self.language))

    async def _apply(self, command: Command) -> None:
        hub, session = self.hub, self.session
        if command.action == "unsubscribe":
            self._reply(ack_message(command))
            for symbol in command.symbols:
                hub.unsubscribe(session, command.channel, symbol, command.exchange, command.interval)
            return
        venues = await self._venues(command.channel, command.symbols, command.exchange)
        keys = [sub_key(command.channel, venues[s], s, command.interval) for s in command.symbols]
        added = hub.new_subscriptions(session, keys)
        if session.subscription_count + added > hub.max_subscriptions:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"at most {hub.max_subscriptions} subscriptions a socket")
        # The acknowledgement goes first; the snapshot the hub queues right after follows it.
        self._reply(ack_message(command, {s: venues[s] or None for s in command.symbols}))
        for key in keys:
            hub.subscribe(session, key, command.depth or 0)

    async def _venues(self, channel: str, symbols: tuple[str, ...], exchange: str | None) -> dict[str, str]:
        """The venue each subscription binds to, fixed now: `exchange` when given (it must carry
        the symbol), else the REST default, the venue with the most recent trade (the hub's;
        with no trade in the hub, the venue that last published on the channel, else the store's
        latest trade), else `PENDING` (the first venue that publishes on the channel). Symbols (or
        the venue) neither seen on the feed nor stored (the REST routes' `known_symbols`) are
        refused with MARKET_001."""
        hub = self.hub
        venues: dict[str, str] = {}
        ask_store: list[str] = []
        for symbol in symbols:
            if exchange is not None:
                if hub.seen(symbol, exchange):
                    venues[symbol] = exchange
                    continue
            else:
                default = hub.venue_for(channel, symbol)
                if default is not None:
                    venues[symbol] = default
                    continue
            ask_store.append(symbol)
        if ask_store:
            stored = await self._stored_venues(ask_store, exchange)
            unknown = [s for s in ask_store if s not in stored and not (exchange is None and hub.seen(s))]
            if unknown:
                raise ProtocolError(ErrorCode.MARKET_001, f"not served: {', '.join(unknown)}")
            for symbol in ask_store:
                venues[symbol] = stored.get(symbol) or PENDING
        return venues

    async def _stored_venues(self, symbols: list[str], exchange: str | None) -> dict[str, str | None]:
        """Symbol -> the venue of its latest stored trade (on `exchange` when given), for the
        symbols the store holds (None: known, no venue found). Blocking queries: off the event
        loop. A store that is down answers nothing: the feed's symbols still work."""
        repository = getattr(self.websocket.app.state, "repository", None)
        if repository is None:
            return {}

        def read() -> dict[str, str | None]:
            known = repository.known_symbols()  # cached for `symbols_cache_seconds`
            out: dict[str, str | None] = {}
            for symbol in symbols:
                if symbol not in known:
                    continue
                trade = repository.last_price(symbol, exchange)
                if trade is not None:
                    out[symbol] = trade.venue
                elif exchange is None:
                    out[symbol] = None
            return out

        try:
            found: dict[str, str | None] = await anyio.to_thread.run_sync(read)
        except Exception as exc:
            logger.warning("known symbols unavailable: %s", exc)
            return {}
        return found
