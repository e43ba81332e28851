"""Runs the live connectors of `schemas.venues` in one asyncio loop: one `VenueConnector` per
venue, all publishing to the broker, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence

from infra.settings import Settings
from schemas.venues import Feed, parse_feeds
from streams.ingest.connector import ConnectorConfig, VenueConnector
from streams.ingest.publisher import Publisher


def configured_feeds(settings: Settings, override: Sequence[str] | str | None = None) -> tuple[Feed, ...]:
    """`--venues` when given, else ENTASIS_VENUES; raises InvalidFeed with the reason."""
    return parse_feeds(override if override else settings.venues)


def connector_config(settings: Settings, endpoint: str | None = None) -> ConnectorConfig:
    return ConnectorConfig(
        book_depth=settings.connector_book_depth,
        book_interval_s=settings.connector_book_interval_ms / 1000,
        stale_after_s=settings.connector_stale_seconds,
        backoff_max_s=settings.connector_backoff_max_seconds,
        stagger_s=settings.connector_stagger_ms / 1000,
        namespace=settings.topic_namespace,
        endpoint=(endpoint or settings.exchange_endpoint) or None,
    )


def connectors_for(feeds: Sequence[Feed], publisher: Publisher, config: ConnectorConfig) -> list[VenueConnector]:
    venues = sorted({f.venue for f in feeds})
    return [VenueConnector(v, [f for f in feeds if f.venue == v], publisher, config) for v in venues]


async def run_connectors(connectors: Sequence[VenueConnector], stop: threading.Event | asyncio.Event) -> None:
    """Runs every connector until `stop` is set (a thread's Event is polled)."""
    tasks = [asyncio.create_task(c.run(), name=f"connector-{c.venue}") for c in connectors]
    try:
        while not stop.is_set():
            done = [t for t in tasks if t.done()]
            for t in done:
                t.result()  # a connector only ends by raising: surface it
            await asyncio.sleep(0.2)
    finally:
        for c in connectors:
            await c.stop()
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
