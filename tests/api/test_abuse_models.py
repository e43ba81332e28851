"""Models on abusive values: response models on the largest values the store holds (issue 18,
item 4), and an order's size through the API (item 1).

The store's Decimal(38, 8) holds up to 30 integer digits; formatting such a value at 8 places
needs up to 38 significant digits, and Python's default decimal context keeps 28. So a price at
or above 1e20 made `format_decimal` raise InvalidOperation and every read of it a 500. The
oracles are the values written out by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from decimal import Decimal as D

import pytest
from fastapi.testclient import TestClient

from api.app import API_PREFIX, create_app
from api.key_repository import ApiKeyRepository
from api.models import PriceResponse, format_decimal
from api.portfolio_service import LocalPortfolioBus
from infra.store.repository import MarketRepository
from streams.core.portfolio import AccountDefaults
from tests.api.conftest import Market, TradeRow, bearer, error_of, new_account, test_api_settings, token_for

CASES = [
    ("1", "1.00000000"),
    ("99999999999999999999.99999999", "99999999999999999999.99999999"),  # 28 digits: fits the default context
    ("123456789012345678901.5", "123456789012345678901.50000000"),  # 29 digits
    ("999999999999999999999999999999.99999999", "999999999999999999999999999999.99999999"),  # the store's largest
    ("-100000000000000000000000", "-100000000000000000000000.00000000"),  # a pnl of 1e23 below zero
]


@pytest.mark.parametrize(
    "value, text",
    CASES,
)
def test_format_decimal_writes_every_stored_value_at_8_places(value: str, text: str) -> None:
    assert format_decimal(Decimal(value)) == text


def test_format_decimal_does_not_depend_on_the_callers_context() -> None:
    with localcontext(prec=5):
        assert format_decimal(Decimal("64000.12345678")) == "64000.12345678"


def test_a_price_response_with_the_largest_stored_price_serialises() -> None:
    response = PriceResponse(
        symbol="BTC-USDT",
        price=Decimal("999999999999999999999999999999.99999999"),
        timestamp=datetime(2024, 8, 9, tzinfo=UTC),
        volume=Decimal("1e25"),
        exchange="binance",
    )
    body = response.model_dump(mode="json")
    assert body["price"] == "999999999999999999999999999999.99999999"
    assert body["volume"] == "10000000000000000000000000.00000000"


# --- an order's size through the API (issue 18, item 1) --------------------------------------------------


@pytest.fixture
def orders(
    repository: MarketRepository, key_repository: ApiKeyRepository, market: Market, new_symbol: Callable[[str], str]
) -> Iterator[tuple[TestClient, str]]:
    """A client of a fresh account, with the portfolio agent's decisions in process, and a symbol
    whose latest trade is at 60000."""
    symbol = new_symbol("AB")
    market.trades([TradeRow("binance", symbol, "t1", D("60000"), D("1"), time.time_ns())])
    app = create_app(
        repository=repository,
        api_settings=test_api_settings(),
        key_repository=key_repository,
        portfolio_bus=LocalPortfolioBus(AccountDefaults()),
    )
    with TestClient(app, headers=bearer(token_for(new_account()))) as client:
        yield client, symbol


def test_a_size_with_20_integer_digits_is_refused_for_margin_not_lost(orders: tuple[TestClient, str]) -> None:
    """It passed validation and crashed the agent's margin arithmetic: the client saw a 503 "retry is
    safe" and every retry crashed it again. Now it is an answer: its margin is over the balance."""
    client, symbol = orders
    r = client.post(
        f"{API_PREFIX}/portfolio/positions", json={"symbol": symbol, "size": "99999999999999999999", "type": "long"}
    )
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["code"] == "PORT_001"
    assert error["details"] == {
        "required_margin": "5999999999999999999940000.00000000",  # by hand
        "free_balance": "100000.00000000",
    }
    ok = client.post(f"{API_PREFIX}/portfolio/positions", json={"symbol": symbol, "size": "1", "type": "long"})
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize("size", ["1e400000000", "100000000000000000000"])
def test_a_size_beyond_the_schema_is_a_bad_request(orders: tuple[TestClient, str], size: str) -> None:
    client, symbol = orders
    r = client.post(f"{API_PREFIX}/portfolio/positions", json={"symbol": symbol, "size": size, "type": "long"})
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == "BAD_REQUEST"
