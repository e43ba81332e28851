"""The worker's metrics and operator endpoints (streams/runtime/metrics.py), in-process: the
candles agent in Faust's test context, the scrape-time collector on a fake monitor and clock,
and `/healthz`, `/readyz`, `/metrics` over a real aiohttp server on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from infra.config.settings import Settings
from schemas.events import Candle, DeadLetter, QualityEvent
from streams.app import build_worker
from streams.core.checkpoint import MemoryCheckpointStore
from streams.runtime.metrics import WorkerMetrics, WorkerStateCollector, track_assignment, web_app
from tests.agents.test_candle_agent import batches, feed, spot_trades


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client's own text parser (not by the code
    that renders it), keyed by name and sorted labels."""
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def ignore(_: object) -> None:
    pass


def _no_client() -> Any:
    raise AssertionError("no database in this test")


async def test_the_candles_agent_counts_messages_dead_letters_quality_kinds_and_time_per_message() -> None:
    async def emit(_: Candle) -> None:
        pass

    async def dead(_: DeadLetter) -> None:
        pass

    async def report(_: QualityEvent) -> None:
        pass

    settings = Settings(worker_id="test-metrics", candle_lateness_ms=0, kafka_bootstrap="127.0.0.1:1")
    worker = build_worker(
        settings,
        client_factory=_no_client,
        candle_emitter=emit,
        quality_emitter=report,
        dead_letter_emitter=dead,
        checkpoint_store=MemoryCheckpointStore(),
    )
    messages = batches(spot_trades())
    # garbage (a dead letter), every batch, and a full recent batch again (100 duplicate trades)
    await feed(worker, [b"{not json", *messages, messages[-2]])
    sent = 1 + len(messages) + 1

    got = samples(worker.metrics)
    assert got[("entasis_worker_candle_input_messages_total", ())] == sent
    assert got[("entasis_worker_agent_processing_seconds_count", (("agent", "candles"),))] == sent
    assert got[("entasis_worker_candle_trades_total", (("kind", "duplicate_trade"),))] == 100
    # counted where they are published, by kind and source, whatever agent published them
    assert got[("entasis_worker_quality_events_total", (("kind", "duplicate_trade"),))] == 1
    assert got[("entasis_worker_dead_letters_total", (("source", "md.trades.v1"),))] == 1
    assert ("entasis_worker_candle_watermark_delay_seconds", (("symbol", "ETH-USDT"), ("venue", "binance"))) in got


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class FakeMonitor:
    messages_received_by_topic: dict[str, int] = field(default_factory=dict)
    tp_read_offsets: dict[TP, int] = field(default_factory=dict)
    tp_end_offsets: dict[TP, int] = field(default_factory=dict)


class Slot:
    def __init__(self, max_event_ts_ns: int | None) -> None:
        self.state = type("State", (), {"max_event_ts_ns": max_event_ts_ns})()


class Candles:
    messages, late_trades, duplicate_trades, dead_letters = 7, 2, 3, 1

    def __init__(self) -> None:
        self.slots = {"binance:BTC-USDT": Slot(10_000_000_000), "okx:BTC-USDT": Slot(None)}


def test_the_collector_reads_lag_per_partition_rows_and_watermark_delay_from_what_is_counted() -> None:
    monitor = FakeMonitor(
        messages_received_by_topic={"md.trades.v1": 40},
        tp_read_offsets={TP("md.trades.v1", 0): 9, TP("md.trades.v1", 1): 4},
        tp_end_offsets={TP("md.trades.v1", 0): 25, TP("md.trades.v1", 1): 5},  # highwater: next offset
    )
    metrics = WorkerMetrics()
    metrics.registry.register(
        WorkerStateCollector(lambda: monitor, Candles(), {"trades": 4000}, wall_ns=lambda: 12_500_000_000)
    )
    got = samples(metrics)
    assert got[("entasis_worker_consumer_lag", (("partition", "0"), ("topic", "md.trades.v1")))] == 15
    assert got[("entasis_worker_consumer_lag", (("partition", "1"), ("topic", "md.trades.v1")))] == 0
    assert got[("entasis_worker_messages_received_total", (("topic", "md.trades.v1"),))] == 40
    assert got[("entasis_worker_sink_rows_total", (("table", "trades"),))] == 4000
    assert got[("entasis_worker_candle_trades_total", (("kind", "late_trade"),))] == 2
    delay = ("entasis_worker_candle_watermark_delay_seconds", (("symbol", "BTC-USDT"), ("venue", "binance")))
    assert got[delay] == 2.5
    # a stream with no event yet has no delay to report
    assert not any(name.endswith("watermark_delay_seconds") and ("venue", "okx") in labels for name, labels in got)
    assert not any(name.startswith("entasis_worker_forged") for name, _ in got)  # nobody counts them here


