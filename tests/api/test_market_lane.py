"""The fast lane (api/market_lane.py) answers exactly what the FastAPI routes answer, and leaves
everything else to them.

Oracle: the same app with the lane taken out of its middleware, asked the same request. The
lane's answers must be byte-equal (status, body, every header but the request id); the cases it
must not answer must come from the routes (proved by the routes being the only way to a reply
when `market_service.answer` is made to fail)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import market_service
from api.app import create_app
from api.market_lane import MarketFastLane
from api.market_memory import MemoryMarket
from api.models import Candle, PriceResponse, TradeItem, TradesResponse, candle_json, ns_to_datetime, price_json
from api.read_model import MemTrade, ReadModel, VersionedCandle
from api.records_service import trades_body
from api.routes import orderbook as orderbook_route
from api.routes import records as records_route
from api.ws.hub import MarketHub
from api.ws.protocol import format_levels
from infra.store.repository import CandleRow
from schemas.events import Interval
from tests.api.conftest import bearer, test_api_settings, token_for

S = 10**9
MIN = 60 * S
T0 = 1_723_161_600 * S  # 2024-08-09T00:00:00Z


class NoStore:
    """Memory must answer every lane case: the store fails the test if asked."""

    memory: MemoryMarket | None = None

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was asked: {name}")


class NoKeys:
    def get(self, key_id: str) -> None:
        return None

    def close(self) -> None:
        pass


SIDES = ("buy", "sell", "unknown")


def _model() -> ReadModel:
    model = ReadModel()
    trades = [MemTrade(T0 + i * 7 * S, str(i), Decimal(100 + i % 9) / 4, Decimal(i % 5 + 1) / 8, SIDES[i % 3])
              for i in range(400)]  # fmt: skip
    for venue in ("alpha", "beta"):
        model.apply_trades(venue, "AAA-USDT", trades if venue == "alpha" else trades[:-3])
        for minute in range(40):
            bucket = [t for t in trades if T0 + minute * MIN <= t.event_ns < T0 + (minute + 1) * MIN]
            prices = [t.price for t in bucket]
            volume = sum((t.size for t in bucket), Decimal(0))
            row = CandleRow(T0 + minute * MIN, prices[0], max(prices), min(prices), prices[-1], volume)
            model.apply_candle(venue, "AAA-USDT", "1m", VersionedCandle(1, row))
        model.warm(venue, "AAA-USDT", [], {i.value: (0, []) for i in Interval}, None)  # covers all before
    return model


def _hub() -> MarketHub:
    """Live books of AAA-USDT on both venues (beta's gone stale: alpha traded on long after it)."""
    hub = MarketHub()
    for n, venue in enumerate(("alpha", "beta")):
        bids = [[str(Decimal(100 - n) - Decimal(i) / 8), str(Decimal(i + 1) / 3)] for i in range(30)]
        asks = [[str(Decimal(101 + n) + Decimal(i) / 8), str(Decimal(i + 2) / 7)] for i in range(30)]
        hub.publish_book(venue, "AAA-USDT", format_levels(bids), format_levels(asks), T0 + (1 - n) * 7200 * S)
    hub.publish_trades("beta", "AAA-USDT", Decimal("100"), T0 + 3600 * S, Decimal("1"))
    hub.publish_trades("alpha", "AAA-USDT", Decimal("100"), T0 + 7200 * S + 2, Decimal("1"))  # the default venue
    return hub


def _app(lane: bool) -> FastAPI:
    store = NoStore()
    store.memory = MemoryMarket(_model(), store)  # type: ignore[arg-type]
    settings = test_api_settings(rate_limit="100000/minute")
    app = create_app(repository=store, api_settings=settings, key_repository=NoKeys(),  # type: ignore[arg-type]
                     market_hub=_hub())  # fmt: skip
    if not lane:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not MarketFastLane]
    return app


@pytest.fixture
def clients() -> Iterator[tuple[TestClient, TestClient]]:
    with TestClient(_app(True)) as with_lane, TestClient(_app(False)) as without:
        yield with_lane, without


def _comparable(response: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in response.headers.items() if k not in ("x-request-id",))
    return response.status_code, response.content, headers


