"""GET /market/history/{symbol}: stored candles + candles computed from trades, against a
plain-Python OHLCV oracle over the very rows inserted."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import DAY, HOUR, MINUTE, NS, CandleRow, Market, TradeRow, canon, error_of

BASE = 1_723_161_600 * NS  # 2024-08-09T00:00:00Z
D = Decimal


def iso(ns: int) -> str:
    """Millisecond ISO (the wire form); nanoseconds when the value has them (for query bounds)."""
    seconds, rest = divmod(ns, NS)
    fraction = f"{rest // 10**6:03d}" if rest % 10**6 == 0 else f"{rest:09d}"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction}Z"


def oracle(trades: Iterable[TradeRow], step: int, lo: int = 0, hi: int = 2**62) -> list[dict[str, str]]:
    """OHLCV per bucket (event time floored to `step`) of the distinct trades, buckets in [lo, hi)."""
    distinct = {(t.venue, t.symbol, t.ts_ns, t.trade_id): t for t in trades}.values()
    buckets: dict[int, list[TradeRow]] = defaultdict(list)
    for t in distinct:
        bucket = t.ts_ns - t.ts_ns % step
        if lo <= bucket < hi:
            buckets[bucket].append(t)
    out = []
    for bucket in sorted(buckets):
        ordered = sorted(buckets[bucket], key=lambda t: (t.ts_ns, t.trade_id))
        out.append(
            {
                "timestamp": iso(bucket),
                "open": canon(ordered[0].price),
                "high": canon(max(t.price for t in ordered)),
                "low": canon(min(t.price for t in ordered)),
                "close": canon(ordered[-1].price),
                "volume": canon(sum((t.size for t in ordered), D(0))),
            }
        )
    return out


def stored(c: CandleRow) -> dict[str, str]:
    return {
        "timestamp": iso(c.open_ns),
        "open": canon(c.open),
        "high": canon(c.high),
        "low": canon(c.low),
        "close": canon(c.close),
        "volume": canon(c.volume),
    }


class Series:
    """One symbol with stored 1m candles for minutes 0-2, trades in minutes 0, 2, 3 and 6."""

    def __init__(self, market: Market, symbol: str) -> None:
        self.symbol = symbol
        s = symbol

        def t(trade_id: str, offset_ns: int, price: str, size: str, venue: str = "binance") -> TradeRow:
            return TradeRow(venue, s, trade_id, D(price), D(size), BASE + offset_ns)

        self.m0 = CandleRow("binance", s, "1m", BASE, D("100"), D("110"), D("95"), D("105"), D("10.5"))
        self.m1_rev0 = CandleRow(
            "binance", s, "1m", BASE + MINUTE, D("105"), D("108"), D("104"), D("107"), D("3"), revision=0
        )
        self.m1_rev1 = CandleRow(
            "binance", s, "1m", BASE + MINUTE, D("105"), D("109"), D("101"), D("106"), D("4.25"), revision=1
        )
        self.m2 = CandleRow("binance", s, "1m", BASE + 2 * MINUTE, D("106"), D("106"), D("106"), D("106"), D("0.001"))
        self.h_prev = CandleRow(
            "binance", s, "1h", BASE - HOUR, D("90"), D("100"), D("80"), D("95"), D("1000.00000001")
        )
        self.okx_m1 = CandleRow("okx", s, "1m", BASE + MINUTE, D("1"), D("2"), D("0.5"), D("1.5"), D("8"))
        # The newest revision first: FINAL must pick by version, not by insert order.
        market.candles([self.m1_rev1])
        market.candles([self.m0, self.m1_rev0, self.m2, self.h_prev, self.okx_m1])

        self.covered = [  # inside stored 1m buckets: must not show up in 1m history
            t("c1", 5 * NS, "1", "100"),
            t("c2", 6 * NS, "2", "100"),
            t("c3", 2 * MINUTE + 1, "999", "1"),
        ]
        self.minute3 = [
            t("a2", 3 * MINUTE + NS, "201", "2"),
            t("a1", 3 * MINUTE + NS, "200", "1"),  # same event time: a1 comes first
            t("a3", 3 * MINUTE + 30 * NS, "199", "0.5"),
            t("a4", 4 * MINUTE - 1, "202", "0.25"),
        ]
        self.minute6 = [
            t("b1", 6 * MINUTE + 10 * NS, "210", "1"),
            t("b0", 6 * MINUTE + 10 * NS, "209", "1"),
            t("b2", 6 * MINUTE + 20 * NS, "211", "0.1"),
        ]
        self.okx = [t("o1", MINUTE + NS, "1.25", "3", venue="okx")]
        self.binance = self.covered + self.minute3 + self.minute6
        market.trades(self.binance + self.okx)
        market.trades(self.minute6[-1:])  # re-delivered: must not double

    def expected_1m(self) -> list[dict[str, str]]:
        return [stored(self.m0), stored(self.m1_rev1), stored(self.m2), *oracle(self.minute3 + self.minute6, MINUTE)]


@pytest.fixture
def series(market: Market, new_symbol: Callable[[str], str]) -> Series:
    return Series(market, new_symbol("HS"))


def get(api: TestClient, symbol: str, **params: Any) -> Any:
    response = api.get(f"/api/v1/market/history/{symbol}", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["symbol"] == symbol
    return body["data"]


def test_history_merges_stored_and_open_candles(api: TestClient, series: Series) -> None:
    data = get(api, series.symbol, interval="1m", start=iso(BASE), end=iso(BASE + 10 * MINUTE))
    assert data == series.expected_1m()
    # Spelled out once, so the oracle itself is checked too.
    assert data[3] == {
        "timestamp": "2024-08-09T00:03:00.000Z",
        "open": "200.00000000",
        "high": "202.00000000",
        "low": "199.00000000",
        "close": "202.00000000",
        "volume": "3.75000000",
    }
    assert data[4] == {
        "timestamp": "2024-08-09T00:06:00.000Z",
        "open": "209.00000000",
        "high": "211.00000000",
        "low": "209.00000000",
        "close": "211.00000000",
        "volume": "2.10000000",
    }
    assert data[1]["volume"] == "4.25000000"  # revision 1, not 0, not both


def test_history_is_case_insensitive_and_defaults_to_1m_last_500(api: TestClient, series: Series) -> None:
    # All 5 candles lie within the default window (the 500 minutes up to the latest trade's).
    assert get(api, series.symbol) == series.expected_1m()
    for spelled in (series.symbol.lower(), series.symbol[:2].lower() + series.symbol[2:]):
        response = api.get(f"/api/v1/market/history/{spelled}")
        assert response.status_code == 200
        assert response.json() == {"symbol": series.symbol, "data": series.expected_1m()}


def test_history_fill(api: TestClient, series: Series) -> None:
    data = get(api, series.symbol, start=iso(BASE), end=iso(BASE + 10 * MINUTE), fill="true")
    expected = series.expected_1m()
    flat = {
        "open": "202.00000000",
        "high": "202.00000000",
        "low": "202.00000000",
        "close": "202.00000000",
        "volume": "0.00000000",
    }
    assert data == [
        *expected[:4],
        {"timestamp": "2024-08-09T00:04:00.000Z", **flat},
        {"timestamp": "2024-08-09T00:05:00.000Z", **flat},
        expected[4],
    ]


def test_history_5m_comes_from_trades_when_nothing_is_stored(api: TestClient, series: Series) -> None:
    data = get(api, series.symbol, interval="5m", start=iso(BASE), end=iso(BASE + HOUR))
    assert data == oracle(series.binance, 5 * MINUTE)
    assert [c["timestamp"] for c in data] == ["2024-08-09T00:00:00.000Z", "2024-08-09T00:05:00.000Z"]
    assert data[0]["open"] == "1.00000000" and data[0]["high"] == "999.00000000"


def test_history_1h_computes_buckets_after_the_last_stored_candle(api: TestClient, series: Series) -> None:
    data = get(api, series.symbol, interval="1h", start=iso(BASE - 2 * HOUR), end=iso(BASE + HOUR))
    assert data == [stored(series.h_prev), *oracle(series.binance, HOUR)]


@pytest.mark.parametrize(
    ("start", "end", "minutes"),
    [
        (BASE + 90 * NS, BASE + 3 * MINUTE, [2]),  # start applies to the open time: minute 1 opened before it
        (BASE + MINUTE, BASE + 2 * MINUTE, [1]),  # start inclusive, end exclusive
        (BASE + 150 * NS, BASE + 6 * MINUTE, [3]),  # end exclusive: minute 6 opens at end
        (BASE + 150 * NS, BASE + 6 * MINUTE + 1, [3, 6]),
        (BASE + 4 * MINUTE, BASE + 6 * MINUTE, []),
        (BASE + 6 * MINUTE, None, [6]),  # start only: 500 intervals from it
        (None, BASE + 3 * MINUTE, [0, 1, 2]),  # end only: 500 intervals before it
    ],
)
def test_history_range_bounds(
    api: TestClient, series: Series, start: int | None, end: int | None, minutes: list[int]
) -> None:
    params = {k: iso(v) for k, v in (("start", start), ("end", end)) if v is not None}
    data = get(api, series.symbol, **params)
    by_minute = {c["timestamp"]: c for c in series.expected_1m()}
    assert data == [by_minute[iso(BASE + m * MINUTE)] for m in minutes]


def test_history_accepts_iso_variants(api: TestClient, series: Series) -> None:
    expected = series.expected_1m()[:3]
    for start, end in (
        ("2024-08-09T00:00:00Z", "2024-08-09T00:03:00Z"),
        ("2024-08-09T09:00:00+09:00", "2024-08-09T00:03:00.000000000Z"),
        ("2024-08-09T00:00:00", "2024-08-09T00:02:59.999999999+00:00"),
        ("2024-08-09", "2024-08-09T00:02:00.000000001Z"),
    ):
        assert get(api, series.symbol, start=start, end=end) == expected, (start, end)


def test_history_exchange(api: TestClient, series: Series) -> None:
    # okx: its stored candle; its one trade lies inside that stored bucket.
    data = get(api, series.symbol, exchange="OKX", start=iso(BASE), end=iso(BASE + 10 * MINUTE))
    assert data == [stored(series.okx_m1)]
    missing = api.get(f"/api/v1/market/history/{series.symbol}", params={"exchange": "kraken"})
    assert missing.status_code == 404 and error_of(missing)["code"] == "MARKET_001"


def test_history_alias(api: TestClient, series: Series) -> None:
    query = {"interval": "1m", "start": iso(BASE), "end": iso(BASE + 10 * MINUTE), "fill": "true"}
    canonical = api.get(f"/api/v1/market/history/{series.symbol}", params=query)
    alias = api.get(f"/v1/market/history/{series.symbol}", params=query)
    assert alias.status_code == 200 and alias.json() == canonical.json()


def test_history_default_is_last_500_ending_at_latest_trade(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("DF")
    trades = [
        TradeRow("binance", symbol, f"{m:04d}", D(1000) + D(m) / 100, D("0.1"), BASE + m * MINUTE + 5 * NS)
        for m in range(600)
    ]
    market.trades(trades)
    expected = oracle(trades, MINUTE)
    assert get(api, symbol) == expected[100:]
    assert get(api, symbol, start=iso(BASE)) == expected[:500]
    assert get(api, symbol, end=iso(BASE + 600 * MINUTE)) == expected[100:]
    five = get(api, symbol, interval="5m")
    assert five == oracle(trades, 5 * MINUTE)  # 120 five-minute candles: all within the last 500


@pytest.mark.parametrize(("interval", "step"), [("1m", MINUTE), ("5m", 5 * MINUTE), ("1h", HOUR), ("1d", DAY)])
def test_history_5000_candles_is_the_limit(api: TestClient, series: Series, interval: str, step: int) -> None:
    start = BASE - 4000 * step
    ok = api.get(
        f"/api/v1/market/history/{series.symbol}",
        params={"interval": interval, "start": iso(start), "end": iso(start + 5000 * step)},
    )
    assert ok.status_code == 200, ok.text
    too_many = api.get(
        f"/api/v1/market/history/{series.symbol}",
        params={"interval": interval, "start": iso(start), "end": iso(start + 5000 * step + 1)},
    )
    assert too_many.status_code == 400
    error = error_of(too_many)
    assert error["code"] == "BAD_REQUEST" and error["message"] == "Bad request"
    assert error["details"]["max_candles"] == 5000  # type: ignore[index]


def test_history_5000_even_without_candles(api: TestClient, series: Series) -> None:
    start = 946_684_800 * NS  # 2000-01-01
    response = api.get(
        f"/api/v1/market/history/{series.symbol}",
        params={"interval": "1d", "start": iso(start), "end": iso(start + 5000 * DAY)},
    )
    assert response.status_code == 200 and response.json()["data"] == []


def test_history_5000_filled_candles(api: TestClient, market: Market, new_symbol: Callable[[str], str]) -> None:
    symbol = new_symbol("FL")
    first, last = BASE, BASE + 4999 * MINUTE
    market.trades(
        [
            TradeRow("binance", symbol, "1", D("5"), D("1"), first),
            TradeRow("binance", symbol, "2", D("6"), D("2"), last),
        ]
    )
    data = get(api, symbol, start=iso(first), end=iso(first + 5000 * MINUTE), fill="true")
    assert len(data) == 5000
    assert data[0]["close"] == "5.00000000" and data[-1]["close"] == "6.00000000"
    assert data[-1]["volume"] == "2.00000000"
    flat = {**dict.fromkeys(("open", "high", "low", "close"), "5.00000000"), "volume": "0.00000000"}
    assert all(c == {"timestamp": c["timestamp"], **flat} for c in data[1:-1])
    assert len({c["timestamp"] for c in data}) == 5000
