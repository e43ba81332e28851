"""Gap detection by `seq`, and the stream's reactions to what a real server rarely does on cue: a
scripted WebSocket server (websockets' own) plays the protocol's frames. The sequence tracker
alone, then: jumps flagged and counted, a reconnect starting over without a gap, a subscription
the server bound to no venue pinned to the first venue that published, a dead connection (no
pong) replaced, a resubscription refused (dropped, reported) or rate limited (retried)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from entasis_client import EntasisError, InvalidSymbol, MarketStream, ReconnectPolicy, SequenceTracker, StreamMessage
from websockets.asyncio.server import ServerConnection, serve

FAST = ReconnectPolicy(initial=0.02, maximum=0.1, jitter=0)
PING_INTERVAL_S = 0.05  # no reconnect delay of FAST (0.02 doubling to 0.1) is this long


def tick(symbol: str, seq: int, exchange: str = "binance", price: str = "1.00000000") -> str:
    return json.dumps({"symbol": symbol, "exchange": exchange, "price": price,
                       "timestamp": "2024-03-21T09:30:00.123Z", "volume": "1.00000000", "seq": seq})


def candle(symbol: str, seq: int, interval: str = "1m") -> str:
    return json.dumps({"symbol": symbol, "exchange": "binance", "interval": interval,
                       "timestamp": "2024-03-21T09:30:00.000Z", "open": "1", "high": "1", "low": "1", "close": "1",
                       "volume": "1", "is_final": False, "seq": seq})


# --- the tracker alone ----------------------------------------------------------------------------


def test_the_tracker_flags_jumps_per_subscription() -> None:
    tracker = SequenceTracker()
    a, b = ("market", "binance", "BTC-USDT", ""), ("market", "kraken", "BTC-USDT", "")
    assert [tracker.observe(a, s) for s in (1, 2, 3, 7, 8)] == [0, 0, 0, 3, 0]
    assert [tracker.observe(b, s) for s in (2, 3)] == [1, 0]  # a first message after 1: one merged
    assert tracker.observe(a, 1) == 0  # numbered from 1 again (the server started it over): no gap
    tracker.forget("market", "BTC-USDT", exchange="kraken")
    assert tracker.last(b) is None and tracker.last(a) == 1
    tracker.reset()
    assert tracker.last(a) is None and tracker.observe(a, 1) == 0


# --- a scripted server ------------------------------------------------------------------------------


@dataclass
class Script:
    """Per connection (0, 1, ...): what to answer to each frame; data to push after the acks."""

    on_frame: Callable[[int, dict[str, Any], ServerConnection], Awaitable[None]]
    connections: list[ServerConnection] = field(default_factory=list)
    frames: list[list[dict[str, Any]]] = field(default_factory=list)

    async def handler(self, ws: ServerConnection) -> None:
        index = len(self.connections)
        self.connections.append(ws)
        self.frames.append([])
        async for raw in ws:
            frame = json.loads(raw)
            self.frames[index].append(frame)
            await self.on_frame(index, frame, ws)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    servers = []

    async def start(script: Script) -> str:
        server = await serve(script.handler, "127.0.0.1", 0)
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws/market"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def ack(frame: dict[str, Any], exchange: str | None = "binance") -> str:
    body: dict[str, Any] = {"type": "subscribed", "channel": frame["channel"]}
    if frame["channel"] == "market":
        body["symbols"] = frame["symbols"]
        body["exchanges"] = {s: frame.get("exchange", exchange) for s in frame["symbols"]}
    else:
        body["symbol"] = frame["symbol"]
        body["exchange"] = frame.get("exchange", exchange)
        if "interval" in frame:
            body["interval"] = frame["interval"]
    return json.dumps(body)


PONG = json.dumps({"type": "pong"})


async def test_gaps_are_flagged_and_a_reconnect_starts_over_without_one(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    async def on_frame(conn: int, frame: dict[str, Any], ws: ServerConnection) -> None:
        if frame.get("action") == "ping":
            await ws.send(PONG)
            return
        await ws.send(ack(frame))
        if conn == 0 and frame["channel"] == "market":
            for seq in (1, 2, 5, 6):
                await ws.send(tick("BTC-USDT", seq))
            await ws.send(candle("BTC-USDT", 3))  # another subscription: its first message after 2 merged
            await ws.close(1012, "restart")
        elif conn == 1 and frame["channel"] == "market":
            for seq in (1, 2, 4):
                await ws.send(tick("BTC-USDT", seq))

    script = Script(on_frame)
    gaps: list[StreamMessage] = []
    reconnects: list[int] = []
    async with MarketStream(await scripted(script), reconnect=FAST, ping_interval=None, on_gap=gaps.append,
                            on_reconnect=reconnects.append) as stream:
        await stream.subscribe_market("BTC-USDT")
        got = [await stream.recv(5) for _ in range(8)]
    assert [(m.channel, m.seq, m.gap, m.resumed) for m in got] == [
        ("market", 1, 0, False), ("market", 2, 0, False), ("market", 5, 2, False), ("market", 6, 0, False),
        ("candles", 3, 2, False),
        ("market", 1, 0, True), ("market", 2, 0, False), ("market", 4, 1, False),
    ]
    assert [(m.channel, m.seq) for m in gaps] == [("market", 5), ("candles", 3), ("market", 4)]
    assert stream.gaps == 5 and reconnects == [1]
    # the resubscription named the venue the first ack bound
    assert script.frames[1][0] == {"action": "subscribe", "channel": "market", "symbols": ["BTC-USDT"],
                                   "exchange": "binance"}


async def test_a_subscription_bound_to_no_venue_is_pinned_to_the_first_that_published(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    async def on_frame(conn: int, frame: dict[str, Any], ws: ServerConnection) -> None:
        if frame.get("action") == "ping":
            await ws.send(PONG)
            return
        await ws.send(ack(frame, exchange=None))  # no venue known yet: `"exchange": null`
        if conn == 0:
            await ws.send(candle("NEW-USDT", 1, "1h"))
            await ws.close(1001, "going away")

    script = Script(on_frame)
    async with MarketStream(await scripted(script), reconnect=FAST, ping_interval=None) as stream:
        first = await stream.subscribe_candles("new-usdt", "1h")
        assert first.exchange is None
        assert (await stream.recv(5)).exchange == "binance"
        await asyncio.wait_for(_until(lambda: len(script.frames) == 2 and bool(script.frames[1])), 5)
        assert [s.venue for s in stream.subscriptions] == ["binance"]
    assert script.frames[1][0] == {"action": "subscribe", "channel": "candles", "symbol": "NEW-USDT",
                                   "interval": "1h", "exchange": "binance"}


async def test_a_connection_without_pongs_is_replaced(scripted: Callable[[Script], Awaitable[str]]) -> None:
    async def on_frame(conn: int, frame: dict[str, Any], ws: ServerConnection) -> None:
        if frame.get("action") == "ping":
            if len(script.frames[conn]) == 1 or conn > 0:  # connection 0 answers only its first ping
                await ws.send(PONG)
            return

    script = Script(on_frame)
    reconnects: list[int] = []
    async with MarketStream(await scripted(script), reconnect=FAST, ping_interval=0.05, ping_timeout=0.2,
                            on_reconnect=reconnects.append) as stream:
        await asyncio.wait_for(_until(lambda: reconnects == [1] and stream.connected), 5)


async def test_a_refused_resubscription_is_dropped_and_reported_a_rate_limited_one_retried(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    async def on_frame(conn: int, frame: dict[str, Any], ws: ServerConnection) -> None:
        if frame.get("action") == "ping":
            await ws.send(PONG)
            return
        if conn == 1 and frame["channel"] == "orderbook":
            await ws.send(json.dumps({"type": "error", "code": "MARKET_001", "message": "Invalid symbol"}))
            return
        if conn == 1 and frame["channel"] == "market":
            await ws.send(json.dumps({"type": "error", "code": "RATE_LIMITED", "message": "Rate limit exceeded"}))
            return
        await ws.send(ack(frame))
        if conn == 0 and frame["channel"] == "market":
            await ws.close(1012, "restart")

    script = Script(on_frame)
    errors: list[EntasisError] = []
    async with MarketStream(await scripted(script), reconnect=FAST, ping_interval=None,
                            on_error=errors.append) as stream:
        await stream.subscribe_orderbook("GONE-USDT", depth=5)
        await stream.subscribe_market("BTC-USDT")
        # connection 1 refuses the book (dropped) and rate-limits the market (a new connection), 2 takes it
        await asyncio.wait_for(_until(lambda: stream.reconnects >= 1 and stream.connected), 5)
        assert len(script.connections) == 3
        assert [s.channel for s in stream.subscriptions] == ["market"]
    assert [type(e) for e in errors] == [InvalidSymbol]
    assert [f.get("channel") for f in script.frames[2]] == ["market", None]  # the market again, then the ping


async def test_a_slow_consumer_is_not_taken_for_a_dead_connection(
    scripted: Callable[[Script], Awaitable[str]],
) -> None:
    """With `max_queue` messages waiting, the client stops reading; pongs wait behind them, which
    must not count as a dead connection."""
    rounds: list[float] = []  # the keepalive's waits between pings, counted
    sent_at: list[int] = []  # how many rounds there were when the server had sent every tick

    async def counted(seconds: float) -> None:
        if seconds == PING_INTERVAL_S:
            rounds.append(seconds)
        await asyncio.sleep(seconds)

    async def on_frame(conn: int, frame: dict[str, Any], ws: ServerConnection) -> None:
        if frame.get("action") == "ping":
            await ws.send(PONG)
            return
        await ws.send(ack(frame))
        for seq in range(1, 6):
            await ws.send(tick("BTC-USDT", seq))
        sent_at.append(len(rounds))

    script = Script(on_frame)
    async with MarketStream(await scripted(script), reconnect=FAST, ping_interval=PING_INTERVAL_S,
                            ping_timeout=0.3, max_queue=2, sleep=counted) as stream:
        await stream.subscribe_market("BTC-USDT")

        def closed() -> bool:  # the client gave the connection up
            return script.connections[0].close_code is not None

        # not reading: a round either skips its ping (the queue is full) or waits for its pong,
        # which sits behind the unread ticks, until ping_timeout; the round after shows how it ended
        await asyncio.wait_for(_until(lambda: closed() or (bool(sent_at) and len(rounds) >= sent_at[0] + 3)), 30)
        assert not closed() and stream.connections == 1
        got = [await stream.recv(5) for _ in range(5)]
        assert [m.seq for m in got] == [1, 2, 3, 4, 5] and stream.connections == 1


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)
