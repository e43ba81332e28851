"""Prometheus metrics of one API process (README, "Health and metrics", lists every name).

Per request the cost is one dict lookup for the route, two label lookups and a counter and a
histogram update: a plain ASGI middleware, no per-request task, no body buffering. What other
parts already count (the WebSocket hub, the market feed) is read when Prometheus scrapes, by a
collector, so the hot paths there gain nothing.

Each app has a registry of its own (not prometheus_client's global one): a process normally
serves one app, and tests build many, each of which must count only its own requests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METRICS_PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# The label of a request no route answered: an unknown path, or one the security gate refused
# before routing (401/403/429). Paths are never labels: a client could mint one series each.
UNMATCHED = "unmatched"
# Methods are labels only from this set, for the same reason (any token is a valid HTTP method).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# From 1 ms (an answer from memory) to 10 s (a cold history query).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """The API's own instruments, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "entasis_api_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "entasis_api_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "entasis_api_rate_limited",
            "Requests refused with 429 RATE_LIMITED.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class AppStateCollector(Collector):
    """Reads, at scrape time, what the WebSocket hub and the market feed count already.

    `state` is the app's `app.state`; the hub and feed are looked up on every scrape because
    they are attached after the app is built (the feed only while the app runs)."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def describe(self) -> Iterator[Any]:
        # Described up front (no scrape at registration): the hub may not exist yet.
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        families = self._families()
        hub = getattr(self.state, "market_hub", None)
        sessions, updates, slow_closed, lag, feed_consuming, bad = families
        if hub is not None:
            open_sessions = tuple(hub.sessions)
            sessions.add_metric([], len(open_sessions))
            updates.add_metric([], hub.updates)
            slow_closed.add_metric([], hub.slow_closed)
            lag.add_metric([], max((s.queue.lag() for s in open_sessions), default=0.0))
        feed = getattr(self.state, "market_feed", None)
        feed_consuming.add_metric([], 1.0 if feed is not None and feed.state == "consuming" else 0.0)
        bad.add_metric([], feed.bad_messages if feed is not None else 0)
        return iter(families)

    @staticmethod
    def _families() -> tuple[Any, ...]:
        return (
            GaugeMetricFamily("entasis_api_websocket_sessions", "WebSocket sessions open now."),
            CounterMetricFamily(
                "entasis_api_websocket_updates", "Market updates the feed handed to the WebSocket hub."
            ),
            CounterMetricFamily(
                "entasis_api_websocket_slow_closed", "WebSocket sessions closed with 1013 for falling behind."
            ),
            GaugeMetricFamily(
                "entasis_api_websocket_queue_lag_seconds",
                "Age of the oldest update waiting for any open WebSocket session (0 when none waits).",
            ),
            GaugeMetricFamily("entasis_api_market_feed_consuming", "1 while the market feed consumer is consuming."),
            CounterMetricFamily(
                "entasis_api_market_feed_bad_messages", "Messages the market feed skipped because they did not decode."
            ),
        )


def build_metrics(app_state: Any) -> ApiMetrics:
    """The metrics of one app: request instruments, the hub and feed readers, and the process
    collector (CPU, memory, open files of this process)."""
    metrics = ApiMetrics()
    metrics.registry.register(AppStateCollector(app_state))
    ProcessCollector(registry=metrics.registry)
    # With `entasis api --workers N` each process keeps its own counters and a scrape of the shared
    # port reaches one of them: this says which (scrape each, or sum by pid, to see them all).
    Gauge("entasis_api_process_info", "The API process that answered this scrape.", ["pid"],
          registry=metrics.registry).labels(str(os.getpid())).set(1)
    return metrics


class MetricsMiddleware:
    """Counts and times every HTTP request. Placed outermost among the app's middleware, so it
    sees the status the client gets, the 500 envelope and the gate's refusals included."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ApiMetrics,
        fixed_paths: frozenset[str],
        router_prefixes: tuple[str, ...] = (),
        router: Router | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Paths answered before routing (health, metrics) that are labelled by themselves.
        self.fixed_paths = fixed_paths
        # FastAPI sets `scope["route"]` for its own routes only; plain Starlette routes (/docs,
        # /openapi.json) are labelled by their path when it has no parameters. Read from the
        # router on first use, when every route has been added.
        self.router = router
        self._static_paths: frozenset[str] | None = None
        # `labels()` costs about 3 µs a call (validation and a lock): the children are looked up
        # once per (route, method, status) and kept. The keys are bounded: templates, the
        # method set and status codes, never anything a client chose freely.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # FastAPI puts the router's own route into the scope, whose path lacks the prefix the
        # router was included under; the same router served under two prefixes (`/api/v1` and
        # the `/v1` alias) must still give two templates.
        self.router_prefixes = tuple((p, p + "/") for p in router_prefixes)
        self.clock = clock if clock is not None else time.perf_counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        status = 500  # what the client gets if the app raises before starting a response

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # Routing put the matched route into this same scope dict (FastAPI's APIRoute).
            route = scope.get("route")
            path = getattr(route, "path", None)
            if path is None:
                path = scope["path"]
                # A plain route's path counts only once routing chose it ("endpoint" set), so a
                # request refused before routing is `unmatched` whichever kind of route it aimed at.
                if path not in self.fixed_paths and ("endpoint" not in scope or path not in self._static()):
                    path = UNMATCHED
            else:
                path = self._template(scope["path"], path)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (path, method, status)
            children = self._children.get(key)
            if children is None:
                metrics = self.metrics
                children = metrics.requests.labels(path, method, str(status)), metrics.latency.labels(path)
                self._children[key] = children
            children[0].inc()
            children[1].observe(self.clock() - started)
            if status == 429:
                self.metrics.rate_limited.inc()

    def _static(self) -> frozenset[str]:
        if self._static_paths is None:
            routes = self.router.routes if self.router is not None else []
            self._static_paths = frozenset(r.path for r in routes if isinstance(r, Route) and not r.param_convertors)
        return self._static_paths

    def _template(self, request_path: str, route_path: str) -> str:
        for prefix, with_slash in self.router_prefixes:
            if request_path.startswith(with_slash) and not route_path.startswith(with_slash):
                return prefix + route_path
        return route_path
