"""ccxt's WebSocket keepalive, driven by the test instead of the wall clock.

ccxt's ping loop (`ccxt.async_support.base.ws.client.Client.ping_loop`) sleeps `keepAlive` ms,
then gives up when no pong was read for `maxPingPongMisses` intervals by `Exchange.milliseconds()`,
else sends a ping. Both names are looked up in that module at call time, so replacing them there
hands the loop a clock that moves only when the test calls `tick()`: how many pings ccxt sends
before it gives up becomes a count the test asserts, the same on a loaded runner as on an idle one.
Only the keepalive's sleep is held; any other sleep there (the dial backoff) keeps real time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import WSMsgType
from ccxt import Exchange
from ccxt.async_support.base.ws import client as ws_client

DEADLINE_S = 30.0  # a wait for the loop to come round, generous for a loaded CI run; never asserted


class KeepaliveClock:
    """One ccxt ping loop at a time, on a clock that starts at 0 and moves one interval a tick."""

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self.now_ms = 0
        self.ticks = 0
        self.naps = 0  # keepalive sleeps begun
        self._changed = asyncio.Condition()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        clock = self

        class ClockedExchange(Exchange):  # type: ignore[misc]  # ccxt is untyped
            @staticmethod
            def milliseconds() -> int:
                return clock.now_ms

        monkeypatch.setattr(ws_client, "Exchange", ClockedExchange)
        monkeypatch.setattr(ws_client, "sleep", self._sleep)

    async def _sleep(self, delay: float, result: Any = None) -> Any:
        if round(delay * 1000) != self.interval_ms:
            return await asyncio.sleep(delay, result)
        async with self._changed:
            tick = self.ticks
            self.naps += 1
            self._changed.notify_all()
            await self._changed.wait_for(lambda: self.ticks > tick)
        return result

    async def tick(self) -> None:
        """One keepalive round: once the loop sleeps, the clock moves one interval on; returns when
        the loop has done its round (a ping, or giving up) and sleeps again."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.naps > self.ticks), DEADLINE_S)
            self.now_ms += self.interval_ms
            self.ticks += 1
            self._changed.notify_all()
            await asyncio.wait_for(self._changed.wait_for(lambda: self.naps > self.ticks), DEADLINE_S)


class WireLog:
    """What one ccxt client did on its socket, in order: `ping` sent; `pong`, `text` read."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.events: list[str] = []
        handle_message, ping = client.handle_message, client.connection.ping

        def handled(message: Any) -> Any:
            self.events.append("pong" if message.type == WSMsgType.PONG else message.type.name.lower())
            return handle_message(message)  # the garbage raises in here, after it was noted

        async def pinged(*args: Any, **kwargs: Any) -> Any:
            self.events.append("ping")
            return await ping(*args, **kwargs)

        # ccxt looks both up on the instance each time
        client.handle_message = handled
        client.connection.ping = pinged

    def count(self, event: str) -> int:
        return self.events.count(event)

    async def until(self, event: str, n: int) -> None:
        """Until `event` happened `n` times (a wait with a deadline, not an assertion)."""
        async with asyncio.timeout(DEADLINE_S):
            while self.count(event) < n:
                await asyncio.sleep(0.01)