LANE_CASES = [
    "/api/v1/market/price/AAA-USDT",
    "/api/v1/market/price/aaa-usdt?exchange=BETA",
    "/v1/market/price/AAA-USDT?exchange=alpha",
    "/api/v1/market/history/AAA-USDT",
    "/api/v1/market/history/AAA-USDT?interval=5m&exchange=beta&start=2024-08-09T00:00:00Z",
    "/api/v1/market/history/AAA-USDT?interval=1m&start=2024-08-09T00:10:00Z&end=2024-08-09T00:20:00Z",
    "/api/v1/market/history/AAA-USDT?interval=1h&start=2024-08-09",
]


@pytest.mark.parametrize("path", LANE_CASES)
def test_the_lane_answers_byte_for_byte_what_the_route_answers(
    clients: tuple[TestClient, TestClient], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_lane, without = clients
    headers = bearer(token_for("lane"))
    want = without.get(path, headers=headers)
    assert want.status_code == 200, want.text

    async def routed(*args: object) -> object:
        raise AssertionError("the route ran: the lane should have answered")

    monkeypatch.setattr(market_service, "answer", routed)
    got = with_lane.get(path, headers=headers)
    assert _comparable(got) == _comparable(want)


FALL_THROUGH = [
    ("/api/v1/market/history/AAA-USDT?fill=true", None),  # a parameter the lane leaves to FastAPI
    ("/api/v1/market/price/AAA-USDT?exchange=alpha&exchange=beta", None),  # repeated
    ("/api/v1/market/price/AAA-USDT?exchange=", None),  # 400 from the route
    ("/api/v1/market/price/AAA$USDT", None),  # 400 MARKET_001
    ("/api/v1/market/price/ZZZ-USDT", None),  # not in memory: the route asks the store
    ("/api/v1/market/history/AAA-USDT?interval=2m", None),  # 400
    ("/api/v1/market/price/AAA-USDT", "analysis:read"),  # 403: the scope is missing
]


@pytest.mark.parametrize(("path", "scope"), FALL_THROUGH)
def test_everything_else_is_left_to_the_routes(
    clients: tuple[TestClient, TestClient], path: str, scope: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_lane, without = clients
    token = token_for("lane", (scope,)) if scope else token_for("lane")
    called: list[str] = []
    real = market_service.answer

    async def counted(*args: Any) -> Any:
        called.append("route")
        return await real(*args)

    monkeypatch.setattr(market_service, "answer", counted)
    try:
        got = with_lane.get(path, headers=bearer(token))
    except AssertionError as exc:  # NoStore: the route went to the store, as it must for an unknown symbol
        assert "ZZZ" in path, exc
        return
    want = without.get(path, headers=bearer(token))
    assert got.status_code == want.status_code
    if got.status_code != 200:
        assert {**got.json()["error"], "request_id": None} == {**want.json()["error"], "request_id": None}
    else:
        assert called, "a 200 the lane did not answer must come from the route"


def test_rendered_candles_and_prices_are_what_the_response_models_write() -> None:
    rows = [
        CandleRow(T0, Decimal("65000"), Decimal("65100.5"), Decimal("64900.123456789"), Decimal("0.00000001"),
                  Decimal("123456789012345678901234.5")),
        CandleRow(T0 + 123_456_789, Decimal("1E+3"), Decimal("2.5E-7"), Decimal("0"), Decimal("-0"), Decimal("7")),
    ]  # fmt: skip
    for row in rows:
        model = Candle(timestamp=ns_to_datetime(row.open_ns), open=row.open, high=row.high, low=row.low,
                       close=row.close, volume=row.volume)  # fmt: skip
        assert candle_json(row) == model.model_dump_json().encode()
        for symbol, venue in (("AAA-USDT", "alpha"), ("B1-C2", "x-y")):
            price = PriceResponse(symbol=symbol, price=row.high, timestamp=ns_to_datetime(row.open_ns),
                                  volume=row.volume, exchange=venue)  # fmt: skip
            assert price_json(symbol, row.high, row.open_ns, row.volume, venue) == price.model_dump_json().encode()


def test_a_lane_answer_is_counted_under_its_route_template(clients: tuple[TestClient, TestClient]) -> None:
    with_lane, _ = clients
    for _ in range(3):
        assert with_lane.get("/v1/market/price/AAA-USDT", headers=bearer(token_for("lane"))).status_code == 200
    metrics = with_lane.get("/metrics").text
    assert 'entasis_api_requests_total{method="GET",route="/v1/market/price/{symbol}",status="200"} 3.0' in metrics


TRADES = "/api/v1/market/trades/AAA-USDT"
BOOK = "/api/v1/market/orderbook/AAA-USDT"
STORE_READS = [
    TRADES,
    f"{TRADES}?limit=1000",
    f"{TRADES}?exchange=beta&limit=7",
    f"{TRADES}?limit=5&cursor={T0 + 70 * S}:10",
    f"{TRADES}?start=2024-08-09T00:05:00Z&end=2024-08-09T00:06:00Z&limit=3",
    "/v1/market/trades/aaa-usdt?start=2024-08-09T00:30:00Z",
    BOOK,
    f"{BOOK}?depth=1",
    "/v1/market/orderbook/aaa-usdt?depth=100&exchange=ALPHA",
]


@pytest.mark.parametrize("path", STORE_READS)
def test_the_lane_answers_trades_and_books_byte_for_byte(
    clients: tuple[TestClient, TestClient], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_lane, without = clients
    headers = bearer(token_for("lane"))
    want = without.get(path, headers=headers)
    assert want.status_code == 200, want.text

    def routed(*args: object) -> object:
        raise AssertionError("the route ran: the lane should have answered")

    # what only the routes call (the lane has its own binding of orderbook_body)
    monkeypatch.setattr(records_route, "JsonBody", routed)
    monkeypatch.setattr(orderbook_route, "orderbook_body", routed)
    got = with_lane.get(path, headers=headers)
    assert _comparable(got) == _comparable(want)


@pytest.mark.parametrize(
    "path",
    [
        f"{TRADES}?limit=0",  # 400s, 422s: the route's
        f"{TRADES}?limit=1001",
        f"{TRADES}?limit=010",
        f"{TRADES}?cursor=x",
        f"{TRADES}?start=2024-08-09T01:00:00Z&end=2024-08-09T00:00:00Z",
        f"{TRADES}?fields=vwap",  # unknown to the lane
        f"{BOOK}?depth=0",
        f"{BOOK}?depth=+5",
        f"{BOOK}?exchange=beta",  # stale: MARKET_002 from the route
        f"{BOOK}?exchange=gamma",  # never seen: the route asks the store
    ],
)
def test_trades_and_books_the_lane_leaves_to_the_routes(
    clients: tuple[TestClient, TestClient], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_lane, without = clients
    headers = bearer(token_for("lane"))
    called: list[str] = []

    def counting(real: Any) -> Any:
        def call(*args: Any) -> Any:
            called.append("route")
            return real(*args)

        return call

    monkeypatch.setattr(records_route, "JsonBody", counting(records_route.JsonBody))
    monkeypatch.setattr(orderbook_route, "orderbook_body", counting(orderbook_route.orderbook_body))
    try:
        got = with_lane.get(path, headers=headers)
    except AssertionError as exc:  # NoStore: the route went to the store, as it must for a venue never seen
        assert "gamma" in path, exc
        return
    if got.status_code == 200:  # a spelling FastAPI accepts and the lane does not read: the route's
        assert called, "a 200 the lane did not answer must come from the route"
        return
    want = without.get(path, headers=headers)
    assert got.status_code == want.status_code
    assert {**got.json()["error"], "request_id": None} == {**want.json()["error"], "request_id": None}


def test_a_trades_page_is_what_the_response_model_writes() -> None:
    odd = [  # ids JSON must escape or that are not ASCII, decimals in every notation the store holds
        MemTrade(T0 + 1, 'q"uote\\', Decimal("1E+3"), Decimal("0.00000001"), "buy"),
        MemTrade(T0 + 2, "é-ü-✓", Decimal("123456789012345678901234.5"), Decimal("-0"), "sell"),
        MemTrade(T0 + 123_456_789, "\u0007", Decimal("2.5E-7"), Decimal("7"), "unknown"),
    ]
    model = ReadModel()
    model.apply_trades("alpha", "AAA-USDT", odd)
    model.warm("alpha", "AAA-USDT", [], {i.value: (0, []) for i in Interval}, None)
    memory = MemoryMarket(model, NoStore())  # type: ignore[arg-type]
    for limit in (2, 3):
        body = trades_body(memory.only, "AAA-USDT", "alpha", T0, T0 + S, limit, None)
        page = odd[:limit]
        response = TradesResponse(
            symbol="AAA-USDT",
            exchange="alpha",
            data=[
                TradeItem(
                    trade_id=t.trade_id, price=t.price, size=t.size, side=t.side, timestamp=ns_to_datetime(t.event_ns)
                )
                for t in page
            ],
            next_cursor=f"{T0 + 2}:é-ü-✓" if limit == 2 else None,
        )
        assert body == response.model_dump_json().encode()
