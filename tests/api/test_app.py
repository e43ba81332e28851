"""Wiring, OpenAPI and docs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal

from fastapi.testclient import TestClient

from api.app import create_app
from infra.config.settings import ClickHouseSettings, Settings
from tests.api.conftest import NS, Market, TradeRow, bearer, new_account, test_api_settings, token_for


def test_openapi_documents_market_routes_and_hides_alias(api: TestClient) -> None:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Entasis Engine API"
    assert schema["info"]["version"]
    paths = schema["paths"]
    assert set(paths) == {"/api/v1/market/price/{symbol}", "/api/v1/market/history/{symbol}",
                          "/api/v1/market/symbols", "/api/v1/market/trades/{symbol}", "/api/v1/market/quality/{symbol}",
                          "/api/v1/analysis/risk/{symbol}", "/api/v1/analysis/risk/{symbol}/backtest",
                          "/api/v1/portfolio/positions", "/api/v1/portfolio/positions/{position_id}",
                          "/api/v1/portfolio/balance", "/api/v1/analysis/prediction/{symbol}",
                          "/api/v1/analysis/prediction/{symbol}/metrics", "/api/v1/market/orderbook/{symbol}"}
    assert not any(p.startswith("/v1") for p in paths)

    price = paths["/api/v1/market/price/{symbol}"]["get"]
    history = paths["/api/v1/market/history/{symbol}"]["get"]
    statuses = {"200", "400", "401", "403", "404", "429", "500", "503"}
    assert set(price["responses"]) == statuses
    assert set(history["responses"]) == statuses | {"406"}  # an Accept it cannot serve (CSV and Parquet exports)
    assert "most recent trade" in price["description"] and "most recent trade" in history["description"]
    assert {p["name"] for p in price["parameters"]} == {"symbol", "exchange"}
    assert {p["name"] for p in history["parameters"]} == {"symbol", "interval", "start", "end", "fill", "exchange",
                                                          "fields"}
    assert all(p.get("description") for p in price["parameters"] + history["parameters"] if p["name"] != "symbol")

    for op in (price, history):
        # Either credential is enough: two alternatives, not one requirement naming both.
        assert op["security"] == [{"BearerJWT": []}, {"ApiKey": []}]
        assert "market:read" in op["description"]
        for status, response in op["responses"].items():
            headers = response["headers"]
            for name in ("X-Request-ID", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
                assert headers[name]["required"] is True, (status, name)
        assert op["responses"]["429"]["headers"]["Retry-After"]["schema"]["maximum"] == 60
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
        for status, code in (("401", "AUTH_FAILED"), ("403", "FORBIDDEN"), ("429", "RATE_LIMITED")):
            examples = op["responses"][status]["content"]["application/json"]["examples"]
            assert examples[code]["value"]["error"]["code"] == code
        for status in ("400", "401", "403", "404", "429", "500", "503"):
            content = op["responses"][status]["content"]["application/json"]
            assert content["schema"]["$ref"].endswith("/ErrorResponse")
            assert content["examples"]
            for example in content["examples"].values():
                assert set(example["value"]["error"]) == {"code", "message", "details", "request_id"}
    market_404 = history["responses"]["404"]["content"]["application/json"]["examples"]["MARKET_001"]["value"]
    assert market_404["error"]["message"] == "Invalid symbol"

    # Validation failures are 400 here; FastAPI's default 422 must be gone everywhere. The one
    # 422 left is opening a position: PORT_001/PORT_002, as docs/decisions.md ("Errors") says.
    post = paths["/api/v1/portfolio/positions"]["post"]["responses"].pop("422")
    assert set(json.dumps(post).split('"code": "')[1:][i][:8] for i in range(2)) == {"PORT_001", "PORT_002"}
    text = json.dumps(schema)
    assert '"422"' not in text and "HTTPValidationError" not in text

    schemes = schema["components"]["securitySchemes"]
    assert schemes["BearerJWT"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["BearerJWT"]["description"],
    }
    assert schemes["ApiKey"]["type"] == "apiKey" and schemes["ApiKey"]["in"] == "header"
    assert schemes["ApiKey"]["name"] == "X-API-Key"

    components = schema["components"]["schemas"]
    price_props = components["PriceResponse"]["properties"]
    assert price_props["price"]["type"] == "string" and price_props["volume"]["type"] == "string"
    assert price_props["timestamp"]["type"] == "string"
    assert components["PriceResponse"]["examples"][0]["price"] == "65432.10000000"
    candle = components["Candle"]
    assert set(candle["properties"]) == {"timestamp", "open", "high", "low", "close", "volume", "trades", "vwap"}
    assert set(candle["required"]) == {"timestamp", "open", "high", "low", "close", "volume"}  # `?fields=` only


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
        settings=Settings(clickhouse=ClickHouseSettings(url=url, database=database)),
        api_settings=test_api_settings(symbols_cache_seconds=0),
    )
    with TestClient(app, headers=bearer(token_for(new_account()))) as client:
        response = client.get(f"/api/v1/market/price/{symbol}")
        assert response.status_code == 200, response.text
        assert response.json()["price"] == "42.00000000"
        assert app.state.repository is not None
    assert app.state.repository is None  # closed and dropped on shutdown


def test_app_not_started_answers_503() -> None:
    # Without the lifespan (no `with`), there is no repository yet: a clean 503, not a crash.
    app = create_app(settings=Settings(), api_settings=test_api_settings())
    client = TestClient(app, headers=bearer(token_for(new_account())))
    response = client.get("/api/v1/market/price/BTC-USDT")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UNAVAILABLE"


def test_every_documented_operation_requires_credentials(anon: TestClient) -> None:
    # A router wired in without `require_scope` would be an open endpoint: refuse that here, for
    # every operation in the schema and its /v1 alias.
    schema = anon.get("/openapi.json").json()
    assert schema["paths"]
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert operation.get("security"), (method, path)
            concrete = re.sub(r"\{[^}]+\}", "BTC-USDT", path)
            for url in (concrete, concrete.replace("/api/v1/", "/v1/", 1)):
                response = anon.request(method.upper(), url)
                assert response.status_code == 401, (method, url, response.status_code)