def test_the_collector_reads_forged_portfolio_messages_by_where_they_were_met_at_each_scrape() -> None:
    counts = {"portfolio_commands": 2, "portfolio_event_sink": 0}
    metrics = WorkerMetrics()
    metrics.registry.register(WorkerStateCollector(lambda: None, None, {}, forged=lambda: counts))
    assert samples(metrics)[("entasis_worker_forged_messages_total", (("where", "portfolio_commands"),))] == 2
    counts["portfolio_event_sink"] = 5  # read again at the next scrape, not copied once
    got = samples(metrics)
    assert got[("entasis_worker_forged_messages_total", (("where", "portfolio_event_sink"),))] == 5
    assert got[("entasis_worker_forged_messages_total", (("where", "portfolio_commands"),))] == 2


async def test_the_metered_sink_times_each_insert_by_table_and_counts_failed_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.runtime import retrying
    from streams.runtime.batch_sink import insert_until_stored
    from streams.runtime.metrics import MeteredClickHouseSink

    down = [ConnectionError("database down")] * 2

    class Client:
        def insert_arrow(self, table: str, data: pa.Table) -> None:
            if table == "candles" and down:
                raise down.pop()

        def close(self) -> None:
            pass

    metrics = WorkerMetrics()
    sink = MeteredClickHouseSink(Client, metrics)
    try:
        assert await sink.insert("trades", pa.table({"x": [1, 2]})) == 2
        assert await sink.insert("trades", pa.table({"x": []})) == 0  # nothing inserted: not a batch
        monkeypatch.setattr(retrying, "RETRY_FIRST_S", 0.001)
        assert await insert_until_stored(sink, "candles", pa.table({"x": [1, 2, 3]})) == 3
    finally:
        sink.close()
    got = samples(metrics)
    assert got[("entasis_worker_sink_batches_total", (("table", "trades"),))] == 1
    assert got[("entasis_worker_sink_insert_seconds_count", (("table", "trades"),))] == 1
    assert got[("entasis_worker_sink_insert_failures_total", (("table", "candles"),))] == 2
    assert got[("entasis_worker_sink_batches_total", (("table", "candles"),))] == 1  # only the taken one
    assert sink.rows_written == {"trades": 2, "candles": 3}


class Signal:
    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def connect(self, handler: Any) -> None:
        self.handlers.append(handler)

    async def send(self, app: Any, tps: set[Any]) -> None:
        for handler in self.handlers:
            await handler(app, tps)


async def test_endpoints_health_always_ready_only_while_assigned_and_metrics_in_text_format() -> None:
    metrics = WorkerMetrics()
    app = type("App", (), {"on_partitions_assigned": Signal(), "on_partitions_revoked": Signal()})()
    track_assignment(app, metrics)
    metrics.observe_insert("candles", 0.01)
    async with TestClient(TestServer(web_app(metrics), host="127.0.0.1")) as client:
        health = await client.get("/healthz")
        assert health.status == 200 and await health.json() == {"status": "ok"}

        assert (await client.get("/readyz")).status == 503
        await app.on_partitions_revoked.send(app, set())  # the first rebalance: nothing revoked
        await app.on_partitions_assigned.send(app, {TP("md.trades.v1", 0)})
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["checks"]["consumer"] == {"ok": True, "state": "assigned"}
        await app.on_partitions_revoked.send(app, {TP("md.trades.v1", 0)})  # a rebalance in progress
        assert (await client.get("/readyz")).status == 503

        scrape = await client.get("/metrics")
        assert scrape.status == 200 and scrape.headers["Content-Type"].startswith("text/plain")
        assert 'entasis_worker_sink_batches_total{table="candles"} 1.0' in await scrape.text()
        assert (await client.get("/nope")).status == 404
