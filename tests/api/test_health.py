"""`/healthz` and `/readyz`: no credentials, no rate limit, behind the allowlist; readiness red
while the database query fails and green again once it answers, with every check in the body."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import OperationalError
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.health import Readiness
from api.key_repository import ApiKeyRepository
from api.ratelimit import MemoryRateLimiter
from api.ws import MarketFeed, MarketHub
from infra.config.settings import Settings
from infra.store.repository import MarketRepository, StoreUnavailable
from tests.api.conftest import bearer, error_of, new_account, new_address, test_api_settings, token_for


class SwitchableRepository(MarketRepository):
    """A market repository whose database is up or down at the test's word: down, every query
    raises StoreUnavailable, as the real one does when ClickHouse is unreachable."""

    def __init__(self) -> None:
        super().__init__(self._no_client, symbols_ttl_s=0)
        self.down = False
        self.queries = 0

    @staticmethod
    def _no_client() -> Any:
        raise AssertionError("the fake never opens a client")

    def _rows(self, sql: str, parameters: dict[str, Any]) -> list[Sequence[Any]]:
        self.queries += 1
        if self.down:
            raise StoreUnavailable("connection refused")
        return [(1,)]


def _app(repository: MarketRepository, **settings: Any) -> FastAPI:
    limiter = settings.pop("rate_limiter", None)
    return create_app(
        repository=repository,
        api_settings=test_api_settings(**settings),
        key_repository=ApiKeyRepository(lambda: None),  # type: ignore[arg-type,return-value]  # never queried
        rate_limiter=limiter,
    )


@pytest.fixture
def fake_repository() -> SwitchableRepository:
    return SwitchableRepository()


@pytest.fixture
def client(fake_repository: SwitchableRepository) -> Iterator[TestClient]:
    with TestClient(_app(fake_repository), client=(new_address(), 40000)) as c:
        yield c


def test_healthz_is_ok_without_credentials_and_without_the_database(
    client: TestClient, fake_repository: SwitchableRepository
) -> None:
    fake_repository.down = True  # liveness must not depend on the database
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]  # still inside RequestContextMiddleware
    assert fake_repository.queries == 0


def test_readyz_is_red_while_the_database_fails_and_green_after(
    client: TestClient, fake_repository: SwitchableRepository
) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "checks": {
            "database": {"ok": True, "state": "reachable"},
            "market_feed": {"ok": True, "state": "disabled"},  # a test app runs no feed
        },
    }
    fake_repository.down = True
    red = client.get("/readyz")
    assert red.status_code == 503
    assert red.json()["status"] == "unavailable"
    assert red.json()["checks"]["database"] == {"ok": False, "state": "unreachable"}
    assert "connection refused" not in red.text  # reasons are logged, not sent
    fake_repository.down = False
    assert client.get("/readyz").status_code == 200
    assert fake_repository.queries == 3  # one query per probe, no cached answer


def test_readyz_is_red_when_the_real_repository_cannot_connect() -> None:
    # The real translation path: clickhouse-connect's OperationalError -> StoreUnavailable.
    def refuse() -> Any:
        raise OperationalError("connection refused")

    with TestClient(_app(MarketRepository(refuse))) as c:
        response = c.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == {"ok": False, "state": "unreachable"}


def test_readyz_is_green_against_the_test_database(repository: MarketRepository) -> None:
    with TestClient(_app(repository)) as c:
        response = c.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["database"]["state"] == "reachable"


def test_health_paths_sit_behind_the_allowlist(fake_repository: SwitchableRepository) -> None:
    app = _app(fake_repository, allowlist="10.0.0.0/8")
    with TestClient(app, client=("192.0.2.7", 1)) as outside:
        for path in ("/healthz", "/readyz", "/metrics"):
            refused = outside.get(path)
            assert refused.status_code == 403, path
            assert error_of(refused)["code"] == "FORBIDDEN"
    with TestClient(app, client=("10.1.2.3", 1)) as inside:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert inside.get(path).status_code == 200, path


def test_health_paths_spend_no_rate_limit_budget(fake_repository: SwitchableRepository) -> None:
    app = _app(fake_repository, rate_limiter=MemoryRateLimiter("1/minute"))
    with TestClient(app, client=(new_address(), 1)) as c:
        for _ in range(5):
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
        # The address's one request of the minute is still there: the probes did not take it.
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/openapi.json").status_code == 429


def test_health_paths_ignore_credentials(fake_repository: SwitchableRepository) -> None:
    # A probe configured with a stale token still learns whether the process is up.
    with TestClient(_app(fake_repository), headers=bearer("not-a-token")) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/api/v1/market/price/BTC-USDT").status_code == 401  # the gate still applies elsewhere
    with TestClient(_app(fake_repository), headers=bearer(token_for(new_account()))) as c:
        assert c.get("/healthz").status_code == 200


def test_health_paths_answer_only_get_and_head(client: TestClient) -> None:
    assert client.head("/healthz").status_code == 200
    refused = client.post("/healthz")
    assert refused.status_code == 405
    assert error_of(refused)["code"] == "METHOD_NOT_ALLOWED"


async def test_a_hung_database_query_is_a_timeout_not_a_hung_probe() -> None:
    release = threading.Event()

    def hang(_repository: Any) -> None:
        release.wait(30)  # released below; the bound only keeps a broken test from leaking a thread

    readiness = Readiness(SimpleNamespace(repository=object()), feed_expected=False, ping=hang, timeout_s=0.05)
    try:
        checks = await readiness.checks()
    finally:
        release.set()
    assert [(c.name, c.ok, c.state) for c in checks] == [
        ("database", False, "timeout"),
        ("market_feed", True, "disabled"),
    ]


async def test_readiness_needs_a_consuming_feed_when_the_app_runs_one() -> None:
    state = SimpleNamespace(repository=SwitchableRepository(), market_feed=None)
    readiness = Readiness(state, feed_expected=True)

    async def verdict() -> tuple[int, bool, str]:
        checks = await readiness.checks()
        feed = checks[1]
        return sum(not c.ok for c in checks), feed.ok, feed.state

    assert await verdict() == (1, False, "stopped")  # not started yet, or stopped
    state.market_feed = SimpleNamespace(state="connecting")
    assert await verdict() == (1, False, "connecting")
    state.market_feed = SimpleNamespace(state="consuming")
    assert await verdict() == (0, True, "consuming")


async def test_market_feed_state_follows_its_task() -> None:
    # Nothing listens on port 1: the feed stays in its connect-and-retry loop. State is read
    # without awaiting in between, so the retry loop cannot change it under the test.
    feed = MarketFeed(Settings(kafka_bootstrap="127.0.0.1:1"), MarketHub())  # type: ignore[call-arg]
    assert feed.state == "stopped"
    await feed.start()
    try:
        assert feed.state == "connecting"
        feed.assigned.set()  # what _run does once every partition is assigned and positioned
        assert feed.state == "consuming"
    finally:
        await feed.stop()
    assert feed.state == "stopped"
