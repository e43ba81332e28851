"""Runs the live connectors of `streams.core.venues.registry` in one asyncio loop: one `VenueConnector` per
venue, all publishing to the broker, until told to stop.

The connector module (ccxt, ~1.5 s to import) is imported where it is used: `entasis` imports this
module for `--record` on every command. `--record DIR` is an argument like any other: `connect`
passes it to `connector_config`, `up` through `Stack.run` and `feeds.live_into`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from infra.config.settings import Settings
from schemas.venues import Feed
from streams.core.backoff import Backoff
from streams.core.venues.registry import parse_feeds

if TYPE_CHECKING:
    from streams.ingest.connector import ConnectorConfig, VenueConnector
    from streams.ingest.publisher import Publisher

log = logging.getLogger(__name__)


def add_record_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--record", metavar="DIR",
        help="record every frame the live venues send into DIR (gzip, one file per venue, symbol and UTC day: "
             "<venue>_<symbol>_<YYYYMMDD>.gz); `entasis replay DIR` replays them. Live venues only: `up` "
             "without --venues refuses it (the simulated feed has no venue frames to record)")


def configured_feeds(settings: Settings, override: Sequence[str] | str | None = None) -> tuple[Feed, ...]:
    """`--venues` when given, else ENTASIS_VENUES; raises InvalidFeed with the reason."""
    return parse_feeds(override if override else settings.venues)


def connector_config(settings: Settings, endpoint: str | None = None, record_dir: str | None = None) -> ConnectorConfig:
    """The connectors' settings; `record_dir` (`--record`, handed down by `connect` and by `up`
    through the stack and `feeds.live_into`) is where they record their frames, None: nowhere."""
    from streams.ingest.connector import ConnectorConfig

    return ConnectorConfig(
        book_depth=settings.connector.book_depth,
        book_interval_s=settings.connector.book_interval_ms / 1000,
        stale_after_s=settings.connector.stale_seconds,
        backoff_max_s=settings.connector.backoff_max_seconds,
        stagger_s=settings.connector.stagger_ms / 1000,
        namespace=settings.topic_namespace,
        endpoint=(endpoint or settings.exchange_endpoint) or None,
        record_dir=record_dir or None,
    )


def connectors_for(feeds: Sequence[Feed], publisher: Publisher, config: ConnectorConfig) -> list[VenueConnector]:
    from streams.ingest.connector import VenueConnector

    venues = sorted({f.venue for f in feeds})
    return [VenueConnector(v, [f for f in feeds if f.venue == v], publisher, config) for v in venues]


async def supervise(connector: VenueConnector, backoff: Backoff | None = None) -> None:
    """One venue's connector, restarted (with backoff) if it ever fails as a whole, so one
    venue's trouble never stops another's feed. Its loops already survive network errors."""
    backoff = backoff or Backoff(1.0, 60.0)
    while True:
        try:
            await connector.run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = backoff.next()
            log.exception("connector %s failed; restarting it in %.1fs", connector.venue, delay)
            await connector.stop()
            connector.restart()
            await asyncio.sleep(delay)


def stats_line(connector: VenueConnector) -> str:
    """One venue's counters so far, for the log."""
    parts = []
    for state in connector.states.values():
        s = state.stats
        up = {True: "up", False: "DOWN", None: "connecting"}[state.up]
        parts.append(f"{state.feed.key} {up}: {s.trades} trades ({s.backfilled} backfilled, {s.missing} missing), "
                     f"{s.books} books, {s.book_gaps} gaps, {s.disconnects} disconnects, {s.stale} stalls")
    return f"{connector.venue}: " + "; ".join(parts) + f"; {connector.malformed_frames} malformed frames"


def metrics_address(settings: Settings) -> tuple[str, int] | None:
    """Where the connectors serve `/metrics`, `/healthz`, `/readyz` (ENTASIS_CONNECTOR_METRICS_*); None: nowhere."""
    port = settings.connector.metrics_port
    return (settings.connector.metrics_host, port) if port else None


async def run_connectors(connectors: Sequence[VenueConnector], stop: threading.Event | asyncio.Event,
                         report_every_s: float = 60.0, metrics_at: tuple[str, int] | None = None) -> None:
    """Runs every connector, each supervised on its own, until `stop` is set (a thread's Event
    is polled); logs each venue's counters every `report_every_s`. With `metrics_at` (host,
    port), serves their metrics and readiness there (streams/runtime/metrics.py) meanwhile."""
    runner = None
    if metrics_at is not None:
        from streams.runtime.metrics import ConnectorMetrics, serve

        runner = await serve(ConnectorMetrics(connectors), *metrics_at, what="connector")
    tasks = [asyncio.create_task(supervise(c), name=f"connector-{c.venue}") for c in connectors]
    next_report = asyncio.get_running_loop().time() + report_every_s
    try:
        while not stop.is_set():
            await asyncio.sleep(0.2)
            if asyncio.get_running_loop().time() >= next_report:
                next_report += report_every_s
                for c in connectors:
                    log.info("%s", stats_line(c))
    finally:
        for c in connectors:
            await c.stop()
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if runner is not None:
            await runner.cleanup()
