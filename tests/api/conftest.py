"""One embedded database for every API test in this process (chdb opens one engine path per
process), shared through session fixtures; tests keep apart by using their own symbols.

Every test client is authenticated as an account of its own (`api` fixture: a valid token with all
scopes), so tests never share a rate-limit budget; `anon` is a client without credentials, from
an address of its own for the same reason.

Set ENTASIS_TEST_CLICKHOUSE_URL (e.g. http://127.0.0.1:8123) to run against a ClickHouse
server instead; a throwaway database is created there and dropped afterwards."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.auth import issue_token
from api.key_repository import ApiKeyRepository
from api.portfolio_service import LocalPortfolioBus
from api.principal import KNOWN_SCOPES
from infra.config.api import ApiSettings
from infra.store.clickhouse import client_for_url
from infra.store.migrate import apply_migrations
from infra.store.repository import MarketRepository
from infra.store.risk_repository import RiskRepository

TEST_JWT_SECRET = "tests-only-hs256-secret-0123456789abcdef"  # 40 bytes: passes the length rule


def test_api_settings(**overrides: object) -> ApiSettings:
    """Settings for test apps, independent of the environment and any .env file."""
    values: dict[str, object] = {"jwt_secret": SecretStr(TEST_JWT_SECRET), "symbols_cache_seconds": 0}
    values.update(overrides)
    return ApiSettings(**values)


test_api_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


_account_counter = itertools.count(1)


def new_account(prefix: str = "acct") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_account_counter)}"


def token_for(
    account: str,
    scopes: tuple[str, ...] | list[str] = KNOWN_SCOPES,
    settings: ApiSettings | None = None,
    **kwargs: object,
) -> str:
    return issue_token(settings or test_api_settings(), account, scopes, **kwargs)  # type: ignore[arg-type]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


_address_counter = itertools.count(1)


def new_address() -> str:
    """An address no other test client uses (IPv6 documentation range), so each unauthenticated
    client has a rate-limit budget of its own."""
    return f"2001:db8::{next(_address_counter):x}"


NS = 10**9
MINUTE = 60 * NS
HOUR = 60 * MINUTE
DAY = 24 * HOUR

TRADE_COLUMNS = ["venue", "symbol", "trade_id", "price", "size", "side", "event_ts", "recv_ts"]
CANDLE_COLUMNS = [
    "venue", "symbol", "interval", "open_ts", "open", "high", "low", "close", "volume",
    "trades", "first_trade_id", "last_trade_id", "revision", "is_final", "event_ts", "version",
]  # fmt: skip
QUALITY_COLUMNS = ["event_id", "venue", "symbol", "kind", "detail", "event_ts", "recv_ts"]


@dataclass(frozen=True)
class TradeRow:
    venue: str
    symbol: str
    trade_id: str
    price: Decimal
    size: Decimal
    ts_ns: int


@dataclass(frozen=True)
class CandleRow:
    venue: str
    symbol: str
    interval: str
    open_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    revision: int = 0
    is_final: bool = True


class Market:
    """Writes rows the way the sink does (column names, Decimal, integer-nanosecond times)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def trades(self, rows: list[TradeRow]) -> None:
        self.client.insert(
            "trades",
            [[r.venue, r.symbol, r.trade_id, r.price, r.size, "buy", r.ts_ns, r.ts_ns + 1000] for r in rows],
            column_names=TRADE_COLUMNS,
        )

    def candles(self, rows: list[CandleRow]) -> None:
        self.client.insert(
            "candles",
            [
                [
                    r.venue, r.symbol, r.interval, r.open_ns, r.open, r.high, r.low, r.close, r.volume,
                    1, "first", "last", r.revision, int(r.is_final), r.open_ns + 1, r.revision * 2 + int(r.is_final),
                ]
                for r in rows
            ],
            column_names=CANDLE_COLUMNS,
        )  # fmt: skip

    def quality(self, venue: str, symbol: str, kind: str, ts_ns: int) -> None:
        self.client.insert(
            "quality_events",
            [[uuid.uuid4().hex, venue, symbol, kind, "{}", ts_ns, ts_ns]],
            column_names=QUALITY_COLUMNS,
        )


@pytest.fixture(scope="session")
def db_location(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(url, database) of the test database."""
    external = os.environ.get("ENTASIS_TEST_CLICKHOUSE_URL")
    if external:
        database = f"entasis_api_test_{uuid.uuid4().hex[:8]}"
        yield external, database
        client_for_url(external).command(f"DROP DATABASE IF EXISTS {database}")
    else:
        yield "chdb://" + str(tmp_path_factory.mktemp("api-chdb")), "entasis"


@pytest.fixture(scope="session")
def client_factory(db_location: tuple[str, str]) -> Callable[[], Client]:
    url, database = db_location
    return lambda: client_for_url(url, database=database)


@pytest.fixture(scope="session")
def db(client_factory: Callable[[], Client]) -> Iterator[Client]:
    client = client_factory()
    apply_migrations(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def market(db: Client) -> Market:
    return Market(db)


@pytest.fixture(scope="session")
def repository(db: Client, client_factory: Callable[[], Client]) -> Iterator[MarketRepository]:
    # No symbol cache: each test inserts its own symbol and queries it at once.
    repo = RiskRepository(client_factory, symbols_ttl_s=0)  # what the served app builds: market + analysis
    yield repo
    repo.close()


@pytest.fixture(scope="session")
def key_repository(db: Client, client_factory: Callable[[], Client]) -> Iterator[ApiKeyRepository]:
    repo = ApiKeyRepository(client_factory)
    yield repo
    repo.close()


@pytest.fixture(scope="session")
def app(repository: MarketRepository, key_repository: ApiKeyRepository) -> FastAPI:
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository)
    app.state.portfolio_bus = LocalPortfolioBus()  # the in-process bus: no broker in the API tier
    return app


@pytest.fixture
def account() -> str:
    """The account the `api` client is authenticated as (new for every test)."""
    return new_account()


@pytest.fixture
def api(app: FastAPI, account: str) -> Iterator[TestClient]:
    with TestClient(app, headers=bearer(token_for(account))) as client:
        yield client


@pytest.fixture
def anon(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, client=(new_address(), 50000)) as client:
        yield client


_symbol_counter = itertools.count(1)


@pytest.fixture
def new_symbol() -> Callable[[str], str]:
    """A symbol no other test uses: `new_symbol("PX")` -> `PX7-USDT`."""

    def make(prefix: str) -> str:
        return f"{prefix}{next(_symbol_counter)}-USDT"

    return make


def canon(value: Decimal) -> str:
    """The expected wire form of a decimal (8 places, the store's scale), computed
    independently of api.models."""
    return f"{value:.8f}"


def error_of(response: object) -> dict[str, object]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]  # type: ignore[attr-defined]
    return error  # type: ignore[no-any-return]
