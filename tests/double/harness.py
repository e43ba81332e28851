"""A connector against an exchange double, in one event loop, publishing into memory."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import orjson

from infra.dev.exchange_double.server import ExchangeDouble, VenueDouble
from schemas import topics
from schemas.events import BookSnapshot
from schemas.wire import decode_book_batch
from streams.core.venues.registry import parse_feeds
from streams.ingest.connector import ConnectorConfig, VenueConnector
from streams.ingest.publisher import ListPublisher

# a silent socket is given up after 20 s: the tests that stall one set a shorter limit
FAST = ConnectorConfig(stagger_s=0.02, stale_after_s=20.0, backoff_initial_s=0.05, backoff_max_s=0.5,
                       book_interval_s=0.05)


@dataclass
class Run:
    double: VenueDouble
    connector: VenueConnector
    publisher: ListPublisher
    base_url: str

    def _values(self, topic: topics.TopicSpec) -> list[bytes]:
        return [m.value for m in self.publisher.messages if m.topic == topic.full_name("")]

    def trade_rows(self, key: str | None = None) -> list[list[Any]]:
        out: list[list[Any]] = []
        for m in self.publisher.messages:
            if m.topic == topics.TRADES.full_name("") and (key is None or m.key.decode() == key):
                out.extend(orjson.loads(m.value)["trades"])
        return out

    def trade_ids(self, key: str | None = None) -> list[str]:
        return [str(row[0]) for row in self.trade_rows(key)]

    def quality(self, key: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        return [(e["kind"], e["detail"]) for e in map(orjson.loads, self._values(topics.QUALITY))
                if key is None or f"{e['venue']}:{e['symbol']}" == key]

    def kinds(self, key: str | None = None) -> list[str]:
        return [kind for kind, _ in self.quality(key)]

    def dead_letters(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for v in self._values(topics.DEAD_LETTER)]

    def books(self, key: str) -> list[BookSnapshot]:
        out: list[BookSnapshot] = []
        for m in self.publisher.messages:
            if m.topic == topics.BOOK.full_name("") and m.key.decode() == key:
                out.extend(u for u in decode_book_batch(m.value)[2] if isinstance(u, BookSnapshot))
        return out


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def connected(double: VenueDouble, feeds: str, config: ConnectorConfig = FAST) -> AsyncIterator[Run]:
    """The double serving, and a connector subscribed to every feed in `feeds` (nothing played yet)."""
    server = ExchangeDouble([double])
    base = await server.start()
    publisher = ListPublisher()
    parsed = parse_feeds(feeds)
    venue = parsed[0].venue
    connector = VenueConnector(venue, parsed, publisher, replace(config, endpoint=base), rng=random.Random(7))
    task = asyncio.create_task(connector.run())
    run = Run(double, connector, publisher, base)
    try:
        wanted = 2 * len(parsed)  # trades and book of each feed
        await wait_until(lambda: sum(len(c.channels) for c in double.connections) >= wanted, 20,
                         "every feed subscribed")
        await asyncio.sleep(0.3)  # the snapshot requests that follow the subscriptions
        yield run
    finally:
        await connector.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await server.stop()


async def play_until(run: Run, fraction: float) -> None:
    """Start the playback and return once `fraction` of the recording has been played."""
    run.double.play()
    target = int(len(run.double.recording) * fraction)
    await wait_until(lambda: run.double.played >= target, 60, f"{fraction:.0%} of the recording played")


def decimals(levels: Any) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(str(p)), Decimal(str(q))) for p, q in levels]
