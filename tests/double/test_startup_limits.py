"""Starting many symbols at once must not get the client banned. Binance drops a connection
that sends more than 5 messages a second and bans IPs that exceed the REST weight budget;
the double records when each subscription and each snapshot request arrives.

Time here is a clock the test controls, never the machine's: ccxt paces requests with its
leaky-bucket `Throttler`, which reads `time()` and waits with `asyncio.sleep` (both looked up in
its module). The test swaps both for a virtual clock that moves only when a throttler waits (a
wait of d seconds moves it by d and yields to the event loop once), and the double stamps
every arrival with the same clock. So the budgets are checked in the pacing's own time: a
loaded machine makes the run slower in wall time but cannot bunch or spread the stamps."""

from __future__ import annotations

import asyncio
import itertools
import types
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from ccxt.async_support.base import throttler

from infra.dev.exchange_double.binance import BinanceDouble, _Book
from infra.dev.exchange_double.server import Connection
from tests.double.harness import connected, wait_until
from tests.shared_data import BINANCE

SYMBOLS = [f"C{i:02d}" for i in range(20)]  # 20 made-up coins quoted in USDT, plus ETH


class VirtualClock:
    """Seconds that pass only when a throttler sleeps."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps = 0

    def time(self) -> float:  # stands in for time.time in ccxt's throttler module
        return self.now

    async def sleep(self, delay: float, result: Any = None) -> Any:  # for asyncio.sleep there
        self.sleeps += 1
        self.now += max(delay, 0.0)
        return await asyncio.sleep(0, result)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualClock]:
    virtual = VirtualClock()
    # the module's `asyncio` with only `sleep` replaced (Future, ensure_future stay the real ones)
    shim = types.SimpleNamespace(**{name: getattr(asyncio, name) for name in dir(asyncio) if not name.startswith("__")})
    shim.sleep = virtual.sleep
    monkeypatch.setattr(throttler, "time", virtual.time)
    monkeypatch.setattr(throttler, "asyncio", shim)
    yield virtual


class ManySymbols(BinanceDouble):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(BINANCE, "spot", speed=None, max_frames=10)
        self.clock = clock
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
            self.subscribe_times.extend(self.clock.time() for _ in message.get("params") or [])
        await super().on_client_message(conn, message)

    async def _depth(self, request: web.Request) -> web.Response:
        self.depth_times.append(self.clock.time())
        return await super()._depth(request)


def most_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < window_s) for i, start in enumerate(times)), default=0)


def test_most_in_any_window_counts_a_half_open_window() -> None:
    assert most_in_any_window([], 1.0) == 0
    assert most_in_any_window([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 1.0) == 5  # 1.0 is the next window's
    assert most_in_any_window([0.0, 0.1, 0.1, 5.0], 1.0) == 3


async def test_twenty_symbols_subscribe_within_binance_message_limits(clock: VirtualClock) -> None:
    double = ManySymbols(clock)
    feeds = ",".join(["binance:ETH-USDT", *(f"binance:{c}-USDT" for c in SYMBOLS)])
    async with connected(double, feeds) as run:
        await wait_until(lambda: len(double.depth_times) >= len(SYMBOLS) + 1, 60, "every snapshot requested")
        n = 2 * (len(SYMBOLS) + 1)
        assert len(double.subscribe_times) == n  # trades and book of each symbol, each one message
        assert len(double.connections) == 1  # one socket for all of them
        # Binance's limit is 5 messages a second per connection: no second of the pacing's clock
        # holds more, and 42 messages take at least 41/5 s of it
        assert most_in_any_window(double.subscribe_times, 1.0) <= 5, double.subscribe_times
        assert max(double.subscribe_times) - min(double.subscribe_times) >= (n - 1) / 5
        # the snapshots are paced by their REST weight, not sent 21 at once: ccxt charges one 10 of
        # the tokens it refills at 20 a second (Binance's request-weight budget), so grants are at
        # least 0.45 s apart on its clock; 0.4 leaves room for the loop turns from grant to arrival
        assert len(double.depth_times) == len(SYMBOLS) + 1
        times = sorted(double.depth_times)
        assert min(b - a for a, b in itertools.pairwise(times)) >= 0.4, times
        assert clock.sleeps > 0  # the pacing did wait on the test's clock
        assert run.kinds("binance:C00-USDT") == ["feed_connected"]  # its book came from the snapshot
