"""Property-based conformance over the whole OpenAPI schema (schemathesis, every built-in check):
no 5xx, no response that breaks its documented schema, status codes, headers or content types,
and protected operations really refuse requests without credentials. Runs in-process against the
real app and the embedded database, authenticated with both documented schemes (a token and an
API key of one account)."""

from __future__ import annotations

from decimal import Decimal

import pytest
import schemathesis
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, generate_key
from api.portfolio_service import LocalPortfolioBus
from api.principal import KNOWN_SCOPES
from infra.store.repository import MarketRepository
from infra.store.risk_repository import RiskRepository
from schemas.codecs.risk import table as risk_table
from schemas.events import Interval
from schemas.risk import RiskEstimate, RiskMethod
from tests.api.conftest import HOUR, MINUTE, NS, Market, TradeRow, new_account, test_api_settings, token_for

T0 = 1_723_161_600 * NS
ACCOUNT = new_account("fuzz")
KEY = generate_key()


def _not_ready() -> Client:
    raise AssertionError("the session database is attached by the _attach_database fixture")


CONFIG = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"BearerJWT": {"bearer": token_for(ACCOUNT)}, "ApiKey": {"api_key": KEY.key}}},
        "operations": [
            {
                # `start < end` and "at most 5000 candles" relate two parameters, which a schema cannot
                # say: a schema-valid pair may rightly get 400 BAD_REQUEST here (never a 5xx or a 422).
                "include-path": "/api/v1/market/history/{symbol}",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404", "429"]}
                },
            },
            {
                # the same for the paged records: `start < end` relates two parameters, and a schema's
                # date-time has years before 1970 that the store cannot hold (400, never a 5xx or a 422)
                "include-path-regex": "^/api/v1/market/(trades|quality)/",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404", "429"]}
                },
            },
            {
                # an order that is well formed may still not fit the balance or the limits:
                # 422 PORT_001 / PORT_002 are the contract's answers (docs/decisions.md), not a rejection of the shape
                "include-path": "/api/v1/portfolio/positions",
                "include-method": "POST",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]}
                },
            },
            {
                # docs/decisions.md: a model that is still warming up answers 503 AI_002 with Retry-After, and one
                # whose checkpoint could not be loaded 500 AI_001: contract answers, not server faults.
                # (The prediction tests in test_prediction_api.py check those codes one by one.)
                "include-path-regex": "^/api/v1/analysis/prediction/",
                "checks": {"not_a_server_error": {"enabled": False}},
            },
            {
                # the same for a backtest's period: `start < end`, at most 366 days
                "include-path": "/api/v1/analysis/risk/{symbol}/backtest",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404", "429"]}
                },
            },
        ],
    }
)

# Built at import: schemathesis reads the schema while collecting (its fixture-based loader does not
# work with pytest 9). The database, a session fixture, is attached to the app before any test runs.
fuzz_app = create_app(
    repository=RiskRepository(_not_ready),  # the repository the served app builds
    key_repository=ApiKeyRepository(_not_ready),
    api_settings=test_api_settings(),
)
fuzz_app.state.portfolio_bus = LocalPortfolioBus()  # portfolio commands fold in process: no broker here
schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=CONFIG)


@pytest.fixture(scope="module", autouse=True)
def _attach_database(repository: MarketRepository, key_repository: ApiKeyRepository, market: Market) -> None:
    fuzz_app.state.repository = repository
    fuzz_app.state.key_repository = key_repository
    if key_repository.get(KEY.key_id) is None:
        key_repository.insert(ApiKeyRecord(KEY.key_id, ACCOUNT, KEY.key_hash, KNOWN_SCOPES))
    # Served symbols with some history, so generated requests reach real candles and prices too.
    for symbol in ("BTC-USDT", "ETH-USDT"):
        market.trades(
            [
                TradeRow("binance", symbol, str(i), Decimal(100 + i), Decimal("0.5"), T0 + i * 7 * MINUTE)
                for i in range(60)
            ]
            + [TradeRow("okx", symbol, "x", Decimal("99"), Decimal("1"), T0 + 5 * HOUR)]
        )
    # ...and a risk estimate for every method and interval, so the risk route answers with data;
    # without one it rightly says 503 (not enough data yet), which is no server fault to find here
    repository_client = repository._client()
    repository_client.insert_arrow("risk_estimates", risk_table([
        RiskEstimate(venue=venue, symbol=symbol, interval=interval, method=method, event_ts_ns=T0 + HOUR,
                     recv_ts_ns=T0 + HOUR, price=Decimal("100"), var_95=Decimal("3.5"),
                     expected_shortfall=Decimal("4.25"), volatility=Decimal("0.5"), window=2160)
        for symbol in ("BTC-USDT", "ETH-USDT") for venue in ("binance", "okx")
        for method in RiskMethod for interval in Interval
    ]))


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_conformance(case: schemathesis.Case) -> None:
    case.call_and_validate()
