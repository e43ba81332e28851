"""Starting many symbols at once must not get the client banned. Binance drops a connection
that sends more than 5 messages a second and bans IPs that exceed the REST weight budget;
the double records when each subscription and each snapshot request arrives."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from infra.dev.exchange_double.binance import BinanceDouble, _Book
from infra.dev.exchange_double.server import Connection
from tests.double.harness import connected, wait_until
from tests.shared_data import BINANCE

SYMBOLS = [f"C{i:02d}" for i in range(20)]  # 20 made-up coins quoted in USDT, plus ETH


class ManySymbols(BinanceDouble):
    def __init__(self) -> None:
        super().__init__(BINANCE, "spot", speed=None, max_frames=10)
        self.subscribe_times: list[float] = []
        self.depth_times: list[float] = []

    def load(self) -> Any:
        yield from super().load()
        for coin in SYMBOLS:
            symbol = f"{coin}USDT"
            self.symbols.add(symbol)
            self.books[symbol] = _Book({"lastUpdateId": 1, "bids": [["1.00", "5"]], "asks": [["1.01", "5"]]})

    async def on_client_message(self, conn: Connection, message: Any) -> None:
        if isinstance(message, dict) and message.get("method") == "SUBSCRIBE":
            self.subscribe_times.extend(time.monotonic() for _ in message.get("params") or [])
        await super().on_client_message(conn, message)

    async def _depth(self, request: web.Request) -> web.Response:
        self.depth_times.append(time.monotonic())
        return await super()._depth(request)


def most_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < window_s) for i, start in enumerate(times)), default=0)


async def test_twenty_symbols_subscribe_within_binance_message_limits() -> None:
    double = ManySymbols()
    feeds = ",".join(["binance:ETH-USDT", *(f"binance:{c}-USDT" for c in SYMBOLS)])
    async with connected(double, feeds) as run:
        await wait_until(lambda: len(double.depth_times) >= len(SYMBOLS) + 1, 30, "every snapshot requested")
        assert len(double.subscribe_times) == 2 * (len(SYMBOLS) + 1)
        assert len(double.connections) == 1  # one socket for all of them
        # Binance's limit is 5 messages a second per connection; arrival times can bunch when this
        # process is starved of CPU (the double shares its event loop), so: never more than 5 a
        # second on average, and no burst beyond one message of jitter
        n = len(double.subscribe_times)
        assert max(double.subscribe_times) - min(double.subscribe_times) >= (n - 1) / 5
        assert most_in_any_window(double.subscribe_times, 1.0) <= 6
        # ccxt's limiter paces the snapshots by their weight instead of sending 21 at once
        span = max(double.depth_times) - min(double.depth_times)
        assert span > 1.0, f"21 snapshot requests within {span:.2f}s"
        assert run.kinds("binance:C00-USDT") == ["feed_connected"]  # its book came from the snapshot
