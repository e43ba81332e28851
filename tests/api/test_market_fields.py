"""GET /market/history/{symbol}?fields=trades,vwap against a real embedded database.

Oracle: the rows the test inserted, worked in plain Python with exact fractions: per bucket the
distinct trades' count and sum(price x size) / sum(size) rounded half-even to 8 places, given only
where those trades add up to the candle's volume (the rule of the route's description). The memory
path (a read model in front of the store, and the fast lane) must answer byte for byte what the
store alone answers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from api import market_service
from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.market_memory import MemoryMarket
from api.read_model import MemTrade, NotCovered, ReadModel, VersionedCandle
from infra.store.repository import CandleRow as StoreCandle
from infra.store.repository import MarketRepository
from schemas.events import Interval
from tests.api.conftest import MINUTE, NS, CandleRow, Market, TradeRow, bearer, canon, error_of, test_api_settings
from tests.api.conftest import token_for as token
from tests.api.test_market_history import iso, oracle

T0 = 1_723_161_600 * NS  # 2024-08-09T00:00:00Z
D = Decimal


def half_even_8(value: Fraction) -> str:
    """Rounded half-even to 8 places, worked by hand: the integer part of value x 10^8 and the rest."""
    scaled = value * 10**8
    whole = scaled.numerator // scaled.denominator
    rest = scaled - whole
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    text = str(whole).rjust(9, "0")
    return f"{text[:-8]}.{text[-8:]}"


def stats(trades: list[TradeRow]) -> dict[int, tuple[int, Decimal, Fraction]]:
    """bucket -> (count, size sum, price x size sum) of the distinct trades, 1m buckets."""
    distinct = {(t.ts_ns, t.trade_id): t for t in trades}.values()
    out: dict[int, list[TradeRow]] = defaultdict(list)
    for t in distinct:
        out[t.ts_ns - t.ts_ns % MINUTE].append(t)
    return {
        b: (
            len(ts),
            sum((t.size for t in ts), D(0)),
            sum((Fraction(t.price) * Fraction(t.size) for t in ts), Fraction()),
        )
        for b, ts in out.items()
    }


def scenario(symbol: str) -> tuple[list[TradeRow], list[CandleRow]]:
    """Ten minutes of trades on `binance`; minutes 0-5 stored as candles built from them, except:
    minute 2's stored candle lacks its last trade (it came after the candle was final), minute 3's
    candle is an imported bar (no trades stored in it: minute 3 has none). Minutes 6-9 are open
    buckets, computed from trades."""
    trades: list[TradeRow] = []
    for minute in range(10):
        if minute == 3:
            continue
        for i in range(4 + minute % 3):
            # thirds at the store's 8 places: the VWAP's quotients recur, so its rounding matters
            price = (D(1000 + (minute * 7 + i * 13) % 29) / 3).quantize(D("0.00000001"))
            size = D(1 + (i * 5 + minute) % 7) / 1000
            trades.append(TradeRow("binance", symbol, f"{minute:02d}-{i}", price, size, T0 + minute * MINUTE + i * NS))
    candles = []
    for minute in range(6):
        bucket = sorted((t for t in trades if t.ts_ns // MINUTE == (T0 + minute * MINUTE) // MINUTE),
                        key=lambda t: (t.ts_ns, t.trade_id))  # fmt: skip
        if minute == 2:
            bucket = bucket[:-1]  # the late trade: stored, but not in the candle
        if minute == 3:
            candles.append(CandleRow("binance", symbol, "1m", T0 + 3 * MINUTE, D(5), D(6), D(4), D(5), D("2.5")))
            continue
        prices = [t.price for t in bucket]
        volume = sum((t.size for t in bucket), D(0))
        candles.append(CandleRow("binance", symbol, "1m", T0 + minute * MINUTE, prices[0], max(prices), min(prices),
                                 prices[-1], volume))  # fmt: skip
    return trades, candles


def expected(trades: list[TradeRow], candles: list[CandleRow], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The stored candles, then the open buckets, each with `fields` by the oracle's rule."""
    by_bucket = stats(trades)
    stored = {c.open_ns: c for c in candles}
    last_stored = max(stored)
    rows: list[dict[str, Any]] = []
    for c in sorted(stored.values(), key=lambda c: c.open_ns):
        ohlcv = {"open": canon(c.open), "high": canon(c.high), "low": canon(c.low), "close": canon(c.close)}
        rows.append({"timestamp": iso(c.open_ns), **ohlcv, "volume": canon(c.volume), "_bucket": c.open_ns,
                     "_volume": c.volume})  # fmt: skip
    for row in oracle(trades, MINUTE, lo=last_stored + MINUTE):
        bucket = next(b for b in by_bucket if iso(b) == row["timestamp"])
        rows.append({**row, "_bucket": bucket, "_volume": by_bucket[bucket][1]})
    out = []
    for row in rows:
        count, size, quote = by_bucket.get(row.pop("_bucket"), (0, D(0), Fraction()))
        exact = size == row.pop("_volume")
        if "trades" in fields:
            row["trades"] = count if exact else None
        if "vwap" in fields:
            row["vwap"] = half_even_8(quote / Fraction(size)) if exact and size else None
        out.append(row)
    return out


