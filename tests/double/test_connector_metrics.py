"""The connectors' `/metrics`, `/healthz` and `/readyz` (streams/runtime/metrics.py, served by
`run_connectors` as `entasis connect` serves them) against the Binance double: the counters move
with what the double does to the connection, and each is the connector's own count.

The oracle for trades is the double (what it played); for reconnects, stalls and backfills, the
faults the test itself caused and the quality events the connector published for them."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from infra.cli.live import run_connectors
from infra.dev.exchange_double.binance import BinanceDouble
from infra.dev.exchange_double.server import ExchangeDouble
from infra.dev.processes import free_port
from streams.core.venues.registry import parse_feeds
from streams.ingest.connector import ConnectorConfig, VenueConnector
from streams.ingest.publisher import ListPublisher
from tests.double.harness import FAST, Run, wait_until
from tests.double.test_binance_connector import SPOT, finish, printed_trade_ids, spot

LABELS = (("symbol", "ETH-USDT"), ("venue", "binance"))


def state(name: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((*LABELS, ("state", name))))


@dataclass
class Served(Run):
    metrics_url: str = ""

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with aiohttp.ClientSession() as http, http.get(self.metrics_url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def ready(self) -> tuple[int, dict[str, object]]:
        async with aiohttp.ClientSession() as http, http.get(self.metrics_url + "/readyz") as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def served(double: BinanceDouble, config: ConnectorConfig = FAST) -> AsyncIterator[Served]:
    """The double, and a connector run by `run_connectors` with its metrics on a loopback port."""
    server = ExchangeDouble([double])
    base = await server.start()
    publisher = ListPublisher()
    connector = VenueConnector(
        "binance", parse_feeds(SPOT), publisher, replace(config, endpoint=base), rng=random.Random(7)
    )
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(run_connectors([connector], stop, metrics_at=("127.0.0.1", port)))
    run = Served(double, connector, publisher, base, f"http://127.0.0.1:{port}")
    try:
        await wait_until(lambda: sum(len(c.channels) for c in double.connections) >= 2, 20, "both subscribed")
        # nothing is played yet: only the book's REST snapshot can bring the feed up
        await wait_until(lambda: all(s.up for s in connector.states.values()), 30, "the book's snapshot")
        yield run
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await server.stop()


async def test_counters_move_through_an_outage_and_readiness_follows_the_feed() -> None:
    async with served(spot()) as run:
        before = await run.scrape()
        assert before[("entasis_connector_trades_total", LABELS)] == 0
        assert before[("entasis_connector_reconnects_total", LABELS)] == 0
        status, body = await run.ready()
        assert status == 200 and body["checks"] == {SPOT: {"ok": True, "state": "up"}}  # the book's snapshot came

        run.double.play()
        await wait_until(lambda: run.double.played >= len(run.double.recording) * 0.4, 60, "40% played")
        run.double.down()  # connections aborted, and refused until `up()`
        await wait_until(lambda: run.connector.stats()[SPOT].disconnects == 1, 20, "the outage noticed")
        status, body = await run.ready()
        assert status == 503 and body["checks"] == {SPOT: {"ok": False, "state": "down"}}
        during = await run.scrape()
        assert during[("entasis_connector_feed_state", state("down"))] == 1
        assert during[("entasis_connector_feed_state", state("up"))] == 0

        run.double.up()
        await finish(run, SPOT)
        after = await run.scrape()
        status, _ = await run.ready()
        assert status == 200
        stats = run.connector.stats()[SPOT]

    assert after[("entasis_connector_trades_total", LABELS)] == len(printed_trade_ids(run)) == stats.trades
    assert after[("entasis_connector_reconnects_total", LABELS)] == 1  # the one outage
    assert after[("entasis_connector_disconnects_total", LABELS)] == 1
    assert after[("entasis_connector_backfilled_trades_total", LABELS)] == stats.backfilled > 0
    assert after[("entasis_connector_book_resyncs_total", LABELS)] == 1
    assert after[("entasis_connector_stalls_total", LABELS)] == 0
    assert after[("entasis_connector_trade_gaps_total", LABELS)] == 0
    assert after[("entasis_connector_books_total", LABELS)] == stats.books > 0
    assert after[("entasis_connector_feed_state", state("up"))] == 1
    assert after[("entasis_connector_feed_state", state("down"))] == 0
    # present once a trade came; its value is wall time, checked on a fixed clock in tests/unit/test_status.py
    assert after[("entasis_connector_last_trade_age_seconds", LABELS)] >= 0
    assert after[("entasis_connector_malformed_frames_total", (("venue", "binance"),))] == 0
    assert ("process_cpu_seconds_total", ()) in after


async def test_a_stall_counts_once_as_a_stall_and_the_feed_comes_back() -> None:
    async with served(spot(), replace(FAST, stale_after_s=1.5)) as run:
        run.double.play()
        await wait_until(lambda: run.double.played >= len(run.double.recording) * 0.3, 60, "30% played")
        assert run.double.stall() == 1
        await wait_until(lambda: run.connector.stats()[SPOT].stale == 1, 20, "the stall noticed")
        during = await run.scrape()
        await finish(run, SPOT)
        after = await run.scrape()

    assert during[("entasis_connector_stalls_total", LABELS)] == 1
    assert during[("entasis_connector_feed_state", state("down"))] == 1 or (
        # the reconnect may already have come back between the two reads
        during[("entasis_connector_reconnects_total", LABELS)] == 1
    )
    assert after[("entasis_connector_stalls_total", LABELS)] == 1
    assert after[("entasis_connector_disconnects_total", LABELS)] == 0  # a stall is counted as a stall only
    assert after[("entasis_connector_reconnects_total", LABELS)] == 1
    assert after[("entasis_connector_feed_state", state("up"))] == 1
