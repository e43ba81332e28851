"""GET /market/price/{symbol} against a real embedded database."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from fastapi.testclient import TestClient

from tests.api.conftest import DAY, HOUR, NS, Market, TradeRow, canon, error_of

LAST_NS = 1_723_161_601_174_999_999  # 2024-08-09T00:00:01.174999999Z


def test_price_fields_exact_strings_and_24h_volume(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("PX")
    rows = [
        TradeRow("binance", symbol, "100", Decimal("60000.5"), Decimal("9.00000001"), LAST_NS - 25 * HOUR),
        TradeRow("binance", symbol, "101", Decimal("61000"), Decimal("7.5"), LAST_NS - DAY),  # just outside
        TradeRow("binance", symbol, "102", Decimal("62000.12345678"), Decimal("0.00000001"), LAST_NS - DAY + 1),
        TradeRow("binance", symbol, "103", Decimal("64000"), Decimal("1.25"), LAST_NS - HOUR),
        TradeRow("binance", symbol, "104", Decimal("65432.10"), Decimal("0.5"), LAST_NS),
    ]
    market.trades(rows)
    market.trades(rows[-2:])  # a re-delivered batch: ReplacingMergeTree + FINAL must not double it

    window = [r for r in rows if LAST_NS - DAY < r.ts_ns <= LAST_NS]
    expected_volume = sum((r.size for r in window), Decimal(0))
    assert expected_volume == Decimal("1.75000001")

    response = api.get(f"/api/v1/market/price/{symbol.lower()}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "symbol": symbol,
        "price": "65432.10000000",
        "timestamp": "2024-08-09T00:00:01.174Z",
        "volume": canon(expected_volume),
        "exchange": "binance",
    }
    assert response.json()["volume"] == "1.75000001"
    assert response.headers["x-request-id"]


def test_price_default_venue_is_the_most_recent_and_exchange_selects(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("MV")
    market.trades(
        [
            TradeRow("binance", symbol, "1", Decimal("100"), Decimal("1"), LAST_NS - 10 * NS),
            TradeRow("binance", symbol, "2", Decimal("101"), Decimal("2"), LAST_NS - 5 * NS),
            TradeRow("okx", symbol, "a", Decimal("99.5"), Decimal("3"), LAST_NS - 7 * NS),
            TradeRow("okx", symbol, "b", Decimal("99.75"), Decimal("4"), LAST_NS),
        ]
    )
    default = api.get(f"/api/v1/market/price/{symbol}").json()
    assert (default["exchange"], default["price"], default["volume"]) == ("okx", "99.75000000", "7.00000000")

    for spelled in ("binance", "BINANCE", " Binance "):
        chosen = api.get(f"/api/v1/market/price/{symbol}", params={"exchange": spelled}).json()
        assert (chosen["exchange"], chosen["price"], chosen["volume"]) == ("binance", "101.00000000", "3.00000000")

    missing = api.get(f"/api/v1/market/price/{symbol}", params={"exchange": "kraken"})
    assert missing.status_code == 404
    error = error_of(missing)
    assert error["code"] == "MARKET_001"
    assert error["details"] == {"symbol": symbol, "exchange": "kraken", "reason": "symbol not served on this exchange"}

    malformed = api.get(f"/api/v1/market/price/{symbol}", params={"exchange": "kra ken"})
    assert malformed.status_code == 400 and error_of(malformed)["code"] == "BAD_REQUEST"


def test_price_tie_on_event_time_picks_a_deterministic_venue(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("TIE")
    market.trades(
        [
            TradeRow("okx", symbol, "1", Decimal("2"), Decimal("1"), LAST_NS),
            TradeRow("binance", symbol, "1", Decimal("1"), Decimal("1"), LAST_NS),
        ]
    )
    assert {api.get(f"/api/v1/market/price/{symbol}").json()["exchange"] for _ in range(3)} == {"binance"}


def test_stale_feed_is_503_market_002_until_the_next_trade(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("STL")
    market.trades([TradeRow("binance", symbol, "1", Decimal("10"), Decimal("1"), LAST_NS)])
    market.quality("binance", symbol, "feed_connected", LAST_NS - NS)
    assert api.get(f"/api/v1/market/price/{symbol}").status_code == 200

    market.quality("binance", symbol, "stale_feed", LAST_NS + 30 * NS)
    for headers, message in (
        ({}, "Exchange connection failure (feed down or stale)"),
        ({"Accept-Language": "ko"}, "거래소 연결 실패"),
    ):
        response = api.get(f"/api/v1/market/price/{symbol}", headers=headers)
        assert response.status_code == 503
        error = error_of(response)
        assert error["code"] == "MARKET_002"
        assert error["message"] == message
        assert error["details"] == {
            "symbol": symbol,
            "exchange": "binance",
            "state": "stale_feed",
            "since": "2024-08-09T00:00:31.174Z",
        }

    # Another venue's staleness does not matter.
    market.quality("okx", symbol, "feed_disconnected", LAST_NS + 40 * NS)
    market.trades([TradeRow("binance", symbol, "2", Decimal("11"), Decimal("1"), LAST_NS + 60 * NS)])
    recovered = api.get(f"/api/v1/market/price/{symbol}")
    assert recovered.status_code == 200
    assert recovered.json()["price"] == "11.00000000"

    market.quality("binance", symbol, "feed_disconnected", LAST_NS + 61 * NS)
    assert api.get(f"/api/v1/market/price/{symbol}").status_code == 503
    market.quality("binance", symbol, "feed_connected", LAST_NS + 62 * NS)
    assert api.get(f"/api/v1/market/price/{symbol}").status_code == 200

    # a live connector's silent socket (feed_stale) counts the same, and so does its recovery
    market.quality("binance", symbol, "feed_stale", LAST_NS + 63 * NS)
    stale = api.get(f"/api/v1/market/price/{symbol}")
    assert stale.status_code == 503 and error_of(stale)["details"]["state"] == "feed_stale"
    market.quality("binance", symbol, "trade_gap", LAST_NS + 64 * NS)  # not a feed state: changes nothing
    assert api.get(f"/api/v1/market/price/{symbol}").status_code == 503
    market.quality("binance", symbol, "feed_connected", LAST_NS + 65 * NS)
    assert api.get(f"/api/v1/market/price/{symbol}").status_code == 200


def test_v1_alias_serves_the_same_price(api: TestClient, market: Market, new_symbol: Callable[[str], str]) -> None:
    symbol = new_symbol("ALI")
    market.trades([TradeRow("binance", symbol, "1", Decimal("3.14"), Decimal("2.71"), LAST_NS)])
    canonical = api.get(f"/api/v1/market/price/{symbol}")
    alias = api.get(f"/v1/market/price/{symbol}")
    assert alias.status_code == canonical.status_code == 200
    assert alias.json() == canonical.json()
    assert alias.headers["x-request-id"] != canonical.headers["x-request-id"]
