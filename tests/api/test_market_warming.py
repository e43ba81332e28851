"""A symbol the feed has delivered but the store does not hold yet: 503 "warming up" with
Retry-After, never 404 MARKET_001 (issue 19: `entasis up` then an immediate call must learn
"not yet", not "never"). An app on a fake store that knows nothing, with a read model that has
consumed trades; no database needed."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.market_memory import MemoryMarket
from api.read_model import MemTrade, ReadModel
from infra.store.repository import FeedState, LastTrade
from tests.api.conftest import bearer, error_of, new_account, test_api_settings, token_for

T0 = 1_723_161_600 * 10**9


class EmptyStore:
    """The store before the sink's first batch: knows no symbol, holds no trade."""

    memory: MemoryMarket | None = None

    def knows(self, symbol: str) -> bool:
        return False

    def known_symbols(self) -> frozenset[str]:
        return frozenset()

    def last_trades_by_venue(self, symbol: str) -> dict[str, LastTrade]:
        return {}

    def last_price(self, symbol: str, venue: str | None = None) -> LastTrade | None:
        return None

    def feed_state(self, symbol: str, venue: str) -> FeedState | None:
        return None

    def last_candle_open(self, symbol: str, venue: str, interval: str) -> int | None:
        return None

    def close(self) -> None:
        pass


@pytest.fixture
def warming_api() -> Iterator[TestClient]:
    store = EmptyStore()
    model = ReadModel()
    model.apply_trades("binance", "WRM-USDT", [MemTrade(T0, "1", Decimal("100"), Decimal("1"))])
    store.memory = MemoryMarket(model, store)  # type: ignore[arg-type]
    app = create_app(repository=store, api_settings=test_api_settings())  # type: ignore[arg-type]
    with TestClient(app, headers=bearer(token_for(new_account()))) as client:
        yield client


@pytest.mark.parametrize("path", ["/api/v1/market/price/WRM-USDT", "/api/v1/market/history/WRM-USDT?interval=1m"])
def test_a_produced_symbol_not_yet_stored_is_503_warming_up_with_retry_after(
    warming_api: TestClient, path: str
) -> None:
    response = warming_api.get(path)
    assert response.status_code == 503, response.text
    error = error_of(response)
    assert error["code"] == "UNAVAILABLE"
    assert error["details"] == {"symbol": "WRM-USDT", "reason": "warming up"}
    assert int(response.headers["retry-after"]) >= 1


def test_a_named_venue_the_feed_delivered_is_warming_up_too(warming_api: TestClient) -> None:
    seen = warming_api.get("/api/v1/market/price/WRM-USDT?exchange=binance")
    assert seen.status_code == 503, seen.text
    assert error_of(seen)["details"] == {"symbol": "WRM-USDT", "exchange": "binance", "reason": "warming up"}


def test_a_symbol_neither_the_feed_nor_the_store_has_is_still_404(warming_api: TestClient) -> None:
    response = warming_api.get("/api/v1/market/price/NOPE-USDT")
    assert response.status_code == 404, response.text
    assert error_of(response)["code"] == "MARKET_001"
    assert "retry-after" not in response.headers


def test_a_venue_the_feed_never_delivered_is_not_warming_up(warming_api: TestClient) -> None:
    response = warming_api.get("/api/v1/market/price/WRM-USDT?exchange=okx")
    assert response.status_code == 404, response.text
    assert error_of(response)["code"] == "MARKET_001"
