"""Helpers for the `/ws/market` tests (no tests here): an app served by a real uvicorn on a free
loopback port, in the test's own event loop, so a test can publish into the hub directly and
talk to the server through real `websockets` clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from api.ws import WS_PATH, MarketHub, install_market_websocket
from api.ws.server_protocol import SendManyWebSocketProtocol


class NoStore:
    """A repository and key store for an app whose symbols come from the feed alone: no database
    reads (the market and key repositories' only calls on a WebSocket path)."""

    def known_symbols(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    app: FastAPI
    hub: MarketHub
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{WS_PATH}"

    def connect(
        self, token: str | None = None, *, query: str = "", headers: dict[str, str] | None = None, **kwargs: Any
    ) -> connect:
        headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        kwargs.setdefault("compression", None)  # exact byte counts and no CPU spent on deflate
        return connect(self.url + query, additional_headers=headers, **kwargs)


@contextlib.asynccontextmanager
async def serve(app: FastAPI, hub: MarketHub | None = None, **config: Any) -> AsyncIterator[Served]:
    hub = install_market_websocket(app, hub)
    port = free_port()
    # The API's own WebSocket protocol, as `entasis api` serves (api/main.py uvicorn_config).
    options: dict[str, Any] = {
        "log_level": "warning", "lifespan": "on", "ws_ping_interval": 20.0, "ws": SendManyWebSocketProtocol,
    }
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield Served(app, hub, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next JSON message, skipping the optional `{"type": "ping"}` keep-alives."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        msg = json.loads(raw)
        if msg.get("type") != "ping":
            return msg  # type: ignore[no-any-return]


async def send_json(ws: ClientConnection, payload: dict[str, Any]) -> None:
    await ws.send(json.dumps(payload))


async def close_code(ws: ClientConnection, timeout: float = 5.0) -> int | None:
    """Read until the server closes; the code it closed with."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    return ws.close_code
