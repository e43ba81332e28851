"""GET /market/symbols, /market/trades/{symbol}, /market/quality/{symbol} against a real embedded
database. Oracles: the rows the test inserted, sorted and filtered in plain Python."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal

from fastapi.testclient import TestClient

from tests.api.conftest import HOUR, NS, Market, TradeRow, canon, error_of

T0 = 1_723_161_600 * NS  # 2024-08-09T00:00:00Z


def iso(ns: int) -> str:
    """The contract's timestamp spelling, computed here without api.models."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _rows(symbol: str) -> list[TradeRow]:
    rows = []
    for i in range(23):
        ns = T0 + (i // 2) * 7 * NS  # pairs share an event time: the trade id breaks the tie
        rows.append(TradeRow("binance", symbol, f"t{i:03d}", Decimal(100 + i) / 8, Decimal(i + 1) / 1000, ns))
    rows.append(TradeRow("okx", symbol, "o1", Decimal("1"), Decimal("1"), T0 - HOUR))  # an older venue
    return rows


def _pages(api: TestClient, path: str, **params: object) -> tuple[list[dict[str, object]], int]:
    out: list[dict[str, object]] = []
    pages = 0
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = api.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        out.extend(body["data"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return out, pages


def test_trades_page_through_in_event_time_then_id_order_without_skip_or_repeat(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("TR")
    rows = _rows(symbol)
    market.trades(rows)
    market.trades(rows[:5])  # re-delivered: one row each
    binance = sorted((r for r in rows if r.venue == "binance"), key=lambda r: (r.ts_ns, r.trade_id))
    want = [
        {
            "trade_id": r.trade_id,
            "price": canon(r.price),
            "size": canon(r.size),
            "side": "buy",
            "timestamp": iso(r.ts_ns),
        }
        for r in binance
    ]
    got, pages = _pages(api, f"/api/v1/market/trades/{symbol}", limit=5)
    assert got == want
    assert pages == 5  # 23 rows, 5 a page
    # a window: [start, end) on event time, the default venue, one page
    start, end = binance[4].ts_ns, binance[10].ts_ns
    body = api.get(f"/api/v1/market/trades/{symbol.lower()}", params={"start": iso(start), "end": iso(end)}).json()
    assert body["exchange"] == "binance"
    assert [t["trade_id"] for t in body["data"]] == [r.trade_id for r in binance if start <= r.ts_ns < end]
    assert body["next_cursor"] is None
    # another venue by name
    other = api.get(f"/api/v1/market/trades/{symbol}", params={"exchange": "OKX", "start": iso(T0 - 2 * HOUR)}).json()
    assert [t["trade_id"] for t in other["data"]] == ["o1"]


def test_trades_refuse_bad_pages_and_unknown_symbols(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("TB")
    market.trades(_rows(symbol))
    for params in ({"limit": 0}, {"limit": 1001}, {"cursor": "garbage!"}, {"cursor": "99999999999999999999:x"}):
        response = api.get(f"/api/v1/market/trades/{symbol}", params=params)
        assert response.status_code == 400, (params, response.text)
        assert error_of(response)["code"] == "BAD_REQUEST"
    response = api.get(f"/api/v1/market/trades/{symbol}", params={"start": iso(T0 + HOUR), "end": iso(T0)})
    assert response.status_code == 400
    missing = api.get(f"/api/v1/market/trades/{new_symbol('NO')}")
    assert missing.status_code == 404 and error_of(missing)["code"] == "MARKET_001"


def test_symbols_list_every_venue_with_its_first_and_last_trade_and_feed_state(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("SY")
    rows = _rows(symbol)
    market.trades(rows)
    market.quality("binance", symbol, "feed_connected", T0 - 5 * NS)
    market.quality("binance", symbol, "feed_stale", T0 + 30 * NS)
    market.quality("binance", symbol, "late_trade", T0 + 40 * NS)  # not a feed state
    listed = [s for s in api.get("/api/v1/market/symbols").json()["data"] if s["symbol"] == symbol]
    binance = [r.ts_ns for r in rows if r.venue == "binance"]
    assert listed == [
        {"symbol": symbol, "exchange": "binance", "first_trade": iso(min(binance)), "last_trade": iso(max(binance)),
         "trades": len(binance), "feed": {"state": "feed_stale", "since": iso(T0 + 30 * NS)}},
        {"symbol": symbol, "exchange": "okx", "first_trade": iso(T0 - HOUR), "last_trade": iso(T0 - HOUR),
         "trades": 1, "feed": None},
    ]  # fmt: skip


def test_quality_events_filter_by_kind_and_venue_and_page(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("QE")
    market.trades(_rows(symbol))
    events = [("binance", "book_gap", T0 + i * NS) for i in range(5)]
    events += [("okx", "book_resync", T0 + 2 * NS + 500_000_000), ("binance", "feed_stale", T0 + 9 * NS)]
    for venue, kind, ns in events:
        market.quality(venue, symbol, kind, ns)
    got, pages = _pages(api, f"/api/v1/market/quality/{symbol}", limit=2)
    assert [(q["exchange"], q["kind"], q["timestamp"]) for q in got] == [
        (v, k, iso(ns)) for v, k, ns in sorted(events, key=lambda e: e[2])
    ]
    assert pages == 4  # 7 events, 2 a page
    gaps, _ = _pages(api, f"/api/v1/market/quality/{symbol}", kind="book_gap,book_resync", exchange="binance")
    assert [(q["kind"], q["timestamp"]) for q in gaps] == [("book_gap", iso(T0 + i * NS)) for i in range(5)]
    bad = api.get(f"/api/v1/market/quality/{symbol}", params={"kind": "nonsense"})
    assert bad.status_code == 400 and error_of(bad)["code"] == "BAD_REQUEST"
