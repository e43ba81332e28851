"""A connector that fails as a whole is restarted on its own, with backoff; the others go on."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

from infra.cli.live import run_connectors, supervise
from streams.core.backoff import Backoff


class Flaky:
    def __init__(self, venue: str, failures: int) -> None:
        self.venue = venue
        self.failures = failures
        self.runs = 0
        self.restarts = 0
        self.stops = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"{self.venue} failed")
        await asyncio.sleep(3600)

    async def stop(self) -> None:
        self.stops += 1

    def restart(self) -> None:
        self.restarts += 1


async def test_a_failing_connector_is_restarted_until_it_runs() -> None:
    flaky = Flaky("kraken", failures=3)
    task = asyncio.create_task(supervise(flaky, Backoff(0.01, 0.02, random.Random(1))))  # type: ignore[arg-type]
    for _ in range(3000):  # a deadline of about a minute, never an assertion
        if flaky.runs == 4:
            break
        await asyncio.sleep(0.02)
    assert (flaky.runs, flaky.restarts, flaky.stops) == (4, 3, 3)
    assert not task.done()  # the fourth run is running
    task.cancel()


async def test_one_venue_failing_does_not_stop_the_others() -> None:
    good, bad = Flaky("binance", failures=0), Flaky("coinbase", failures=10**6)
    stop = threading.Event()
    runner: Any = asyncio.create_task(run_connectors([good, bad], stop))  # type: ignore[list-item]
    for _ in range(3000):  # a deadline of about a minute for the first failure, never an assertion
        if bad.restarts >= 1:
            break
        await asyncio.sleep(0.02)
    assert good.runs == 1 and good.stops == 0  # untouched while the other fails
    assert bad.runs >= 1 and bad.restarts == bad.runs
    stop.set()
    await asyncio.wait_for(runner, 5)
    assert good.stops == 1  # stopped once, at the end