@pytest.fixture
def served(market: Market, new_symbol: Callable[[str], str]) -> tuple[str, list[TradeRow], list[CandleRow]]:
    symbol = new_symbol("FLD")
    trades, candles = scenario(symbol)
    market.trades(trades)
    market.trades(trades[:3])  # re-delivered: counted once, as `trades FINAL` and the candle agent do
    market.candles(candles)
    return symbol, trades, candles


RANGE = {"start": "2024-08-09T00:00:00Z", "end": "2024-08-09T00:10:00Z"}


def test_trades_and_vwap_are_exact_where_the_stored_trades_are_the_candles_and_null_elsewhere(
    api: TestClient, served: tuple[str, list[TradeRow], list[CandleRow]]
) -> None:
    symbol, trades, candles = served
    body = api.get(f"/api/v1/market/history/{symbol}", params={**RANGE, "fields": "trades,vwap"}).json()
    assert body["symbol"] == symbol
    assert body["data"] == expected(trades, candles, ("trades", "vwap"))
    by_minute = {row["timestamp"]: row for row in body["data"]}
    assert by_minute[iso(T0 + 2 * MINUTE)]["trades"] is None  # a late trade: not the candle's trades
    assert by_minute[iso(T0 + 3 * MINUTE)]["vwap"] is None  # an imported bar: no trades stored
    assert by_minute[iso(T0)]["trades"] == 4 and by_minute[iso(T0 + 9 * MINUTE)]["trades"] == 4  # stored, open
    # OHLCV is the plain history's, candle for candle; only the keys asked for are added
    plain = api.get(f"/api/v1/market/history/{symbol}", params=RANGE).json()["data"]
    assert [{k: v for k, v in row.items() if k not in ("trades", "vwap")} for row in body["data"]] == plain


@pytest.mark.parametrize(
    ("fields", "keys"),
    [("vwap", ("vwap",)), ("trades", ("trades",)), ("VWAP, trades", ("trades", "vwap")), ("vwap,vwap", ("vwap",))],
)
def test_fields_are_rendered_in_one_order_whatever_order_they_are_asked_in(
    api: TestClient, served: tuple[str, list[TradeRow], list[CandleRow]], fields: str, keys: tuple[str, ...]
) -> None:
    symbol, trades, candles = served
    response = api.get(f"/v1/market/history/{symbol.lower()}", params={**RANGE, "fields": fields})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data == expected(trades, candles, keys)
    assert all(list(row)[6:] == list(keys) for row in data)


def test_filled_candles_have_no_trades(api: TestClient, market: Market, new_symbol: Callable[[str], str]) -> None:
    symbol = new_symbol("FLF")
    trades = [
        TradeRow("binance", symbol, "a", D("10"), D("1"), T0),
        TradeRow("binance", symbol, "b", D("12"), D("3"), T0 + 3 * MINUTE),
    ]
    market.trades(trades)
    body = api.get(f"/api/v1/market/history/{symbol}", params={**RANGE, "fill": "true", "fields": "trades,vwap"}).json()
    assert [(r["timestamp"], r["volume"], r["trades"], r["vwap"]) for r in body["data"]] == [
        (iso(T0), canon(D(1)), 1, "10.00000000"),
        (iso(T0 + MINUTE), canon(D(0)), 0, None),
        (iso(T0 + 2 * MINUTE), canon(D(0)), 0, None),
        (iso(T0 + 3 * MINUTE), canon(D(3)), 1, "12.00000000"),
    ]


def test_vwap_rounds_half_to_even(api: TestClient, market: Market, new_symbol: Callable[[str], str]) -> None:
    symbol = new_symbol("FLR")
    market.trades([  # minute 0: vwap 1.000000015 exactly -> ...02; minute 1: 1.000000025 -> ...02
        TradeRow("binance", symbol, "a", D("1.00000001"), D("1"), T0),
        TradeRow("binance", symbol, "b", D("1.00000002"), D("1"), T0 + 1),
        TradeRow("binance", symbol, "c", D("1.00000002"), D("1"), T0 + MINUTE),
        TradeRow("binance", symbol, "d", D("1.00000003"), D("1"), T0 + MINUTE + 1),
    ])  # fmt: skip
    body = api.get(f"/api/v1/market/history/{symbol}", params={**RANGE, "fields": "vwap"}).json()
    assert [r["vwap"] for r in body["data"]] == ["1.00000002", "1.00000002"]


