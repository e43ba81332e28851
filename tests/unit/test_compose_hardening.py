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
    # the API's job (the worker's and the connectors' are checked in test_compose_observability.py)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "entasis-api"]
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


# --- Kafka: SASL/SCRAM on every listener a client reaches, ACLs per service ---------------------


def image_property(env_name: str) -> str:
    """The property the apache/kafka image writes for a KAFKA_* variable (its docker/resources/
    utility: "_" -> ".", "__" -> "_", "___" -> "-", lower case), written here as the oracle."""
    key = env_name.removeprefix("KAFKA_")
    key = re.sub(r"(?<=[^_])_(?=[^_])", ".", key)
    return key.replace("___", "-").replace("__", "_").lower()


def _kafka(compose: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    env = _environment(compose["services"]["kafka"])
    protocols = dict(pair.split(":", 1) for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    binds = {item.split("://")[0]: item.split("://")[1] for item in env["KAFKA_LISTENERS"].split(",")}
    return env, protocols, binds


def test_every_listener_off_the_brokers_loopback_authenticates_with_scram(compose: dict[str, Any]) -> None:
    env, protocols, binds = _kafka(compose)
    for name, bind in binds.items():
        if protocols[name] == "PLAINTEXT":  # only the broker itself may reach these
            assert bind.startswith("127.0.0.1:"), (name, bind)
        else:
            assert protocols[name] == "SASL_PLAINTEXT" or protocols[name] == "SASL_SSL"
    assert protocols["INTERNAL"] == "SASL_PLAINTEXT" and env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "BROKER"
    # each SASL listener has its SCRAM login module, under the property name the image really writes
    jaas = {image_property(k): v for k, v in env.items() if k.endswith("_SASL_JAAS_CONFIG")}
    for name in (n for n, p in protocols.items() if p.startswith("SASL")):
        value = jaas[f"listener.name.{name.lower()}.scram-sha-512.sasl.jaas.config"]
        assert value.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required")
    assert image_property("KAFKA_SASL_ENABLED_MECHANISMS") == "sasl.enabled.mechanisms"
    # the controller is reached on loopback too
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@" + binds["CONTROLLER"]


def test_an_authorizer_allows_nothing_without_an_acl(compose: dict[str, Any]) -> None:
    env, protocols, binds = _kafka(compose)
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    # the super user is the unauthenticated principal, which only the loopback listeners have
    assert env["KAFKA_SUPER_USERS"] == "User:ANONYMOUS"
    assert all(binds[n].startswith("127.0.0.1:") for n, p in protocols.items() if p == "PLAINTEXT")


def _acls(compose: dict[str, Any]) -> tuple[set[str], list[tuple[str, set[str], str]]]:
    """(users created, [(principal, operations, resource)]) of the kafka-acls script, with its loops
    unrolled (`for t in a b; do allow ... "$$t"; done`)."""
    script = compose["configs"]["kafka-acls"]["content"]
    users = set(re.findall(r"^user (\S+) ", script, re.MULTILINE))
    grants: list[tuple[str, set[str], str]] = []
    loop: list[str] = []
    for line in script.splitlines():
        line = line.strip()
        if match := re.match(r"for t in (.+); do$", line):
            loop = match.group(1).split()
        elif line == "done":
            loop = []
        elif line.startswith("allow "):
            for value in loop or [""]:
                text = line.replace('"$$t"', value)
                principal = text.split()[1]
                operations = set(re.findall(r"--operation (\w+)", text))
                resource = re.search(r"--(topic|group|cluster)\s*(\S*)", text)
                assert resource is not None, text
                prefixed = "prefixed:" if "--resource-pattern-type prefixed" in text else ""
                name = resource.group(2).strip("'")
                grants.append((principal, operations, f"{resource.group(1)}:{prefixed}{name}"))
    return users, grants


def _may(grants: list[tuple[str, set[str], str]], user: str, operation: str, topic: str) -> bool:
    for principal, operations, resource in grants:
        if principal != user or operation not in operations:
            continue
        kind, _, pattern = resource.partition(":")
        if kind != "topic":
            continue
        if pattern.startswith("prefixed:") and topic.startswith(pattern.removeprefix("prefixed:")):
            return True
        if pattern in (topic, "*"):
            return True
    return False


def test_each_service_has_its_own_kafka_user_with_only_what_it_needs(compose: dict[str, Any]) -> None:
    from schemas import topics

    services = compose["services"]
    users, grants = _acls(compose)
    clients = {name: _environment(s) for name, s in services.items()
               if "ENTASIS_KAFKA_BOOTSTRAP" in _environment(s)}
    assert set(clients) >= {"init", "worker", "api", "connector", "feed", "operator"}
    for name, env in clients.items():
        assert env["ENTASIS_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env["ENTASIS_KAFKA_USERNAME"] in users, name
        assert REQUIRED.match(env["ENTASIS_KAFKA_PASSWORD"]), name
    role = {name: env["ENTASIS_KAFKA_USERNAME"] for name, env in clients.items()}
    assert len({role["worker"], role["api"], role["connector"], role["init"], role["operator"]}) == 5
    assert role["feed"] == role["connector"]
    assert {p for p, _, _ in grants} <= users

    names = {spec.name for spec in topics.ALL_TOPICS}
    api, worker, feed, operator = role["api"], role["worker"], role["feed"], role["operator"]
    # orders only from the API, set_balance only from the operator: finding 7 at the broker too
    assert _may(grants, api, "Write", topics.PF_COMMANDS.name)
    assert not _may(grants, api, "Write", topics.PF_ADMIN.name)
    assert _may(grants, operator, "Write", topics.PF_ADMIN.name)
    assert [u for u in users if _may(grants, u, "Write", topics.PF_ADMIN.name)] == [operator]
    assert [u for u in users if _may(grants, u, "Write", topics.PF_EVENTS.name)] == [worker]
    assert not any(_may(grants, u, "Write", topics.PF_COMMANDS.name) for u in users - {api})
    # the feeds write raw market data and nothing the worker derives
    assert _may(grants, feed, "Write", topics.TRADES.name) and _may(grants, feed, "Write", topics.BOOK.name)
    assert not any(_may(grants, feed, "Write", n) for n in names - {
        topics.TRADES.name, topics.BOOK.name, topics.QUALITY.name, topics.DEAD_LETTER.name})
    # the worker reads every topic it consumes and writes every topic it derives
    for name in names:
        assert _may(grants, worker, "Read", name), name
    derived = {*(s.name for s in topics.CANDLES.values()), topics.BOOK_TOP.name, topics.RISK.name,
               topics.PREDICTIONS.name, topics.VWAP.name, topics.PF_EVENTS.name, topics.QUALITY.name,
               topics.DEAD_LETTER.name}
    assert all(_may(grants, worker, "Write", n) for n in derived)
    assert not _may(grants, worker, "Write", topics.TRADES.name)
    # the host's user reads market data and analytics, writes nothing, sees no portfolio
    external = "entasis-external"
    assert not any(_may(grants, external, "Write", n) for n in names)
    assert not any(_may(grants, external, "Read", n) for n in names if n.startswith("pf."))
    # the admin key reaches the worker (it checks) and the operator (it signs), never the API
    holders = {n for n, env in clients.items() if "ENTASIS_PORTFOLIO_ADMIN_KEY" in env}
    assert holders == {"worker", "operator"}
