"""Live connector: `python -m tests.bench.bench_connector [--frames 80000] [--drops 5]`.

The exchange double runs in its own process (`entasis double --paused`), the client here, so
the figures are the client's. Two parts:

1. Throughput: the double plays the first `--frames` frames of the Binance spot capture as fast
   as its socket takes them; measured from `play` to the last trade published. Three clients
   read the same stream in turn, one run each, so their ratios compare like with like:
   a bare aiohttp WebSocket (JSON decode only: the ceiling), bare ccxt.pro (`watch_trades` +
   `watch_order_book` loops, nothing done with the data), and the Entasis connector (ccxt plus
   events, dedupe, top-100 book snapshots every 100 ms, publishing to memory).
2. Recovery: at the recorded pace, the double drops the connection `--drops` times; reported
   per drop, the time from the disconnect to trades flowing again and to a fresh book, and in
   the end the trades lost (printed by the exchange and never published) and published twice.

Reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from infra.dev.exchange_double.binance import BinanceDouble
from infra.dev.processes import free_port, wait_for_port
from streams.core.venues.registry import parse_feeds
from streams.ingest.connector import ConnectorConfig, VenueConnector, plain_exchange
from streams.ingest.publisher import ListPublisher
from tests.shared_data import BINANCE, DATA

ROOT = Path(__file__).resolve().parents[2]


class Double:
    """`entasis double` in a subprocess, controlled over HTTP."""

    def __init__(self, frames: int, speed: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "double", "--port", str(self.port), "--speed", str(speed),
             "--venue", "binance", "--max-frames", str(frames), "--paused", "--data", str(DATA)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ})
        wait_for_port("127.0.0.1", self.port, timeout_s=60, what="exchange double")

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.url}/_status") as r:
            return dict((await r.json())["binance"])

    async def control(self, session: aiohttp.ClientSession, action: str) -> None:
        async with session.post(f"{self.url}/_control/binance/{action}") as r:
            r.raise_for_status()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def recording(frames: int) -> tuple[list[str], int]:
    """Trade ids the exchange prints, and the number of frames a trade+depth subscriber gets."""
    recs = list(BinanceDouble(BINANCE, "spot", max_frames=frames).load())
    trades = [str(r.message["t"]) for r in recs if r.message.get("e") == "trade"]
    return trades, sum(1 for r in recs if r.message.get("e") in ("trade", "depthUpdate"))


async def until(check: Callable[[], Awaitable[bool] | bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if await result if asyncio.iscoroutine(result) else result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


async def bare_websocket(double: Double, n_trades: int) -> float:
    url = f"{double.url.replace('http', 'ws')}/binance/ws/0"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@trade", "ethusdt@depth@100ms"],
                                        "id": 1}).decode())
        await ws.receive()  # the ack
        await double.control(session, "play")
        started, seen = time.monotonic(), 0
        while seen < n_trades:
            msg = orjson.loads((await ws.receive()).data)
            seen += msg.get("e") == "trade"
        return time.monotonic() - started


async def bare_ccxt(double: Double, n_trades: int) -> float:
    ex = plain_exchange("binance", double.url)
    seen = 0

    async def trades() -> None:
        nonlocal seen
        while True:
            seen += len(await ex.watch_trades("ETH/USDT"))

    async def books() -> None:
        while True:
            await ex.watch_order_book("ETH/USDT")

    tasks = [asyncio.create_task(trades()), asyncio.create_task(books())]
    try:
        async with aiohttp.ClientSession() as session:
            await until(lambda: _subscribed(double, session), 30)
            await double.control(session, "play")
            started = time.monotonic()
            await until(lambda: seen >= n_trades, 120)
            return time.monotonic() - started
    finally:
        for t in tasks:
            t.cancel()
        await ex.close()


async def _subscribed(double: Double, session: aiohttp.ClientSession) -> bool:
    return bool((await double.status(session))["subscriptions"] >= 2)


async def connector(double: Double, n_trades: int, config: ConnectorConfig) -> tuple[float, VenueConnector,
                                                                                         ListPublisher]:
    publisher = ListPublisher()
    conn = VenueConnector("binance", parse_feeds("binance:ETH-USDT"), publisher,
                          ConnectorConfig(**{**config.__dict__, "endpoint": double.url}))
    task = asyncio.create_task(conn.run())
    try:
        async with aiohttp.ClientSession() as session:
            await until(lambda: _subscribed(double, session), 30)
            await asyncio.sleep(0.5)
            await double.control(session, "play")
            started = time.monotonic()
            await until(lambda: conn.stats()["binance:ETH-USDT"].trades >= n_trades, 120)
            return time.monotonic() - started, conn, publisher
    finally:
        await conn.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def throughput(frames: int) -> None:
    printed, messages = recording(frames)
    print(f"Throughput: first {frames} frames of the spot capture; a subscriber to trades and depth gets "
          f"{messages} messages ({len(printed)} trades)")
    results: dict[str, float] = {}
    for name, run in (("bare aiohttp WebSocket", lambda d: bare_websocket(d, len(printed))),
                      ("bare ccxt.pro", lambda d: bare_ccxt(d, len(printed))),
                      ("Entasis connector", lambda d: _timed_connector(d, len(printed)))):
        double = Double(frames, speed=0)
        try:
            results[name] = await run(double)
        finally:
            double.close()
        print(f"  {name:<24} {results[name]:6.2f} s  {messages / results[name]:>9,.0f} messages/s  "
              f"{len(printed) / results[name]:>8,.0f} trades/s")
    ceiling = results["bare aiohttp WebSocket"]
    print(f"  ratios to the bare socket: ccxt {ceiling / results['bare ccxt.pro']:.2f}, "
          f"connector {ceiling / results['Entasis connector']:.2f}; connector/ccxt "
          f"{results['bare ccxt.pro'] / results['Entasis connector']:.2f}")


async def _timed_connector(double: Double, n_trades: int) -> float:
    elapsed, _, _ = await connector(double, n_trades, ConnectorConfig())
    return elapsed


async def recovery(frames: int, drops: int) -> None:
    printed, _ = recording(frames)
    double = Double(frames, speed=1.0)
    publisher = ListPublisher()
    conn = VenueConnector("binance", parse_feeds("binance:ETH-USDT"), publisher,
                          ConnectorConfig(endpoint=double.url, stale_after_s=10.0))
    task = asyncio.create_task(conn.run())
    stats = conn.stats()["binance:ETH-USDT"]
    trade_back: list[float] = []
    book_back: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            await until(lambda: _subscribed(double, session), 30)
            await asyncio.sleep(0.5)
            await double.control(session, "play")
            for _ in range(drops):
                await asyncio.sleep(4.0)
                trades_before, resyncs_before = stats.trades, stats.book_resyncs
                await double.control(session, "drop")
                dropped = time.monotonic()
                await until(lambda: stats.disconnects > len(trade_back), 10)
                await until(lambda n=trades_before: stats.trades > n + 1  # type: ignore[misc]
                            and len(stats.connected_at) > len(trade_back) + 1, 30)
                trade_back.append(stats.connected_at[-1] - dropped)
                await until(lambda n=resyncs_before: stats.book_resyncs > n, 30)  # type: ignore[misc]
                book_back.append(time.monotonic() - dropped)
            played = (await double.status(session))["played"]
        await asyncio.sleep(2.0)
    finally:
        await conn.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        double.close()
    published = [str(row[0]) for m in publisher.messages if m.topic == "md.trades.v1"
                 for row in orjson.loads(m.value)["trades"]]
    printed_so_far = printed[: printed.index(published[-1]) + 1] if published else []
    lost = len(set(printed_so_far) - set(published))
    twice = len(published) - len(set(published))
    ms = [1000 * x for x in trade_back]
    book_ms = [1000 * x for x in book_back]
    print(f"Recovery at the recorded pace, {drops} dropped connections ({played} frames played):")
    print(f"  trades flowing again after: median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms "
          f"({', '.join(f'{x:.0f}' for x in ms)})")
    print(f"  fresh book published after: median {statistics.median(book_ms):.0f} ms, max {max(book_ms):.0f} ms")
    print(f"  trades printed {len(printed_so_far)}, published {len(published)}: lost {lost}, published twice {twice}; "
          f"{stats.backfilled} came from the REST backfill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=80_000)
    parser.add_argument("--drops", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(throughput(args.frames))
    asyncio.run(recovery(args.frames, args.drops))


if __name__ == "__main__":
    main()
