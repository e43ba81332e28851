"""The portfolio against the running system: the embedded broker, a worker process running the
portfolio agent, and the API with its Kafka bus. Two concurrent orders that each fit but not
together give one 201 and one PORT_001; an Idempotency-Key holds across an API restart; a
worker killed with SIGKILL and restarted rebuilds its state from pf.events alone (it decides the
next order against the positions it had); `set-balance` is a command like any other."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import API_PREFIX, create_app
from api.key_repository import ApiKeyRepository
from api.portfolio_repository import KafkaPortfolioBus
from infra.cli.portfolio import cmd_rebuild, cmd_set_balance
from infra.config.settings import Settings
from infra.store.clickhouse import make_client
from infra.store.risk_repository import RiskRepository
from schemas import topics
from streams.agents.portfolio import read_topic
from tests.api.conftest import TRADE_COLUMNS, bearer, error_of, test_api_settings, token_for
from tests.integration.conftest import Infra, start_worker
from tests.integration.pipeline import command, prepare, rows, wait_for

pytestmark = pytest.mark.integration

P = f"{API_PREFIX}/portfolio"


def set_balance(settings: Settings, account: str, amount: str, timeout_s: float = 90.0) -> None:
    """Also the readiness probe: retried until a worker holds the partition and answers."""
    args = argparse.Namespace(account=account, amount=Decimal(amount), max_open_positions=None,
                              max_symbol_notional=None, timeout=5.0)
    deadline = time.monotonic() + timeout_s
    while cmd_set_balance(settings, args) != 0:
        assert time.monotonic() < deadline, "the portfolio worker never answered"


@contextlib.contextmanager
def api(settings: Settings) -> Iterator[TestClient]:
    """One API process: its own bus, which replays pf.events when it starts."""
    repository = RiskRepository(lambda: make_client(settings), symbols_ttl_s=0)
    keys = ApiKeyRepository(lambda: make_client(settings))
    bus = KafkaPortfolioBus(settings.kafka_bootstrap, settings.topic_namespace)
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=keys, portfolio_bus=bus)
    try:
        with TestClient(app) as client:
            client.portal.call(bus.start)  # type: ignore[union-attr]  # on the app's event loop
            try:
                yield client
            finally:
                client.portal.call(bus.close)  # type: ignore[union-attr]
    finally:
        repository.close()
        keys.close()


def post(client: TestClient, account: str, body: dict[str, str], key: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = bearer(token_for(account))
    if key is not None:
        headers["Idempotency-Key"] = key
    r = client.post(f"{P}/positions", json=body, headers=headers)
    return r.status_code, r.json() if r.status_code == 201 else error_of(r)


def test_portfolio_against_the_running_system(infra: Infra, tmp_path: Path) -> None:
    settings = infra.settings()
    prepare(settings)
    db = make_client(settings)
    now = time.time_ns()
    db.insert("trades", [["binance", "BTC-USDT", "t1", Decimal("60000"), Decimal("1"), "buy", now, now]],
              column_names=TRADE_COLUMNS)
    db.close()
    order = {"symbol": "BTC-USDT", "size": "1", "type": "long"}

    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        set_balance(settings, "alice", "100000")
        with api(settings) as client:
            # 60000 margin each against 100000: exactly one fits
            results: list[tuple[int, dict]] = []  # type: ignore[type-arg]
            barrier = threading.Barrier(2)

            def concurrent() -> None:
                barrier.wait()
                results.append(post(client, "alice", order))

            threads = [threading.Thread(target=concurrent) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(code for code, _ in results) == [201, 422]
            assert [b["code"] for code, b in results if code == 422] == ["PORT_001"]

            first = post(client, "bob", order, key="bob-1")
            assert first[0] == 201

        with api(settings) as client:  # an API restart: the key still returns the first answer
            assert post(client, "bob", order, key="bob-1") == first
            assert post(client, "bob", {**order, "size": "2"}, key="bob-1")[1]["code"] == "IDEMPOTENCY_CONFLICT"
            before = client.get(f"{P}/positions", headers=bearer(token_for("alice"))).json()
            assert len(before["positions"]) == 1

        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        worker = start_worker(settings, tmp_path / "worker2.log")
        set_balance(settings, "carol", "5")  # waits until the new worker answers
        with api(settings) as client:
            # rebuilt from pf.events: alice's open position still holds 60000 of her 100000
            code, body = post(client, "alice", order)
            assert (code, body["code"]) == (422, "PORT_001")
            assert body["details"]["free_balance"] == "40000.00000000"
            assert client.get(f"{P}/positions", headers=bearer(token_for("alice"))).json() == before
            set_balance(settings, "alice", "1000000")
            assert post(client, "alice", order)[0] == 201

        # the ClickHouse projection holds every event of pf.events; dropped, it is rebuilt the same
        events_topic = topics.PF_EVENTS.full_name(settings.topic_namespace)
        on_topic = asyncio.run(read_topic(settings.kafka_bootstrap, events_topic))
        projection = "SELECT account, seq, kind, command_id, body, event_ts FROM portfolio_events FINAL ORDER BY ALL"
        wait_for(lambda: len(rows(settings, projection)) == len(on_topic), 60, "the portfolio projection")
        before_rebuild = rows(settings, projection)
        assert len(on_topic) >= 8 and {r[2] for r in before_rebuild} >= {"position_opened", "position_rejected"}
        command(settings, "TRUNCATE TABLE portfolio_events")
        assert rows(settings, projection) == []
        assert cmd_rebuild(settings, argparse.Namespace()) == 0
        assert rows(settings, projection) == before_rebuild
    finally:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=30)
