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
from api.ws import MarketHub
from infra.store.repository import MarketRepository
from streams.core.portfolio import AccountDefaults
from tests.api.conftest import (
    CandleRow,
    Market,
    TradeRow,
    bearer,
    error_of,
    new_account,
    test_api_settings,
    token_for,
)
from tests.api.test_ws_support import recv_json, send_json, serve

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


# --- the largest stored price through the served reads (issue 18, item 4) ------------------------------

LARGEST = "999999999999999999999999999999.99999999"  # Decimal(38, 8)'s largest: 30 integer digits


def test_the_largest_stored_price_is_served_by_price_history_and_trades(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    """Through the real app and store: each read answers 200 with the value written out in full
    (it was a 500 when formatting used the 28-digit default context)."""
    symbol = new_symbol("BIG")
    ts = 1_723_161_600 * 10**9 + 5 * 10**9  # 2024-08-09T00:00:05Z
    market.trades([TradeRow("binance", symbol, "t1", D(LARGEST), D(LARGEST), ts)])
    market.candles([CandleRow("binance", symbol, "1m", ts - 5 * 10**9, D(LARGEST), D(LARGEST), D("0.00000001"),
                              D(LARGEST), D(LARGEST))])  # fmt: skip
    price = api.get(f"{API_PREFIX}/market/price/{symbol}")
    assert price.status_code == 200, price.text
    assert (price.json()["price"], price.json()["volume"]) == (LARGEST, LARGEST)
    history = api.get(f"{API_PREFIX}/market/history/{symbol}", params={"interval": "1m"})
    assert history.status_code == 200, history.text
    assert history.json()["data"][0] | {"timestamp": None} == {
        "timestamp": None, "open": LARGEST, "high": LARGEST, "low": "0.00000001", "close": LARGEST, "volume": LARGEST,
    }  # fmt: skip
    trades = api.get(f"{API_PREFIX}/market/trades/{symbol}")
    assert trades.status_code == 200, trades.text
    assert [(t["price"], t["size"]) for t in trades.json()["data"]] == [(LARGEST, LARGEST)]


async def test_the_largest_stored_price_reaches_websocket_subscribers(
    repository: MarketRepository, key_repository: ApiKeyRepository, new_symbol: Callable[[str], str]
) -> None:
    """A subscriber of a symbol trading at the largest price gets it, and is not closed (1011)."""
    symbol = new_symbol("BIGW")
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository)
    async with serve(app, MarketHub()) as served:
        served.hub.publish_trades("binance", symbol, D(LARGEST), 1_723_161_600 * 10**9, D(LARGEST))
        async with served.connect(token_for(new_account("big"))) as ws:
            await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [symbol]})
            assert (await recv_json(ws))["type"] == "subscribed"
            first = await recv_json(ws)
            assert (first["price"], first["volume"]) == (LARGEST, LARGEST)
            served.hub.publish_trades("binance", symbol, D("1"), 1_723_161_601 * 10**9, D(LARGEST))
            assert (await recv_json(ws))["price"] == "1.00000000"  # still open, still served
