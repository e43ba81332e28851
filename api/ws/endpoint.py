"""The `/ws/market` socket handler.

Authentication is the REST gate's (`SecurityGate.admit`, with `?token=` allowed for browsers);
the socket is accepted first and then closed with the gate's code (4401 unauthenticated, 4403
forbidden or lacking `market:read`, 4429 over the rate limit), because a handshake refused before
`accept` reaches a browser as a bare HTTP 403 with no reason at all.

Rate limit: the handshake counts one request of the account's 1000/minute, and so does every
frame the client sends (subscribe or unsubscribe, valid or not); data the server pushes is free.
Over the limit, the frame gets a RATE_LIMITED error and is not applied; the socket stays open.
A socket holds at most `MarketHub.max_subscriptions` subscriptions (each (channel, symbol) one).

Keep-alive: uvicorn sends the WebSocket ping frames (`ws_ping_interval`, default 20 s) and drops a
peer that does not answer within `ws_ping_timeout`; the handler then sees the disconnect and the
hub forgets the socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio.to_thread
from fastapi import FastAPI
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.errors import ErrorCode, Language, negotiate_language
from api.principal import MARKET_READ
from api.ratelimit import RateLimiter
from api.security import SecurityGate, websocket_close_code
from api.ws.hub import MarketHub, Session
from api.ws.protocol import MARKET, Command, ProtocolError, ack_message, error_message, parse_command

logger = logging.getLogger("api.ws")

WS_PATH = "/ws/market"
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_INTERNAL = 1011
_CLOSE_TIMEOUT_S = 2.0  # a peer that does not take our close frame in time is simply dropped


def install_market_websocket(app: FastAPI, hub: MarketHub | None = None) -> MarketHub:
    """Serve `/ws/market` on `app` from `hub` (a new one when None), kept as `app.state.market_hub`."""
    hub = hub if hub is not None else MarketHub()
    app.state.market_hub = hub
    app.add_api_websocket_route(WS_PATH, market_websocket)
    return hub


async def _refuse(websocket: WebSocket, code: int) -> None:
    await websocket.accept()
    await websocket.close(code=code)


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
    await websocket.accept()
    connection = _Connection(
        websocket,
        hub,
        gate.limiter,
        identity=f"account:{principal.account}",
        language=negotiate_language(websocket.headers.get("accept-language")),
    )
    await connection.run()


class _Connection:
    def __init__(
        self, websocket: WebSocket, hub: MarketHub, limiter: RateLimiter, identity: str, language: Language
    ) -> None:
        self.websocket = websocket
        self.hub = hub
        self.limiter = limiter
        self.identity = identity
        self.language = language
        self.session: Session = hub.open_session()

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive())
        sender = asyncio.create_task(self._send())
        kicked = asyncio.create_task(self.session.closing.wait())
        tasks = {receiver, sender, kicked}
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
        send = self.websocket.send_text
        while True:
            for text in await queue.get():
                await send(text)

    def _reply(self, text: str) -> None:
        try:
            self.session.queue.put_control(text)
        except Exception:  # QueueOverflow: a client that floods and never reads
            self.session.kick(1008, "too many unanswered requests")

    async def _receive(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            decision = await self.limiter.hit(self.identity)
            if not decision.allowed:
                self._reply(error_message(ErrorCode.RATE_LIMITED, self.language))
                continue
            if text is None:
                self._reply(error_message(ErrorCode.BAD_REQUEST, self.language))
                continue
            try:
                command = parse_command(text)
                await self._apply(command)
            except ProtocolError as exc:
                logger.debug("refused WebSocket frame: %s", exc.reason)
                self._reply(error_message(exc.code, self.language))

    async def _apply(self, command: Command) -> None:
        hub, session = self.hub, self.session
        if command.action == "subscribe":
            unknown = await self._unknown(command.symbols)
            if unknown:
                raise ProtocolError(ErrorCode.MARKET_001, f"not served: {', '.join(unknown)}")
            added = hub.new_subscriptions(session, command.channel, command.symbols)
            if session.subscription_count + added > hub.max_subscriptions:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"at most {hub.max_subscriptions} subscriptions a socket")
        # The acknowledgement goes first; the snapshot the hub queues right after follows it.
        self._reply(ack_message(command))
        if command.channel == MARKET:
            if command.action == "subscribe":
                hub.subscribe_market(session, command.symbols)
            else:
                hub.unsubscribe_market(session, command.symbols)
        elif command.action == "subscribe":
            assert command.depth is not None
            hub.subscribe_book(session, command.symbols[0], command.depth)
        else:
            hub.unsubscribe_book(session, command.symbols[0])

    async def _unknown(self, symbols: tuple[str, ...]) -> list[str]:
        """Symbols neither seen on the feed nor stored (the REST routes' `known_symbols`)."""
        missing = [s for s in symbols if not self.hub.seen(s)]
        if not missing:
            return []
        repository = getattr(self.websocket.app.state, "repository", None)
        stored: frozenset[str] = frozenset()
        if repository is not None:
            try:
                # A blocking query (cached for `symbols_cache_seconds`): off the event loop.
                stored = await anyio.to_thread.run_sync(repository.known_symbols)
            except Exception as exc:  # store down: the feed's symbols still work
                logger.warning("known symbols unavailable: %s", exc)
        return [s for s in missing if s not in stored]
