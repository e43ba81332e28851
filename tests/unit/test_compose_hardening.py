"""Issue 18, finding 12: docker-compose.yml had Redis without a password, one ClickHouse user
with access management for API and worker, an allowlist default of 172.16.0.0/12 (every
container of every Docker network) and a plaintext Kafka listener on the host. This reads the
file as compose does (YAML) and checks each property; it cannot start the stack."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|SIGNING_KEY|REDISCLI_AUTH")
# ${VAR:?message} or ${VAR?message}: required, no value in the file
REQUIRED = re.compile(r"^\$\{[A-Z0-9_]+:?\?[^}]*\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {str(k): str(v) for k, v in env.items()}


def test_no_secret_has_a_value_or_a_default_in_the_file(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key):
                checked += 1
                assert REQUIRED.match(value), f"{name}.{key} = {value!r}: must be ${{VAR:?...}}"
    assert checked >= 8  # admin, worker (x3 services), api, jwt, signing (x2), redis
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"\$\{[A-Z_]*(PASSWORD|SECRET|SIGNING_KEY)[A-Z_]*:-", text)  # no `:-default` for a secret


def test_redis_requires_a_password_and_the_api_uses_it(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--requirepass" in command and "$$REDIS_PASSWORD" in command
    url = _environment(compose["services"]["api"])["ENTASIS_API_REDIS_URL"]
    assert re.match(r"^redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/0$", url)


def test_no_plaintext_listener_is_published(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = _environment(kafka)
    protocols = dict(pair.split(":", 1) for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    ports = {listener.rsplit(":", 1)[1]: listener.split("://")[0] for listener in env["KAFKA_LISTENERS"].split(",")}
    published = {str(p).rsplit(":", 1)[-1] for p in kafka.get("ports", [])}
    assert published, "the host listener is expected (tests use it)"
    for port in published:
        listener = ports[port]
        assert protocols[listener] in {"SASL_PLAINTEXT", "SASL_SSL"}, (listener, protocols[listener])
        assert protocols[listener] != "PLAINTEXT"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"].startswith("SCRAM-")
    for port in published:  # loopback only
        assert any(str(p).startswith(f"127.0.0.1:{port}:") for p in kafka["ports"])


def test_api_and_worker_use_separate_users_without_access_management(compose: dict[str, Any]) -> None:
    services = compose["services"]
    admin = _environment(services["clickhouse"])["CLICKHOUSE_USER"]
    users = {name: _environment(services[name])["ENTASIS_CLICKHOUSE_USER"] for name in ("api", "worker")}
    assert users["api"] != users["worker"] and admin not in users.values()
    script = compose["configs"]["clickhouse-users"]["content"]
    grants = {line.strip() for line in script.splitlines() if line.strip().startswith("GRANT")}
    assert grants == {
        f"GRANT SELECT, INSERT ON entasis.* TO {users['worker']};",
        f"GRANT SELECT ON entasis.* TO {users['api']};",
        f"GRANT INSERT ON entasis.api_keys TO {users['api']};",
    }
    # the admin's password reaches only the database and the init (migrations) service
    holders = {
        name
        for name, s in services.items()
        if "ENTASIS_CLICKHOUSE_PASSWORD}" in str(_environment(s).get("ENTASIS_CLICKHOUSE_PASSWORD", ""))
        and "${ENTASIS_CLICKHOUSE_PASSWORD" in str(_environment(s).get("ENTASIS_CLICKHOUSE_PASSWORD", ""))
    }
    assert holders == {"init"}


def test_allowlist_default_names_the_gateway_and_prometheus_not_all_docker_networks(compose: dict[str, Any]) -> None:
    value = _environment(compose["services"]["api"])["ENTASIS_API_ALLOWLIST"]
    default = re.fullmatch(r"\$\{ENTASIS_API_ALLOWLIST:-([^}]*)\}", value)
    assert default is not None
    networks = [ipaddress.ip_network(n) for n in default.group(1).split(",")]
    assert all(n.num_addresses == 1 for n in networks), networks  # single hosts only
    subnet = compose["networks"]["default"]["ipam"]["config"][0]
    gateway = ipaddress.ip_address(subnet["gateway"])
    prometheus = ipaddress.ip_address(compose["services"]["prometheus"]["networks"]["default"]["ipv4_address"])
    assert {n.network_address for n in networks} == {gateway, prometheus, ipaddress.ip_address("127.0.0.1")}


def test_health_checks_use_readyz_and_prometheus_scrapes_metrics(compose: dict[str, Any]) -> None:
    api_check = " ".join(compose["services"]["api"]["healthcheck"]["test"])
    assert "/readyz" in api_check and "/openapi.json" not in api_check
    prometheus = compose["services"]["prometheus"]
    assert any(str(v).startswith("./infra/prometheus.yml:") for v in prometheus["volumes"])
    config = yaml.safe_load((ROOT / "infra" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert (job["metrics_path"], job["scheme"], job["static_configs"][0]["targets"]) == (
        "/metrics",
        "https",
        ["api:8443"],
    )
    assert not job["tls_config"].get("insecure_skip_verify", False)


def test_the_optional_grafana_needs_its_password_and_its_dashboard_reads_metrics_the_api_exports() -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from api.metrics import ApiMetrics, AppStateCollector

    grafana = yaml.safe_load((ROOT / "infra" / "grafana" / "docker-compose.grafana.yml").read_text())
    env = _environment(grafana["services"]["grafana"])
    assert REQUIRED.match(env["GF_SECURITY_ADMIN_PASSWORD"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"

    # what the API exposes: its own instruments plus the app-state collector (names the oracle
    # reads from the exposition, not from the dashboard)
    metrics = ApiMetrics(CollectorRegistry())
    metrics.requests.labels("/x", "GET", "200").inc()
    metrics.latency.labels("/x").observe(0.01)
    metrics.rate_limited.inc()
    state = SimpleNamespace(
        market_hub=SimpleNamespace(sessions=(), updates=0, slow_closed=0),
        market_feed=SimpleNamespace(state="consuming", bad_messages=0),
    )
    metrics.registry.register(AppStateCollector(state))
    exported = {
        sample.name for family in text_string_to_metric_families(metrics.render().decode()) for sample in family.samples
    }

    dashboard = json.loads((ROOT / "infra" / "grafana" / "dashboards" / "entasis-api.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"entasis_[a-z_]+", target["expr"])
    }
    assert used and used <= exported, used - exported
