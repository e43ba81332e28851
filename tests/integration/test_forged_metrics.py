"""A worker's `/metrics` counts portfolio messages that lack the portfolio agent's signature,
by where they were met: a real worker process, its metrics port, and messages this test writes
straight to the broker as any local process could (no signature at all).

Oracle: the number of unsigned messages this test produced on each topic."""

from __future__ import annotations

import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from infra.dev.processes import free_port
from schemas import topics
from schemas.portfolio import AccountOpened, OpenPosition, PositionType
from schemas.wire import encode_event
from tests.integration.conftest import Infra, start_worker
from tests.integration.pipeline import prepare, wait_for
from tests.integration.test_status import readyz, stop

pytestmark = pytest.mark.integration


def forged_counts(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {sample.labels["where"]: sample.value
            for family in text_string_to_metric_families(text) if family.name == "entasis_worker_forged_messages"
            for sample in family.samples if sample.name.endswith("_total")}


def test_unsigned_portfolio_messages_are_counted_where_the_worker_met_them(infra: Infra, tmp_path: Path) -> None:
    settings = infra.settings(worker_metrics_port=free_port(), stale_feed_seconds=0)
    prepare(settings)
    base = f"http://127.0.0.1:{settings.worker.metrics_port}"
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_for(lambda: readyz(base)[0] == 200, 90, "the worker's /readyz")
        assert forged_counts(base) == {"portfolio_commands": 0, "portfolio_rebuild": 0, "portfolio_event_sink": 0}

        ns = settings.topic_namespace
        order = OpenPosition(account="mallory", command_id="forged-1", symbol="BTC-USDT", type=PositionType.LONG,
                             size=Decimal("1"), leverage=Decimal("1"), price=Decimal("100"), price_ts_ns=1,
                             idempotency_key=None, request_hash="h", issued_ts_ns=2)
        opened = AccountOpened(account="mallory", command_id="forged-0", seq=1, ts_ns=3, balance=Decimal("1000000"),
                               max_open_positions=5, max_symbol_notional=Decimal("1000000"))
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        producer.produce(topics.PF_COMMANDS.full_name(ns), encode_event(order), b"mallory")
        producer.produce(topics.PF_EVENTS.full_name(ns), encode_event(opened), b"mallory")
        producer.produce(topics.PF_EVENTS.full_name(ns), encode_event(opened.model_copy(update={"seq": 2})),
                         b"mallory")
        assert producer.flush(30) == 0

        wait_for(lambda: forged_counts(base).get("portfolio_event_sink") == 2
                 and forged_counts(base).get("portfolio_commands") == 1, 60, "the forged messages counted")
        assert worker.poll() is None  # counted, and the worker goes on
    finally:
        stop(worker)
