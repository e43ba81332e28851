"""Issue 19: in docker-compose.yml every long-running process of the product has a health check on
a path it really serves, and infra/prometheus.yml scrapes every process that serves metrics, by
its compose service name and the port its settings give it. No Docker engine here: the files are
read as compose and Prometheus read them (YAML), each service's ENTASIS_* environment goes through
the real `Settings` and its command through the real CLI parser, and the worker's and the
connectors' health checks are run, as written, against their real endpoint server
(streams/runtime/metrics.py) started in-process on a free loopback port."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from api.health import OPERATOR_PATHS, READY_PATH
from api.metrics import METRICS_PATH
from infra.cli.main import parser
from infra.config.settings import Settings
from streams.ingest.connector import FeedStats
from streams.runtime.metrics import ConnectorMetrics, Served, WorkerMetrics, serve

ROOT = Path(__file__).resolve().parents[2]
URL = re.compile(r"https?://[^\s'\"]+")
# Processes that serve no operator endpoint: nothing to check, nothing to scrape. A new
# long-running service must be added here or serve its endpoints.
NO_ENDPOINT = {"feed": "simulate"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "infra" / "prometheus.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _resolve(value: Any) -> str:
    """A compose value as the container sees it: a required secret (`${VAR:?...}`) as some long
    value, a `${VAR:-default}` as its default."""
    text = re.sub(r"\$\{[A-Z0-9_]+:?\?[^}]*\}", "s" * 40, str(value))
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def _settings(service: dict[str, Any]) -> Settings:
    env = service.get("environment") or {}
    prefix = "ENTASIS_"
    # validated as the environment would be, without reading this process's own environment
    return Settings.model_validate(
        {k.removeprefix(prefix).lower(): _resolve(v) for k, v in env.items() if k.startswith(prefix)}
    )


@dataclass(frozen=True)
class Endpoint:
    process: str  # api, worker, connect
    scheme: str
    host: str  # what the process binds
    port: int


def endpoint(service: dict[str, Any]) -> Endpoint | None:
    """Where the service's process serves `/healthz`, `/readyz`, `/metrics`, from its command (the
    CLI's own parser) and its settings, as `entasis` itself decides; None: it serves none."""
    args = parser().parse_args([_resolve(a) for a in service["command"]])
    settings = _settings(service)
    process = service["command"][0]
    if process == "api":
        tls = args.tls_cert or settings.api.tls_cert
        return Endpoint(process, "https" if tls else "http", args.host or settings.api.host,
                        args.port or settings.api.port)
    if process == "worker":
        worker = settings.worker
        return Endpoint(process, "http", worker.metrics_host, worker.metrics_port) if worker.metrics_port else None
    if process == "connect":
        connector = settings.connector
        return Endpoint(process, "http", connector.metrics_host, connector.metrics_port) \
            if connector.metrics_port else None
    return None


