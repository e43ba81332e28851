"""`GET /api/v1/market/orderbook/{symbol}`: the hub's live book of one venue, top N. The oracle is
the book each test publishes, sorted by the test itself (never read back from the hub)."""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from api.principal import PORTFOLIO_READ
from api.ws import MarketHub
from api.ws.protocol import format_levels
from tests.api.conftest import Market, TradeRow, bearer, new_account, token_for

NS = 10**9
TS = 1_711_013_400_123_000_000  # 2024-03-21T09:30:00.123Z


def hub_of(api: TestClient) -> MarketHub:
    hub: MarketHub = api.app.state.market_hub  # type: ignore[attr-defined]
    return hub


def publish(hub: MarketHub, venue: str, symbol: str, seed: int, ts: int, n: int = 60) -> tuple[list, list]:
    """A random book of `n` levels a side, published best first; returns the expected sides as
    [price, size] strings, sorted here (bids high to low, asks low to high)."""
    rng = random.Random(seed)
    mid = 1000 + seed
    bids = [(Decimal(mid) - Decimal(i + 1) / 4, Decimal(rng.randint(1, 999)) / 100) for i in range(n)]
    asks = [(Decimal(mid) + Decimal(i + 1) / 4, Decimal(rng.randint(1, 999)) / 100) for i in range(n)]
    hub.publish_book(
        venue,
        symbol,
        format_levels([[str(p), str(s)] for p, s in bids]),
        format_levels([[str(p), str(s)] for p, s in asks]),
        ts,
    )
    rng.shuffle(bids)  # the oracle sorts for itself
    rng.shuffle(asks)

    def side(levels: list[tuple[Decimal, Decimal]], best_high: bool) -> list[list[str]]:
        ordered = sorted(levels, key=lambda level: level[0], reverse=best_high)
        return [[f"{p:.8f}", f"{s:.8f}"] for p, s in ordered]

    return side(bids, True), side(asks, False)


def test_book_top_n_of_the_default_and_the_chosen_venue(api: TestClient, new_symbol: Callable[[str], str]) -> None:
    sym = new_symbol("OB")
    hub = hub_of(api)
    spot_bids, spot_asks = publish(hub, "binance", sym, 1, TS)
    perp_bids, perp_asks = publish(hub, "binance-usdm", sym, 2, TS + NS)
    hub.publish_trades("binance-usdm", sym, Decimal("1"), TS, Decimal("1"))
    hub.publish_trades("binance", sym, Decimal("1"), TS + NS, Decimal("1"))  # binance traded last: default
    response = api.get(f"/api/v1/market/orderbook/{sym.lower()}")
    assert response.status_code == 200
    assert (
        response.json()
        == {
            "symbol": sym,
            "exchange": "binance",
            "bids": spot_bids[:20],  # default depth 20
            "asks": spot_asks[:20],
            "timestamp": "2024-03-21T09:30:00.123Z",
        }
    )
    body = api.get(f"/api/v1/market/orderbook/{sym}", params={"depth": 5, "exchange": "Binance-USDM"}).json()
    assert (body["exchange"], body["bids"], body["asks"]) == ("binance-usdm", perp_bids[:5], perp_asks[:5])
    assert body["timestamp"] == "2024-03-21T09:30:01.123Z"
    deep = api.get(f"/v1/market/orderbook/{sym}", params={"depth": 100}).json()  # the alias
    assert (len(deep["bids"]), deep["bids"], deep["asks"]) == (60, spot_bids, spot_asks)  # all the book holds
    one = api.get(f"/api/v1/market/orderbook/{sym}", params={"depth": 1}).json()
    assert (one["bids"], one["asks"]) == (spot_bids[:1], spot_asks[:1])


@pytest.mark.parametrize("depth", ["0", "101", "ten"])
def test_depth_out_of_range_is_400(api: TestClient, new_symbol: Callable[[str], str], depth: str) -> None:
    sym = new_symbol("OD")
    publish(hub_of(api), "binance", sym, 3, TS)
    response = api.get(f"/api/v1/market/orderbook/{sym}", params={"depth": depth})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BAD_REQUEST"


def test_invalid_after_a_gap_until_the_next_snapshot(api: TestClient, new_symbol: Callable[[str], str]) -> None:
    sym = new_symbol("OG")
    hub = hub_of(api)
    publish(hub, "binance", sym, 4, TS)
    hub.publish_quality("binance", sym, "book_gap", TS + NS)
    response = api.get(f"/api/v1/market/orderbook/{sym}")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "MARKET_002"
    assert error["details"] == {
        "symbol": sym,
        "exchange": "binance",
        "state": "invalid",
        "reason": "book_gap",
        "since": "2024-03-21T09:30:01.123Z",
    }
    bids, _ = publish(hub, "binance", sym, 5, TS + 2 * NS)  # the resync's snapshot
    response = api.get(f"/api/v1/market/orderbook/{sym}")
    assert response.status_code == 200 and response.json()["bids"] == bids[:20]


def test_stale_when_trades_go_on_without_book_updates(api: TestClient, new_symbol: Callable[[str], str]) -> None:
    sym = new_symbol("OS")
    hub = hub_of(api)
    publish(hub, "binance", sym, 6, TS)
    hub.publish_trades("binance", sym, Decimal("1"), TS + 30 * NS, Decimal("1"))
    assert api.get(f"/api/v1/market/orderbook/{sym}").status_code == 200  # 30 s behind: still live
    hub.publish_trades("binance", sym, Decimal("1"), TS + 31 * NS, Decimal("1"))
    response = api.get(f"/api/v1/market/orderbook/{sym}")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "MARKET_002"
    assert response.json()["error"]["details"]["state"] == "stale"


def test_unknown_symbol_or_venue_is_404_and_known_without_book_is_503(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    response = api.get(f"/api/v1/market/orderbook/{new_symbol('ON')}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "MARKET_001"
    assert api.get("/api/v1/market/orderbook/BTC$USDT").status_code == 400
    sym = new_symbol("OK")
    publish(hub_of(api), "binance", sym, 7, TS)
    response = api.get(f"/api/v1/market/orderbook/{sym}", params={"exchange": "nowhere"})
    assert response.status_code == 404
    assert response.json()["error"]["details"]["exchange"] == "nowhere"
    stored = new_symbol("OT")  # traded (in the store) but no book in this process
    market.trades([TradeRow("kraken", stored, "t1", Decimal("1"), Decimal("1"), TS)])
    response = api.get(f"/api/v1/market/orderbook/{stored}")
    assert response.status_code == 503
    assert response.json()["error"]["details"]["state"] == "no_book"


def test_needs_market_read(api: TestClient, new_symbol: Callable[[str], str]) -> None:
    sym = new_symbol("OA")
    publish(hub_of(api), "binance", sym, 8, TS)
    no_scope = bearer(token_for(new_account("ob"), [PORTFOLIO_READ]))
    assert api.get(f"/api/v1/market/orderbook/{sym}", headers=no_scope).status_code == 403
    assert api.get(f"/api/v1/market/orderbook/{sym}", headers={"Authorization": "Bearer nope"}).status_code == 401
