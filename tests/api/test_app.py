"""Wiring, OpenAPI and docs."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from infra.settings import Settings
from tests.api.conftest import NS, Market, TradeRow


def test_openapi_documents_market_routes_and_hides_alias(api: TestClient) -> None:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Entasis Engine API"
    assert schema["info"]["version"]
    paths = schema["paths"]
    assert set(paths) == {"/api/v1/market/price/{symbol}", "/api/v1/market/history/{symbol}"}
    assert not any(p.startswith("/v1") for p in paths)

    price = paths["/api/v1/market/price/{symbol}"]["get"]
    history = paths["/api/v1/market/history/{symbol}"]["get"]
    assert set(price["responses"]) == {"200", "400", "404", "500", "503"}
    assert set(history["responses"]) == {"200", "400", "404", "500", "503"}
    assert "most recent trade" in price["description"] and "most recent trade" in history["description"]
    assert {p["name"] for p in price["parameters"]} == {"symbol", "exchange"}
    assert {p["name"] for p in history["parameters"]} == {"symbol", "interval", "start", "end", "fill", "exchange"}
    assert all(p.get("description") for p in price["parameters"] + history["parameters"] if p["name"] != "symbol")

    for op in (price, history):
        for status in ("400", "404", "500", "503"):
            content = op["responses"][status]["content"]["application/json"]
            assert content["schema"]["$ref"].endswith("/ErrorResponse")
            assert content["examples"]
            for example in content["examples"].values():
                assert set(example["value"]["error"]) == {"code", "message", "details", "request_id"}
    market_404 = history["responses"]["404"]["content"]["application/json"]["examples"]["MARKET_001"]["value"]
    assert market_404["error"]["message"] == "Invalid symbol"

    # Validation failures are 400 here; FastAPI's default 422 must be gone everywhere.
    text = json.dumps(schema)
    assert '"422"' not in text and "HTTPValidationError" not in text

    components = schema["components"]["schemas"]
    price_props = components["PriceResponse"]["properties"]
    assert price_props["price"]["type"] == "string" and price_props["volume"]["type"] == "string"
    assert price_props["timestamp"]["type"] == "string"
    assert components["PriceResponse"]["examples"][0]["price"] == "65432.10000000"
    assert set(components["Candle"]["properties"]) == {"timestamp", "open", "high", "low", "close", "volume"}


def test_docs_serve_swagger_ui(api: TestClient) -> None:
    response = api.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text and "/openapi.json" in response.text
    assert response.headers["x-request-id"]


def test_settings_wiring_builds_and_closes_its_own_repository(
    db_location: tuple[str, str], market: Market, new_symbol: Callable[[str], str]
) -> None:
    url, database = db_location
    symbol = new_symbol("WIR")
    market.trades([TradeRow("binance", symbol, "1", Decimal("42"), Decimal("1"), 1_723_161_601 * NS)])
    app = create_app(
        settings=Settings(clickhouse_url=url, clickhouse_database=database),
        api_settings=ApiSettings(symbols_cache_seconds=0),
    )
    with TestClient(app) as client:
        response = client.get(f"/api/v1/market/price/{symbol}")
        assert response.status_code == 200, response.text
        assert response.json()["price"] == "42.00000000"
        assert app.state.repository is not None
    assert app.state.repository is None  # closed and dropped on shutdown


def test_app_not_started_answers_503() -> None:
    # Without the lifespan (no `with`), there is no repository yet: a clean 503, not a crash.
    client = TestClient(create_app(settings=Settings()))
    response = client.get("/api/v1/market/price/BTC-USDT")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UNAVAILABLE"
