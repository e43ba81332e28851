"""Prometheus metrics, `/healthz` and `/readyz` of one worker process (README, "Metrics").

Cost on the hot paths is kept to per batch: a sink batch and a candle input message (one trade
batch of the wire format, ~100 trades) each cost one histogram observation; nothing is counted
per trade. Everything else is read when Prometheus scrapes, by a collector, from what is
counted already: Faust's own Monitor sensor (installed on every app, it counts every message
and event whatever we do), the candle agent's counters, the ClickHouse sink's rows per table.

Served by aiohttp on the worker's own event loop (so the scrape reads the agents' state
between two of their steps, never in the middle of one), on loopback by default: the worker
has no authentication of its own, and its metrics are for the operator's scraper only."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

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

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WorkerStateCollector(Collector):
    """Reads, at scrape time, what the worker counts already.

    `monitor`: Faust's Monitor sensor (messages by topic, read and end
    offsets per partition). `candles`: the candle agent's state (counters and, per stream, the
    newest event time). `rows_written`: the sink's rows per table. `wall_ns`: the clock the
    watermark delay is measured against."""

    def __init__(
        self,
        monitor: Callable[[], Any],
        candles: Any,
        rows_written: Mapping[str, int],
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.monitor = monitor
        self.candles = candles
        self.rows_written = rows_written
        self.wall_ns = wall_ns

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        (received, lag, rows, candle_messages, candle_kinds, watermark) = families = self._families()
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
    metrics: WorkerMetrics, monitor: Callable[[], Any], candles: Any, rows_written: Mapping[str, int]
) -> None:
    """Add the scrape-time readers of the worker's state, and the process collector (CPU,
    memory, open files of this process), to `metrics`."""
    metrics.registry.register(WorkerStateCollector(monitor, candles, rows_written))
    ProcessCollector(registry=metrics.registry)


def web_app(metrics: WorkerMetrics) -> web.Application:
    """The three operator paths; anything else is 404."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(request: web.Request) -> web.Response:
        ready = metrics.ready
        body = {
            "status": "ok" if ready else "unavailable",
            "checks": {"consumer": {"ok": ready, "state": "assigned" if ready else "waiting_for_assignment"}},
        }
        return web.json_response(body, status=200 if ready else 503, headers={"Cache-Control": "no-store"})

    async def metrics_page(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render(), headers={"Cache-Control": "no-store"})
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def serve(metrics: WorkerMetrics, host: str, port: int) -> web.AppRunner:
    """Start the endpoints; the caller keeps the runner and calls `cleanup()` to stop."""
    runner = web.AppRunner(web_app(metrics), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("worker metrics on http://%s:%d/metrics", host, port)
    return runner


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
