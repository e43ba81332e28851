"""Bulk export of /market/trades and /market/history as CSV and Parquet (api/export.py), against a
real embedded database.

Oracles: the JSON pages of the same request, concatenated (the JSON routes are tested against the
inserted rows elsewhere), read back independently: the CSV with the `csv` module, the Parquet with
pyarrow (its decimals and timestamps turned into the JSON's spellings here, not by api.models). The
export's page size is made small so that every range spans many store pages and row groups."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from api import export, records_service
from api.export import Format, negotiate
from infra.store.records_repository import RecordsRepository
from infra.store.repository import MarketRepository
from tests.api.conftest import DAY, MINUTE, NS, CandleRow, Market, TradeRow, error_of
from tests.api.test_market_history import iso

T0 = 1_723_161_600 * NS  # 2024-08-09T00:00:00Z
D = Decimal
CSV = {"Accept": "text/csv"}
PARQUET = {"Accept": "application/vnd.apache.parquet"}
PAGE = 37  # the export's store page in these tests


@pytest.fixture(autouse=True)
def _small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "EXPORT_PAGE", PAGE)


def json_pages(api: TestClient, path: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        body = api.get(path, params={**params, **({"cursor": cursor} if cursor else {})}).json()
        out.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out


def read_csv(content: bytes) -> list[dict[str, str]]:
    text = content.decode("utf-8")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")  # RFC 4180 line ends
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _spelled(value: Any) -> Any:
    """A Parquet value in the JSON's spelling, worked out here: decimals at 8 places, UTC ms `Z`."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return f"{value:.8f}"
    if isinstance(value, datetime):
        utc = value.astimezone(UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    return value


def read_parquet(content: bytes) -> tuple[list[dict[str, Any]], pq.ParquetFile]:
    file = pq.ParquetFile(io.BytesIO(content))
    rows = file.read().to_pylist()
    return [{k: _spelled(v) for k, v in row.items()} for row in rows], file


def as_strings(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """JSON items as CSV cells: null is an empty cell, integers their digits."""
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]


# --- trades --------------------------------------------------------------------------------


@pytest.fixture
def traded(market: Market, new_symbol: Callable[[str], str]) -> tuple[str, int]:
    """A symbol with 500 trades on binance over 2500 s (pairs share an event time, some a ms) and
    a few on okx; the number is not a multiple of PAGE."""
    symbol = new_symbol("EXT")
    rows = [
        TradeRow("binance", symbol, f"b{i:05d}", D(60_000 + (i * 37) % 101) / 8, D(i % 13 + 1) / 1000,
                 T0 + (i // 2) * 10 * NS + (i % 3) * 400_000)
        for i in range(500)
    ]  # fmt: skip
    rows += [TradeRow("okx", symbol, f"o{i}", D("1.5"), D("2"), T0 + i * NS) for i in range(5)]
    market.trades(rows)
    market.trades(rows[:40])  # re-delivered: one row each
    return symbol, 500


RANGE = {"start": "2024-08-09T00:00:00Z", "end": "2024-08-09T01:00:00Z"}


def test_a_trades_export_is_every_json_page_concatenated(api: TestClient, traded: tuple[str, int]) -> None:
    symbol, count = traded
    path = f"/api/v1/market/trades/{symbol}"
    want = json_pages(api, path, **RANGE, limit=1000)
    assert len(want) == count and count > 10 * PAGE

    response = api.get(path, params=RANGE, headers=CSV)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == f'attachment; filename="{symbol}_binance_trades.csv"'
    assert "content-length" not in response.headers  # streamed
    assert "x-ratelimit-remaining" in response.headers and "x-request-id" in response.headers
    assert read_csv(response.content) == as_strings(want)

    response = api.get(path, params=RANGE, headers=PARQUET)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    rows, file = read_parquet(response.content)
    assert rows == want
    assert file.metadata.num_row_groups == -(-count // PAGE)  # a row group per store page
    assert file.schema_arrow.field("price").type == pa.decimal128(38, 8)
    assert file.schema_arrow.field("timestamp").type == pa.timestamp("ms", tz="UTC")
    assert file.schema_arrow.metadata[b"exchange"] == b"binance"
    # another venue by name, and the /v1 alias
    okx = api.get(f"/v1/market/trades/{symbol.lower()}", params={**RANGE, "exchange": "okx"}, headers=CSV)
    assert [r["trade_id"] for r in read_csv(okx.content)] == [f"o{i}" for i in range(5)]


def test_an_export_goes_on_after_a_cursor_and_an_explicit_limit_is_one_page(
    api: TestClient, traded: tuple[str, int]
) -> None:
    symbol, _ = traded
    path = f"/api/v1/market/trades/{symbol}"
    first = api.get(path, params={**RANGE, "limit": 123}).json()
    rest = json_pages(api, path, **RANGE, limit=1000, cursor=first["next_cursor"])
    after = api.get(path, params={**RANGE, "cursor": first["next_cursor"]}, headers=CSV)
    assert read_csv(after.content) == as_strings(rest)
    # `limit` given: the JSON's page, in CSV, with the JSON's next cursor in a header
    page = api.get(path, params={**RANGE, "limit": 123}, headers=CSV)
    assert read_csv(page.content) == as_strings(first["data"])
    assert page.headers["x-next-cursor"] == first["next_cursor"]
    last = api.get(path, params={**RANGE, "limit": 1000, "cursor": first["next_cursor"]}, headers=PARQUET)
    assert read_parquet(last.content)[0] == rest and "x-next-cursor" not in last.headers


def test_an_empty_range_is_a_header_or_a_file_without_rows(api: TestClient, traded: tuple[str, int]) -> None:
    symbol, _ = traded
    empty = {"start": "2024-08-10T00:00:00Z", "end": "2024-08-10T01:00:00Z"}
    assert api.get(f"/api/v1/market/trades/{symbol}", params=empty, headers=CSV).content == (
        b"trade_id,price,size,side,timestamp\r\n"
    )
    rows, file = read_parquet(api.get(f"/api/v1/market/trades/{symbol}", params=empty, headers=PARQUET).content)
    assert rows == [] and file.schema_arrow.names == ["trade_id", "price", "size", "side", "timestamp"]


@pytest.mark.parametrize("cursor", ["abc", "12x:b1", "-5:b1", "99999999999999999999:x", ""])
@pytest.mark.parametrize("headers", [CSV, PARQUET])
def test_a_tampered_cursor_is_400_before_anything_is_streamed(
    api: TestClient, traded: tuple[str, int], cursor: str, headers: dict[str, str]
) -> None:
    symbol, _ = traded
    response = api.get(f"/api/v1/market/trades/{symbol}", params={"cursor": cursor}, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = error_of(response)
    assert error["code"] == "BAD_REQUEST"


def test_other_bad_requests_keep_their_envelopes(api: TestClient, anon: TestClient, traded: tuple[str, int]) -> None:
    symbol, _ = traded
    assert error_of(api.get("/api/v1/market/trades/XYZQ-USDT", headers=CSV))["code"] == "MARKET_001"
    assert api.get("/api/v1/market/trades/BTC$USDT", headers=PARQUET).status_code == 400
    reversed_range = {"start": RANGE["end"], "end": RANGE["start"]}
    assert api.get(f"/api/v1/market/trades/{symbol}", params=reversed_range, headers=CSV).status_code == 400
    assert api.get(f"/api/v1/market/trades/{symbol}", params={"limit": 0}, headers=CSV).status_code == 400
    unauthenticated = anon.get(f"/api/v1/market/trades/{symbol}", headers=CSV)
    assert unauthenticated.status_code == 401 and error_of(unauthenticated)["code"] == "AUTH_FAILED"


def test_the_store_is_read_a_page_at_a_time_while_the_body_streams(
    repository: MarketRepository, traded: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    symbol, count = traded
    reads: list[int] = []
    real = RecordsRepository.trades

    def counted(self: RecordsRepository, *args: Any) -> Any:
        rows = real(self, *args)
        reads.append(len(rows))
        return rows

    monkeypatch.setattr(RecordsRepository, "trades", counted)
    response = records_service.trades_export(
        repository, Format.CSV, symbol, "binance", T0, T0 + DAY, limit=None, cursor=None
    )
    assert reads == [PAGE]  # the first page is read before the response starts, and only it

    async def drain() -> list[tuple[int, int]]:
        seen = []
        async for chunk in response.body_iterator:
            seen.append((len(reads), len(chunk)))
        return seen

    seen = asyncio.run(drain())
    pages = -(-count // PAGE)
    assert reads == [PAGE] * (pages - 1) + [count % PAGE]  # the last, short page ends the export
    # the header, then one chunk per page, each sent before the next page was read
    assert [n for n, _ in seen] == [1, 1, *range(2, pages + 1)]


# --- history -------------------------------------------------------------------------------


@pytest.fixture
def candled(market: Market, new_symbol: Callable[[str], str]) -> tuple[str, list[TradeRow]]:
    """Four days of a trade every 7 minutes (with stretches of several empty minutes) on binance,
    the first two days also stored as 1m candles built from them (each candle's own trades, so
    `fields` has values), then a week without trades, then trades again."""
    symbol = new_symbol("EXH")
    trades = [
        TradeRow("binance", symbol, f"t{i:05d}", D(100 + i % 17) / 4, D(i % 5 + 1) / 100, T0 + i * 7 * MINUTE + i % 50)
        for i in range(4 * 24 * 60 // 7)
    ]
    trades += [TradeRow("binance", symbol, f"u{i}", D(99), D(1), T0 + 11 * DAY + i * MINUTE) for i in range(3)]
    market.trades(trades)
    market.candles(
        [
            CandleRow("binance", symbol, "1m", t.ts_ns - t.ts_ns % MINUTE, t.price, t.price, t.price, t.price, t.size)
            for t in trades
            if t.ts_ns < T0 + 2 * DAY
        ]
    )
    return symbol, trades


def test_a_history_export_is_the_json_history_without_the_5000_candle_limit(
    api: TestClient, candled: tuple[str, list[TradeRow]]
) -> None:
    symbol, trades = candled
    path = f"/api/v1/market/history/{symbol}"
    # 4 days of 1m is 5760 buckets: over the JSON limit, so the oracle is two JSON calls
    whole = {"start": iso(T0), "end": iso(T0 + 4 * DAY), "fields": "trades,vwap"}
    assert api.get(path, params=whole).status_code == 400
    want = [
        row
        for start, end in ((T0, T0 + 2 * DAY), (T0 + 2 * DAY, T0 + 4 * DAY))
        for row in api.get(path, params={**whole, "start": iso(start), "end": iso(end)}).json()["data"]
    ]
    assert len(want) == len([t for t in trades if t.ts_ns < T0 + 4 * DAY]) > 10 * PAGE
    assert any(row["trades"] == 1 for row in want) and all(row["trades"] is not None for row in want)

    response = api.get(path, params=whole, headers=CSV)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'attachment; filename="{symbol}_binance_candles_1m.csv"'
    assert read_csv(response.content) == as_strings(want)
    rows, file = read_parquet(api.get(path, params=whole, headers=PARQUET).content)
    assert rows == want
    assert file.schema_arrow.field("trades").type == pa.int64()
    assert file.schema_arrow.metadata[b"interval"] == b"1m"


@pytest.mark.parametrize("fill", [False, True])
@pytest.mark.parametrize("interval", ["1m", "5m", "1h"])
def test_history_exports_equal_the_json_for_every_interval_with_and_without_fill(
    api: TestClient, candled: tuple[str, list[TradeRow]], fill: bool, interval: str
) -> None:
    symbol, _ = candled
    path = f"/api/v1/market/history/{symbol}"
    params = {"interval": interval, "start": iso(T0 + DAY + 13 * NS), "end": iso(T0 + DAY + 20 * 3600 * NS),
              "fill": str(fill).lower(), "fields": "vwap"}  # fmt: skip
    want = api.get(path, params=params).json()["data"]
    assert len(want) > 2
    assert read_csv(api.get(path, params=params, headers=CSV).content) == as_strings(want)
    assert read_parquet(api.get(path, params=params, headers=PARQUET).content)[0] == want
    plain = {k: v for k, v in params.items() if k != "fields"}
    assert read_csv(api.get(path, params=plain, headers=CSV).content) == as_strings(
        api.get(path, params=plain).json()["data"]
    )


def test_a_long_stretch_without_candles_costs_one_query_not_a_page_per_stretch(
    api: TestClient, candled: tuple[str, list[TradeRow]], monkeypatch: pytest.MonkeyPatch
) -> None:
    symbol, trades = candled
    calls: list[str] = []
    real_candles, real_next = MarketRepository.candles, RecordsRepository.next_candle

    def candles(self: MarketRepository, *args: Any) -> Any:
        calls.append("candles")
        return real_candles(self, *args)

    def next_candle(self: RecordsRepository, *args: Any) -> Any:
        calls.append("next")
        return real_next(self, *args)

    monkeypatch.setattr(MarketRepository, "candles", candles)
    monkeypatch.setattr(RecordsRepository, "next_candle", next_candle)
    # a year of 1m from 2024-01-01: 527,040 buckets, with candles only in the 4 days and on day 11
    params = {"start": "2024-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}
    rows = read_csv(api.get(f"/api/v1/market/history/{symbol}", params=params, headers=CSV).content)
    assert [r["timestamp"] for r in rows] == sorted({iso(t.ts_ns - t.ts_ns % MINUTE) for t in trades})
    assert calls.count("next") <= 3  # before the 4 days (none: the first span starts there), after, after day 11
    # a span of PAGE buckets at a time where there are candles (the 4 days, day 11's three minutes),
    # and one empty span before each of the 3 jumps
    assert calls.count("candles") <= -(-4 * 1440 // PAGE) + 1 + 3


def test_a_filled_export_continues_across_store_pages(
    api: TestClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("EXF")
    # a trade every 3 minutes: every page of PAGE buckets ends inside a gap the next page continues
    market.trades([TradeRow("binance", symbol, f"f{i}", D(10 + i), D(1), T0 + i * 3 * MINUTE) for i in range(100)])
    params = {"start": iso(T0), "end": iso(T0 + 300 * MINUTE), "fill": "true"}
    want = api.get(f"/api/v1/market/history/{symbol}", params=params).json()["data"]
    assert len(want) == 298  # the first candle to the last, every minute
    assert read_csv(api.get(f"/api/v1/market/history/{symbol}", params=params, headers=CSV).content) == as_strings(want)


# --- negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, Format.JSON),
        ("", Format.JSON),
        ("*/*", Format.JSON),
        ("application/json", Format.JSON),
        ("application/*", Format.JSON),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", Format.JSON),  # a browser
        ("text/csv", Format.CSV),
        ("TEXT/CSV; charset=utf-8; header=present", Format.CSV),
        ("text/*", Format.CSV),
        ("application/vnd.apache.parquet", Format.PARQUET),
        ("text/csv;q=0.5, application/vnd.apache.parquet", Format.PARQUET),
        ("application/json;q=0.2, text/csv;q=0.9", Format.CSV),
        ("*/*, application/json;q=0", Format.CSV),  # JSON refused by name: the next offered type
        ("application/*;q=0.3, application/vnd.apache.parquet;q=0.4", Format.PARQUET),
        ("text/csv;q=bogus, application/json", Format.JSON),  # a range with a bad q is ignored
        ("application/vnd.apache.parquet, text/csv", Format.CSV),  # equal q: the earlier offered
    ],
)
def test_negotiation_picks_the_highest_quality_then_json_csv_parquet(accept: str | None, chosen: Format) -> None:
    assert negotiate(accept) is chosen


@pytest.mark.parametrize(
    "accept",
    ["application/xml", "text/html", "garbage", "application/json;q=0", "*/*;q=0", "text/csv;q=2", "image/*"],
)
def test_an_accept_that_allows_none_of_the_formats_is_406(
    api: TestClient, traded: tuple[str, int], accept: str
) -> None:
    symbol, _ = traded
    for path in (f"/api/v1/market/trades/{symbol}", f"/v1/market/history/{symbol}"):
        response = api.get(path, headers={"Accept": accept})
        assert response.status_code == 406, (path, accept, response.text)
        assert response.headers["content-type"] == "application/json"
        error = error_of(response)
        assert error["code"] == "BAD_REQUEST"
        assert error["details"] == {
            "reason": "not acceptable",
            "accept": accept,
            "supported": ["application/json", "text/csv", "application/vnd.apache.parquet"],
        }


def test_json_stays_the_default(api: TestClient, traded: tuple[str, int]) -> None:
    symbol, _ = traded
    for path in (f"/api/v1/market/trades/{symbol}", f"/api/v1/market/history/{symbol}"):
        plain = api.get(path)
        assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
        for accept in ("*/*", "application/json", "application/json, text/csv;q=0.5"):
            assert api.get(path, headers={"Accept": accept}).content == plain.content


def test_the_openapi_document_lists_the_export_types_and_the_406(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/market/trades/{symbol}", "/api/v1/market/history/{symbol}"):
        responses = paths[path]["get"]["responses"]
        assert set(responses["200"]["content"]) == {
            "application/json",
            "text/csv",
            "application/vnd.apache.parquet",
        }
        assert responses["406"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    fields = next(p for p in paths["/api/v1/market/history/{symbol}"]["get"]["parameters"] if p["name"] == "fields")
    assert fields["schema"]["pattern"] == "^(trades|vwap)(,(trades|vwap))*$"