@pytest.mark.parametrize("fields", ["foo", "", "trades,foo", ",", "trades;vwap", "volume"])
def test_unknown_field_names_are_400(
    api: TestClient, served: tuple[str, list[TradeRow], list[CandleRow]], fields: str
) -> None:
    symbol, _, _ = served
    for prefix in ("/api/v1", "/v1"):
        response = api.get(f"{prefix}/market/history/{symbol}", params={"fields": fields})
        assert response.status_code == 400, (fields, response.text)
        error = error_of(response)
        assert error["code"] == "BAD_REQUEST"
        assert error["details"] == {
            "errors": [{"field": "query.fields", "reason": "comma-separated names among trades, vwap"}]
        }


# --- memory: the same answers --------------------------------------------------------------


def _model(symbol: str, trades: list[TradeRow], candles: list[CandleRow]) -> ReadModel:
    """What the API's consumer would hold: the trades and the candles, warm from the epoch on."""
    model = ReadModel()
    model.apply_trades("binance", symbol, [MemTrade(t.ts_ns, t.trade_id, t.price, t.size) for t in trades])
    for c in candles:
        row = StoreCandle(c.open_ns, c.open, c.high, c.low, c.close, c.volume)
        model.apply_candle("binance", symbol, "1m", VersionedCandle(1, row))
    model.warm("binance", symbol, [], {i.value: (0, []) for i in Interval}, None)
    return model


@pytest.fixture
def memory_store(
    served: tuple[str, list[TradeRow], list[CandleRow]], client_factory: Callable[[], Client]
) -> Iterator[tuple[MarketRepository, MemoryMarket]]:
    symbol, trades, candles = served
    store = MarketRepository(client_factory, symbols_ttl_s=0)
    memory = MemoryMarket(_model(symbol, trades, candles), store)
    yield store, memory
    store.close()


CASES: list[tuple[int | None, int | None, bool, tuple[str, ...]]] = [
    (T0, T0 + 10 * MINUTE, False, ("trades", "vwap")),
    (T0 + 2 * MINUTE + 1, None, True, ("vwap",)),
    (None, None, False, ("trades",)),
    (None, T0 + 7 * MINUTE, True, ("trades", "vwap")),
]


@pytest.mark.parametrize(("start", "end", "fill", "fields"), CASES)
def test_memory_answers_what_the_store_answers(
    served: tuple[str, list[TradeRow], list[CandleRow]],
    memory_store: tuple[MarketRepository, MemoryMarket],
    start: int | None,
    end: int | None,
    fill: bool,
    fields: tuple[str, ...],
) -> None:
    symbol = served[0]
    store, memory = memory_store
    args = (symbol, Interval.M1, start, end, "binance", fill, fields)
    want = market_service.history_fields_body(store, *args)
    assert market_service.history_fields_body(memory, *args) == want
    with pytest.raises(NotCovered):  # memory alone has no trades per stored candle: the threadpool's store answers
        market_service.history_fields_body(memory.only, *args)
    # without `fields`, the candles from memory are the store's, so `fields` only adds keys
    plain = market_service.history_body(memory.only, *args[:-1])
    assert plain == market_service.history_body(store, *args[:-1])
    assert want.count(b'"timestamp"') == plain.count(b'"timestamp"')


def test_the_served_app_with_memory_and_the_fast_lane_answers_fields_as_the_store_does(
    served: tuple[str, list[TradeRow], list[CandleRow]],
    memory_store: tuple[MarketRepository, MemoryMarket],
    key_repository: ApiKeyRepository,
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    symbol = served[0]
    store, memory = memory_store
    store.memory = memory
    app = create_app(repository=store, api_settings=test_api_settings(), key_repository=key_repository)
    routed: list[str] = []
    real = market_service.history_fields_body

    def counted(*args: Any) -> bytes:
        routed.append("route")
        return real(*args)

    monkeypatch.setattr(market_service, "history_fields_body", counted)
    with TestClient(app, headers=bearer(token("fields-memory"))) as client:
        for params in ({**RANGE, "fields": "trades,vwap"}, {"fields": "vwap", "fill": "true"}):
            got = client.get(f"/api/v1/market/history/{symbol}", params=params)
            want = api.get(f"/api/v1/market/history/{symbol}", params=params)  # the test app: no memory
            assert got.status_code == 200 and got.content == want.content
        assert len(routed) == 4  # the lane left both to the route (`fields` is not one of its parameters)
        plain = client.get(f"/api/v1/market/history/{symbol}", params=RANGE)  # the lane, from memory
        assert plain.content == api.get(f"/api/v1/market/history/{symbol}", params=RANGE).content
        assert len(routed) == 4
        # an export is never the lane's JSON: the route negotiates (and refuses what it cannot give)
        for accept, status, kind in (
            ("text/csv", 200, "text/csv; charset=utf-8"),
            ("image/png", 406, "application/json"),
        ):
            got = client.get(f"/api/v1/market/history/{symbol}", params=RANGE, headers={"Accept": accept})
            assert (got.status_code, got.headers["content-type"]) == (status, kind)
            if status == 200:
                want = api.get(f"/api/v1/market/history/{symbol}", params=RANGE, headers={"Accept": accept})
                assert got.content == want.content
