"""Prometheus metrics, `/healthz` and `/readyz` of one worker process (README, "Metrics").

Cost on the hot paths is kept to per batch: a sink batch and a candle input message (one trade
batch of the wire format, ~100 trades) each cost one histogram observation; nothing is counted
per trade. Everything else is read when Prometheus scrapes, by a collector, from what is
counted already: Faust's own Monitor sensor (installed on every app, it counts every message
and event whatever we do), the candle agent's counters, the ClickHouse sink's rows per table.

Served by aiohttp on the worker's own event loop (so the scrape reads the agents' state
between two of their steps, never in the middle of one), on loopback by default: the worker
has no authentication of its own, and its metrics are for the operator's scraper only.

The same server (`web_app`, `serve`) answers for the live connectors of `entasis connect`
(`ConnectorMetrics`: per venue and symbol, read at scrape time from the counters each
connector keeps anyway, so nothing is added on their paths)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from streams.sinks.clickhouse import ClickHouseSink

logger = logging.getLogger("streams.metrics")

# From 1 ms (a small insert into the embedded database) to 10 s (an insert behind a merge).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check as `/readyz` lists it: `{"ok": ..., "state": ...}` under its name."""

    name: str
    ok: bool
    state: str


class Served(Protocol):
    """What the operator endpoints serve: the metrics page and the readiness checks."""

    def render(self) -> bytes: ...

    async def checks(self) -> list[Check]: ...


class DatabaseProbe:
    """`SELECT 1` on a client and a thread of its own (never behind the sink's inserts), at most
    `timeout_s` waited for; the answer is kept for `cache_s`, so a probe polled every 250 ms, or
    by several scrapers, costs one query a second or two. A query that hangs is not asked again
    while it hangs: every check meanwhile waits on it and reports `timeout`.

    States: `reachable`, `unreachable` (the query failed; the reason goes to the log), `timeout`."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        *,
        timeout_s: float = 2.0,
        cache_s: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_factory = client_factory
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.clock = clock
        self._client: Any = None
        self._inflight: asyncio.Future[None] | None = None
        self._answer: tuple[float, Check] | None = None

    def _ping(self) -> None:
        try:
            if self._client is None:
                self._client = self.client_factory()
            self._client.query("SELECT 1")
        except Exception:
            client, self._client = self._client, None  # the next probe starts with a fresh client
            if client is not None:
                with contextlib.suppress(Exception):  # closing a broken client may fail too
                    client.close()
            raise

    async def check(self) -> Check:
        now = self.clock()
        if self._answer is not None and now - self._answer[0] < self.cache_s:
            return self._answer[1]
        if self._inflight is None or self._inflight.done():
            self._inflight = self._start_ping()
        try:
            await asyncio.wait_for(asyncio.shield(self._inflight), self.timeout_s)
            answer = Check("database", True, "reachable")
        except TimeoutError:
            logger.warning("readiness: the database did not answer within %.1f s", self.timeout_s)
            answer = Check("database", False, "timeout")
        except Exception as exc:
            logger.warning("readiness: database unreachable: %s", exc)
            answer = Check("database", False, "unreachable")
        self._answer = (self.clock(), answer)
        return answer

    def _start_ping(self) -> asyncio.Future[None]:
        """The query on a daemon thread of its own (one at a time): a query that hangs neither
        blocks the loop nor keeps the process alive at exit, as a pool's worker thread would."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        def run() -> None:
            error: BaseException | None = None
            try:
                self._ping()
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(settle, error)

        threading.Thread(target=run, name="database-probe", daemon=True).start()
        return future