def long_running(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The product's own processes that stay up (built from this repository, restarted)."""
    return {name: s for name, s in compose["services"].items()
            if "build" in s and s.get("restart") == "unless-stopped"}


def health_url(service: dict[str, Any]) -> str:
    assert "healthcheck" in service, f"no health check: {service['command']}"
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    [url] = URL.findall(test[1])
    return url


def test_every_long_running_service_checks_its_own_readiness_on_the_port_it_serves(compose: dict[str, Any]) -> None:
    services = long_running(compose)
    assert {"api", "worker", "connector"} <= set(services)
    for name, service in services.items():
        served = endpoint(service)
        if served is None:
            assert NO_ENDPOINT.get(name) == service["command"][0], f"{name} serves no endpoint: give it one"
            assert "healthcheck" not in service, f"{name} checks a path it does not serve"
            continue
        url = urlsplit(health_url(service))
        # the container's own loopback, the port the process binds, its scheme, its readiness path
        assert url.hostname in {"127.0.0.1", "localhost"}, (name, url)
        assert (url.scheme, url.port, url.path) == (served.scheme, served.port, READY_PATH), (name, url)
        # bound on every interface: the loopback health check and Prometheus on the network both reach it
        assert ipaddress.ip_address(served.host).is_unspecified, (name, served.host)
        check = service["healthcheck"]
        assert check.get("retries", 3) >= 3 and "timeout" in check, name
    assert {name for name in services if endpoint(services[name]) is None} == set(NO_ENDPOINT)
    # the API's path is one its operator endpoints answer (api/health.py)
    assert urlsplit(health_url(services["api"])).path in OPERATOR_PATHS


def fake_connector(up: bool) -> SimpleNamespace:
    feed = SimpleNamespace(feed=SimpleNamespace(symbol="BTC-USD", key="coinbase:BTC-USD"), up=up, stats=FeedStats(),
                           last_trade=None)
    return SimpleNamespace(venue="coinbase", malformed_frames=0, states={"BTC-USD": feed})


def worker_metrics(ready: bool) -> WorkerMetrics:
    metrics = WorkerMetrics()
    metrics.ready = ready  # no database probe: the consumer's check alone decides
    return metrics


SERVERS: dict[str, Callable[[bool], Served]] = {
    "worker": worker_metrics,
    "connector": lambda ready: ConnectorMetrics([fake_connector(ready)]),
}


async def _served(served: Served) -> tuple[Any, int]:
    runner = await serve(served, "127.0.0.1", 0, what="test")
    [(_, port)] = runner.addresses
    return runner, port


@pytest.mark.parametrize("ready", [True, False], ids=["ready", "not-ready"])
@pytest.mark.parametrize("name", sorted(SERVERS))
async def test_the_health_check_command_as_written_passes_on_ready_and_fails_on_503(
    compose: dict[str, Any], name: str, ready: bool
) -> None:
    service = compose["services"][name]
    command = service["healthcheck"]["test"][1]
    url = urlsplit(health_url(service))
    runner, port = await _served(SERVERS[name](ready))
    try:
        # the same shell command, pointed at the in-process server; `python` is this interpreter's
        local = command.replace(f"{url.scheme}://{url.netloc}", f"http://127.0.0.1:{port}")
        assert local != command
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", local, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        await runner.cleanup()
    if ready:
        assert proc.returncode == 0, stderr.decode()
    else:
        assert proc.returncode != 0 and b"503" in stderr, stderr.decode()


def _targets(prometheus: dict[str, Any]) -> list[tuple[dict[str, Any], str, int]]:
    return [
        (job, target.rsplit(":", 1)[0], int(target.rsplit(":", 1)[1]))
        for job in prometheus["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    ]


def test_every_scrape_target_is_a_service_on_the_port_its_settings_give_it(
    compose: dict[str, Any], prometheus: dict[str, Any]
) -> None:
    services = compose["services"]
    scraped = set()
    for job, host, port in _targets(prometheus):
        assert host in services, (job["job_name"], host)
        served = endpoint(services[host])
        assert served is not None, f"{host} serves no /metrics"
        assert (job.get("scheme", "http"), port) == (served.scheme, served.port), (job["job_name"], served)
        assert job.get("metrics_path", METRICS_PATH) == METRICS_PATH
        # Prometheus reaches it over the compose network (not a network namespace of its own)
        assert "network_mode" not in services[host] and "profiles" not in services[host], host
        scraped.add(host)
    # and nothing that serves metrics is left out
    assert scraped == {name for name, s in long_running(compose).items() if endpoint(s) is not None}
    assert {job["job_name"] for job, _, _ in _targets(prometheus)} >= {
        "entasis-api", "entasis-worker", "entasis-connector"}


@pytest.mark.parametrize("name", sorted(SERVERS))
async def test_the_scraped_path_answers_with_the_processes_own_metrics(
    prometheus: dict[str, Any], name: str
) -> None:
    [job] = [job for job, host, _ in _targets(prometheus) if host == name]
    runner, port = await _served(SERVERS[name](True))
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}{job['metrics_path']}"
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    finally:
        await runner.cleanup()
    families = {family.name for family in text_string_to_metric_families(text)}
    prefix = {"worker": "entasis_worker_", "connector": "entasis_connector_"}[name]
    assert any(f.startswith(prefix) for f in families), families
