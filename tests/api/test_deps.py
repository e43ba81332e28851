"""Where the routes' dependencies come from (api/deps.py, fed by the lifespan in api/app.py): the
portfolio bus a served app builds when it starts and closes when it stops, a bus given to the app
used as it is, and a clean 503 where there is none."""

from __future__ import annotations

import socket

from fastapi.testclient import TestClient

from api.app import API_PREFIX, create_app
from api.key_repository import ApiKeyRepository
from api.portfolio_repository import KafkaPortfolioBus
from api.portfolio_service import LocalPortfolioBus
from infra.config.settings import ClickHouseSettings, Settings
from infra.store.repository import MarketRepository
from tests.api.conftest import bearer, error_of, new_account, test_api_settings, token_for

BALANCE = f"{API_PREFIX}/portfolio/balance"


def _closed_port() -> int:
    """A local port nothing listens on: a broker there refuses every connection at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_served_app_builds_its_bus_at_start_and_answers_503_while_the_broker_is_down(
    db_location: tuple[str, str],
) -> None:
    url, database = db_location
    settings = Settings(clickhouse=ClickHouseSettings(url=url, database=database),
                        kafka_bootstrap=f"127.0.0.1:{_closed_port()}")
    app = create_app(settings=settings, api_settings=test_api_settings())
    assert app.state.portfolio_bus is None  # nothing is built before the app starts
    with TestClient(app, headers=bearer(token_for(new_account()))) as client:
        bus = app.state.portfolio_bus
        assert isinstance(bus, KafkaPortfolioBus)
        response = client.get(BALANCE)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        error = error_of(response)
        assert error["code"] == "UNAVAILABLE" and "portfolio bus" in str(error["details"])
        assert client.get(BALANCE).status_code == 503
        assert app.state.portfolio_bus is bus  # built once, not per request
    assert app.state.portfolio_bus is None  # closed and dropped on shutdown


class _ClosableBus(LocalPortfolioBus):
    closed = False

    async def close(self) -> None:
        self.closed = True


def test_a_bus_given_to_the_app_is_used_and_never_closed(
    repository: MarketRepository, key_repository: ApiKeyRepository
) -> None:
    bus = _ClosableBus()
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository,
                     portfolio_bus=bus)
    with TestClient(app, headers=bearer(token_for(new_account()))) as client:
        response = client.get(BALANCE)
        assert response.status_code == 200, response.text
        assert response.json()["balance"] == "100000.00000000"  # the default starting balance
        assert app.state.portfolio_bus is bus
    assert app.state.portfolio_bus is bus and not bus.closed


def test_an_app_without_a_bus_answers_503(repository: MarketRepository, key_repository: ApiKeyRepository) -> None:
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository)
    with TestClient(app, headers=bearer(token_for(new_account()))) as client:
        response = client.get(BALANCE)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert error_of(response)["details"] == {"reason": "portfolio bus not ready"}
