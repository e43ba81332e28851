"""The error model: envelope, code table, languages, request ids, framework errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import ERRORS, ErrorCode, negotiate_language
from infra.store.repository import MarketRepository, StoreUnavailable
from tests.api.conftest import NS, Market, TradeRow, bearer, error_of, new_account, test_api_settings, token_for
from tests.shared_data import SHARED

SPEC = SHARED / "SPEC.md"  # the user's contract, an oracle independent of api/errors.py
KO_HEADERS = [{"Accept-Language": v} for v in ("ko", "ko-KR", "ko-KR,ko;q=0.9,en;q=0.8")]


def test_code_table_matches_spec_word_for_word() -> None:
    text = SPEC.read_text(encoding="utf-8")
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[A-Z_0-9]+", cells[0]) and cells[0] != "code":
            rows[cells[0]] = cells
    assert set(rows) == {c.value for c in ErrorCode}
    for code, (_, http, english, korean) in rows.items():
        spec = ERRORS[ErrorCode(code)]
        assert spec.en == english
        assert spec.ko == korean
        assert http.startswith(str(spec.status)), (code, http)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("ko", "ko"),
        ("ko-KR", "ko"),
        ("KO-kr", "ko"),
        ("ko-KR,ko;q=0.9,en;q=0.8", "ko"),
        ("en-US,en;q=0.9,ko;q=0.8", "en"),
        ("en-US,ko;q=0.9", "en"),
        ("ko;q=0.1, en;q=0.5", "en"),
        ("en;q=0.4, ko;q=0.5", "ko"),
        ("fr-FR, ko;q=0.5", "ko"),  # French is not offered; Korean is the best we have
        ("fr, de", "en"),
        ("ko;q=0", "en"),
        ("ko;q=0, *", "en"),
        ("*", "en"),
        ("ko;q=abc", "en"),  # a malformed q-value makes the range invalid, not preferred
        ("ko;q=1.5", "en"),
        ("en;q=0.5, ko;q=0.5", "en"),  # a tie goes to the earlier range
        ("ko ; q=0.8 , en ; q=0.7", "ko"),
        ("!!!", "en"),
    ],
)
def test_accept_language_negotiation(header: str | None, expected: str) -> None:
    assert negotiate_language(header) == expected


@pytest.mark.parametrize("symbol", ["BTC$USDT", "-USDT", "BTC-", "ABCDEFGHIJKLMNOP-USDT", "BTCUSDT", "BTC-USDT-X"])
@pytest.mark.parametrize("route", ["price", "history"])
def test_malformed_symbol_is_400_market_001(api: TestClient, symbol: str, route: str) -> None:
    response = api.get(f"/api/v1/market/{route}/{symbol}")
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "MARKET_001"
    assert error["message"] == "Invalid symbol"
    assert isinstance(error["details"], dict) and error["details"]["symbol"] == symbol


@pytest.mark.parametrize("headers", KO_HEADERS)
def test_korean_messages(api: TestClient, headers: dict[str, str]) -> None:
    response = api.get("/api/v1/market/price/BTC$USDT", headers=headers)
    assert response.status_code == 400
    assert error_of(response)["message"] == "유효하지 않은 심볼"
    assert response.headers["content-language"] == "ko"
    assert response.headers["content-type"].startswith("application/json")

    response = api.get("/api/v1/nowhere", headers=headers)
    assert error_of(response)["message"] == "리소스 없음"


@pytest.mark.parametrize("route", ["price", "history"])
def test_unknown_symbol_is_404_market_001(api: TestClient, route: str) -> None:
    for headers, message in (({}, "Invalid symbol"), ({"Accept-Language": "ko"}, "유효하지 않은 심볼")):
        response = api.get(f"/api/v1/market/{route}/xyzq-usdt", headers=headers)
        assert response.status_code == 404
        error = error_of(response)
        assert error["code"] == "MARKET_001"
        assert error["message"] == message
        assert error["details"] == {"symbol": "XYZQ-USDT", "reason": "symbol not served"}


@pytest.mark.parametrize(
    "query",
    [
        "interval=2m",
        "interval=",
        "interval=1M",
        "start=yesterday",
        "end=2024-13-01T00:00:00Z",
        "start=",
        "start=2024-08-09T00:00:00Z&end=2024-08-09T00:00:00Z",  # start == end
        "start=2024-08-09T01:00:00Z&end=2024-08-09T00:00:00Z",  # start > end
        "start=2024-08-09T09:00:00+09:00&end=2024-08-09T00:00:00Z",  # equal instants, different offsets
        "fill=perhaps",
        "exchange=bin$ance",
        "start=1969-12-31T23:59:00Z&end=1970-01-01T00:01:00Z",
    ],
)
def test_bad_history_parameters_are_400_bad_request(api: TestClient, query: str) -> None:
    # The checks run before any lookup, so an unserved symbol still gets the 400.
    for headers, message in (({}, "Bad request"), ({"Accept-Language": "ko-KR,ko;q=0.9,en;q=0.8"}, "잘못된 요청")):
        response = api.get(f"/api/v1/market/history/BTC-USDT?{query}", headers=headers)
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert error["code"] == "BAD_REQUEST"
        assert error["message"] == message
        assert isinstance(error["details"], dict) and error["details"]["errors"]


def test_validation_error_names_the_field_without_internals(api: TestClient) -> None:
    response = api.get("/api/v1/market/history/BTC-USDT?interval=2m")
    assert response.status_code == 400
    errors = error_of(response)["details"]["errors"]  # type: ignore[index]
    assert errors == [{"field": "query.interval", "reason": "Input should be '1m', '5m', '1h' or '1d'"}]
    assert "pydantic" not in response.text and "input" not in response.text


def test_unknown_route_is_404_not_found(api: TestClient) -> None:
    for path in ("/api/v1/nowhere", "/", "/api/v2/market/price/BTC-USDT", "/api/v1/market/price/"):
        response = api.get(path)
        assert response.status_code == 404, path
        error = error_of(response)
        assert error["code"] == "NOT_FOUND"
        assert error["message"] == "Resource not found"
        assert error["details"] == {"path": path}


def test_wrong_method_is_405_with_allow(api: TestClient) -> None:
    for path in ("/api/v1/market/price/BTC-USDT", "/v1/market/history/BTC-USDT"):
        response = api.post(path, json={})
        assert response.status_code == 405
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert "GET" in allowed
        error = error_of(response)
        assert error["code"] == "METHOD_NOT_ALLOWED"
        assert error["message"] == "Method not allowed"
        assert error["details"]["method"] == "POST"  # type: ignore[index]
        assert set(error["details"]["allowed"]) == allowed  # type: ignore[index]
        ko = api.delete(path, headers={"Accept-Language": "ko"})
        assert ko.status_code == 405 and error_of(ko)["message"] == "허용되지 않은 메서드"


class _Exploding(MarketRepository):
    def __init__(self, exc: Exception) -> None:
        super().__init__(lambda: (_ for _ in ()).throw(AssertionError("no client")))
        self.exc = exc

    def known_symbols(self) -> frozenset[str]:
        raise self.exc


def test_unhandled_exception_is_500_internal_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    secret = "boom in /srv/entasis/api/secret_module.py line 42"
    app = create_app(repository=_Exploding(RuntimeError(secret)), api_settings=test_api_settings())
    with TestClient(app, headers=bearer(token_for(new_account()))) as client, caplog.at_level(logging.ERROR):
        for headers, message in (({}, "Internal server error"), ({"Accept-Language": "ko"}, "서버 내부 오류")):
            response = client.get("/api/v1/market/price/BTC-USDT", headers=headers)
            assert response.status_code == 500
            error = error_of(response)
            assert error == {
                "code": "INTERNAL",
                "message": message,
                "details": None,
                "request_id": response.headers["x-request-id"],
            }
            for leak in ("boom", "/srv", ".py", "Traceback", "RuntimeError"):
                assert leak not in response.text
    # ...but the operator sees it, with the request id to find it by.
    logged = [r for r in caplog.records if r.exc_info and secret in str(r.exc_info[1])]
    assert logged and str(error["request_id"]) in logged[-1].getMessage()


def test_store_unavailable_is_503() -> None:
    app = create_app(repository=_Exploding(StoreUnavailable("connection refused")), api_settings=test_api_settings())
    with TestClient(app, headers=bearer(token_for(new_account()))) as client:
        response = client.get("/api/v1/market/history/BTC-USDT")
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "UNAVAILABLE"
    assert error["message"] == "Service temporarily unavailable"
    assert "refused" not in response.text


def test_unreachable_database_is_503_through_the_real_wiring() -> None:
    from infra.config.settings import Settings

    settings = Settings(clickhouse_url="http://127.0.0.1:1", clickhouse_database="entasis")
    app = create_app(settings=settings, api_settings=test_api_settings())
    with TestClient(app, headers=bearer(token_for(new_account()))) as client:
        response = client.get("/api/v1/market/price/BTC-USDT")
    assert response.status_code == 503
    assert error_of(response)["code"] == "UNAVAILABLE"


def test_request_ids_are_unique_and_on_every_response(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("RID")
    market.trades([TradeRow("binance", symbol, "1", Decimal("1.5"), Decimal("2"), 1_723_161_601 * NS)])
    seen = set()
    for path in (
        f"/api/v1/market/price/{symbol}",
        f"/api/v1/market/history/{symbol}",
        "/api/v1/market/price/BTC$USDT",
        "/nowhere",
        "/openapi.json",
    ):
        for _ in range(3):
            response = api.get(path)
            request_id = response.headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", request_id)
            if response.status_code >= 400:
                assert response.json()["error"]["request_id"] == request_id
            seen.add(request_id)
    assert len(seen) == 15


def test_incoming_request_id_is_not_reused(api: TestClient) -> None:
    # Uniqueness is the contract, and a client-chosen id cannot promise it.
    response = api.get("/nowhere", headers={"X-Request-ID": "client-chosen-id"})
    assert response.headers["x-request-id"] != "client-chosen-id"
    assert error_of(response)["request_id"] == response.headers["x-request-id"]


def test_api_error_status_override_and_headers() -> None:
    from api.errors import ApiError

    err = ApiError("MARKET_001", {"symbol": "X"}, status=404)
    assert (err.code, err.status, err.details) == (ErrorCode.MARKET_001, 404, {"symbol": "X"})
    assert ApiError(ErrorCode.AI_002, headers={"Retry-After": "5"}).headers == {"Retry-After": "5"}
    assert ApiError(ErrorCode.PORT_001).status == 422
    with pytest.raises(ValueError):
        ApiError("NOT_A_CODE")