class WorkerMetrics:
    """The worker's own instruments, in a registry of its own (tests build many workers)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.agent_seconds = Histogram(
            "entasis_worker_agent_processing_seconds",
            "Time an agent spent on one unit of input: a sink batch, or a candle agent input message.",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.agent_messages = Counter(
            "entasis_worker_agent_messages",
            "Input messages an agent processed (sink agents count per batch, by its size).",
            ["agent"],
            registry=self.registry,
        )
        self.insert_seconds = Histogram(
            "entasis_worker_sink_insert_seconds",
            "Time of one insert into the database, by table.",
            ["table"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.insert_batches = Counter(
            "entasis_worker_sink_batches",
            "Inserts (batches) into the database, by table.",
            ["table"],
            registry=self.registry,
        )
        self.insert_failures = Counter(
            "entasis_worker_sink_insert_failures",
            "Inserts into the database that failed, by table (each is tried again until stored).",
            ["table"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "entasis_worker_dead_letters",
            "Dead letters the worker published, by source topic.",
            ["source"],
            registry=self.registry,
        )
        self.quality_events = Counter(
            "entasis_worker_quality_events",
            "Data-quality events the worker published, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.ready = False  # set while the worker holds an assignment (see `track_assignment`)
        # the worker's database, checked by `/readyz` (streams/app.py sets it; None: not checked)
        self.database: DatabaseProbe | None = None
        # `labels()` validates and locks (~3 µs): children are looked up once per label value.
        self._children: dict[tuple[str, str], Any] = {}

    def child(self, metric: Any, name: str, value: str) -> Any:
        key = (name, value)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(value)
        return found

    def observe_agent(self, agent: str, messages: int, seconds: float) -> None:
        self.child(self.agent_messages, "messages", agent).inc(messages)
        self.child(self.agent_seconds, "seconds", agent).observe(seconds)

    def observe_insert(self, table: str, seconds: float) -> None:
        self.child(self.insert_batches, "batches", table).inc()
        self.child(self.insert_seconds, "insert", table).observe(seconds)

    def observe_insert_failure(self, table: str) -> None:
        self.child(self.insert_failures, "failures", table).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def checks(self) -> list[Check]:
        """The consumer holds its partitions, and the database answers (when there is one to ask)."""
        ready = self.ready
        checks = [Check("consumer", ready, "assigned" if ready else "waiting_for_assignment")]
        if self.database is not None:
            checks.append(await self.database.check())
        return checks


class WorkerStateCollector(Collector):
    """Reads, at scrape time, what the worker counts already.

    `monitor`: Faust's Monitor sensor (messages by topic, read and end
    offsets per partition). `candles`: the candle agent's state (counters and, per stream, the
    newest event time). `rows_written`: the sink's rows per table. `forged`: portfolio messages
    without a valid signature, by where they were met (None: not counted here). `wall_ns`: the
    clock the watermark delay is measured against."""

    def __init__(
        self,
        monitor: Callable[[], Any],
        candles: Any,
        rows_written: Mapping[str, int],
        wall_ns: Callable[[], int] = time.time_ns,
        forged: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.monitor = monitor
        self.candles = candles
        self.rows_written = rows_written
        self.wall_ns = wall_ns
        self.forged = forged

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        (received, lag, rows, candle_messages, candle_kinds, watermark, forged) = families = self._families()
        monitor = self.monitor()
        if monitor is not None:
            for topic, n in list(monitor.messages_received_by_topic.items()):
                received.add_metric([topic], n)
            ends = dict(monitor.tp_end_offsets)
            for tp, read in list(monitor.tp_read_offsets.items()):
                end = ends.get(tp)
                if end is not None:  # the highwater is the next offset to be written
                    lag.add_metric([tp.topic, str(tp.partition)], max(0, end - read - 1))
        for table, n in list(self.rows_written.items()):
            rows.add_metric([table], n)
        if self.candles is not None:
            candle_messages.add_metric([], self.candles.messages)
            candle_kinds.add_metric(["late_trade"], self.candles.late_trades)
            candle_kinds.add_metric(["duplicate_trade"], self.candles.duplicate_trades)
            now_ns = self.wall_ns()
            for key, slot in self.candles.slots.items():
                newest = slot.state.max_event_ts_ns
                if newest is not None:
                    venue, symbol = key.split(":", 1)
                    watermark.add_metric([venue, symbol], (now_ns - newest) / 1e9)
        if self.forged is not None:
            for where, n in self.forged().items():
                forged.add_metric([where], n)
        return iter(families)

    @staticmethod
    def _families() -> tuple[Any, ...]:
        return (
            CounterMetricFamily("entasis_worker_messages_received", "Messages consumed, by topic.", labels=["topic"]),
            GaugeMetricFamily(
                "entasis_worker_consumer_lag",
                "Messages behind the partition's end, by topic and partition.",
                labels=["topic", "partition"],
            ),
            CounterMetricFamily(
                "entasis_worker_sink_rows", "Rows inserted into the database, by table.", labels=["table"]
            ),
            CounterMetricFamily(
                "entasis_worker_candle_input_messages", "Trade batches the candles agent read (all partitions)."
            ),
            CounterMetricFamily(
                "entasis_worker_candle_trades", "Trades the candles agent set aside, by kind.", labels=["kind"]
            ),
            GaugeMetricFamily(
                "entasis_worker_candle_watermark_delay_seconds",
                "Wall time minus the newest event time the candles agent has seen, by stream.",
                labels=["venue", "symbol"],
            ),
            CounterMetricFamily(
                "entasis_worker_forged_messages",
                "Portfolio messages without a valid signature, by where they were met.",
                labels=["where"],
            ),
        )


def track_assignment(app: Any, metrics: WorkerMetrics) -> None:
    """Readiness of the worker's consumer: ready once the group assigned it its partitions (Faust
    sends `on_partitions_assigned` after its own setup for them), not from a revocation until
    the next assignment (a rebalance in progress consumes nothing)."""

    async def assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        metrics.ready = True

    async def revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        if revoked:  # the first rebalance revokes nothing and takes nothing away
            metrics.ready = False

    app.on_partitions_assigned.connect(assigned)
    app.on_partitions_revoked.connect(revoked)


def attach_state(
    metrics: WorkerMetrics, monitor: Callable[[], Any], candles: Any, rows_written: Mapping[str, int],
    forged: Callable[[], Mapping[str, int]] | None = None,
) -> None:
    """Add the scrape-time readers of the worker's state, and the process collector (CPU,
    memory, open files of this process), to `metrics`."""
    metrics.registry.register(WorkerStateCollector(monitor, candles, rows_written, forged=forged))
    ProcessCollector(registry=metrics.registry)


def web_app(served: Served) -> web.Application:
    """The three operator paths; anything else is 404. `/readyz` is 200 when every check
    passes, else 503, listing each check either way."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(request: web.Request) -> web.Response:
        checks = await served.checks()
        ready = all(c.ok for c in checks)
        body = {
            "status": "ok" if ready else "unavailable",
            "checks": {c.name: {"ok": c.ok, "state": c.state} for c in checks},
        }
        return web.json_response(body, status=200 if ready else 503, headers={"Cache-Control": "no-store"})

    async def metrics_page(request: web.Request) -> web.Response:
        response = web.Response(body=served.render(), headers={"Cache-Control": "no-store"})
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def serve(served: Served, host: str, port: int, what: str = "worker") -> web.AppRunner:
    """Start the endpoints; the caller keeps the runner and calls `cleanup()` to stop."""
    runner = web.AppRunner(web_app(served), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("%s metrics on http://%s:%d/metrics", what, host, port)
    return runner


# --- live connectors -----------------------------------------------------------------------

FEED_STATES = ("connecting", "up", "down")


def feed_state(up: bool | None) -> str:
    """A connector feed's `up` flag in words: never connected yet, connected, or lost."""
    return "connecting" if up is None else "up" if up else "down"


class ConnectorCollector(Collector):
    """Reads, at scrape time, the counters every `VenueConnector` keeps per feed (`FeedStats`,
    streams/ingest/connector.py) and its state: nothing is counted for the metrics themselves."""

    def __init__(self, connectors: Iterable[Any], wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.connectors = list(connectors)
        self.wall_ns = wall_ns

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        families = self._families()
        *counters, state, age, malformed = families
        now_ns = self.wall_ns()
        for connector in self.connectors:
            malformed.add_metric([connector.venue], connector.malformed_frames)
            for feed in list(connector.states.values()):
                labels = [connector.venue, feed.feed.symbol]
                stats = feed.stats
                for family, field in zip(counters, _COUNTED, strict=True):
                    family.add_metric(labels, getattr(stats, field[0]))
                current = feed_state(feed.up)
                for name in FEED_STATES:
                    state.add_metric([*labels, name], 1.0 if name == current else 0.0)
                last = feed.last_trade
                if last is not None:
                    age.add_metric(labels, max(0.0, (now_ns - last.recv_ts_ns) / 1e9))
        return iter(families)

    @staticmethod
    def _families() -> tuple[Any, ...]:
        labels = ["venue", "symbol"]
        return (
            *(CounterMetricFamily(f"entasis_connector_{name}", text, labels=labels) for _, name, text in _COUNTED),
            GaugeMetricFamily(
                "entasis_connector_feed_state",
                "1 for the feed's current state (connecting, up, down), 0 for the others.",
                labels=[*labels, "state"],
            ),
            GaugeMetricFamily(
                "entasis_connector_last_trade_age_seconds",
                "Wall time since the last trade the feed published was received.",
                labels=labels,
            ),
            CounterMetricFamily(
                "entasis_connector_malformed_frames", "Frames the venue sent that did not decode.", labels=["venue"]
            ),
        )


# (FeedStats field, metric name without the prefix, help text), per venue and symbol
_COUNTED = (
    ("trades", "trades", "Trades published (backfilled ones included)."),
    ("backfilled", "backfilled_trades", "Trades published from the REST backfill after an outage."),
    ("duplicates", "duplicate_trades", "Trades received again and dropped (re-sent, or already backfilled)."),
    ("trade_gaps", "trade_gaps", "Holes in the venue's trade ids that the backfill could not fill (trade_gap)."),
    ("missing", "missing_trades", "Trade ids in those holes: trades never seen."),
    ("books", "books", "Order book snapshots published."),
    ("book_gaps", "book_gaps", "Book sequence gaps or checksum failures (book_gap)."),
    ("book_resyncs", "book_resyncs", "Books taken afresh from a snapshot after a gap or a reconnect."),
    ("disconnects", "disconnects", "Times the feed was lost to a network error (a stall counts under stalls)."),
    ("reconnects", "reconnects", "Times the feed came back after being lost."),
    ("stale", "stalls", "Times the watchdog gave up on a silent socket (feed_stale)."),
)


class ConnectorMetrics:
    """The metrics and readiness of the connectors of one process (`entasis connect`, or the live
    feed of `entasis up --venues`). Ready while every feed is up."""

    def __init__(self, connectors: Iterable[Any], wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.connectors = list(connectors)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ConnectorCollector(self.connectors, wall_ns))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def checks(self) -> list[Check]:
        out = []
        for connector in self.connectors:
            for feed in list(connector.states.values()):
                state = feed_state(feed.up)
                out.append(Check(feed.feed.key, state == "up", state))
        return out


class MeteredClickHouseSink(ClickHouseSink):
    """The sink, timing each insert (one per batch and table): the database's share of a batch."""

    def __init__(self, client_factory: Any, metrics: WorkerMetrics, clock: Callable[[], float] = time.perf_counter):
        super().__init__(client_factory)
        self.metrics = metrics
        self.clock = clock

    async def insert(self, table: str, data: Any) -> int:
        if data.num_rows == 0:
            return 0
        started = self.clock()
        n = await super().insert(table, data)
        self.metrics.observe_insert(table, self.clock() - started)
        return n

    def note_insert(self, table: str, rows: int, seconds: float) -> None:
        super().note_insert(table, rows, seconds)
        if rows:
            self.metrics.observe_insert(table, seconds)

    def note_failure(self, table: str) -> None:
        super().note_failure(table)
        self.metrics.observe_insert_failure(table)
