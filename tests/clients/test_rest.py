"""`Client` and `AsyncClient` against the real API served over HTTP(S): every route's answer parses
into the client's model, which writes back exactly the JSON the server sent; error codes become
their exceptions; 429 `Retry-After` is waited for; API keys, TLS with a CA file."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from clickhouse_connect.driver.client import Client as DbClient
from entasis_client import (
    AsyncClient,
    AuthError,
    Client,
    ConnectionFailed,
    EntasisError,
    FeedUnavailable,
    Forbidden,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidSymbol,
    NotFound,
    PredictionUnavailable,
    RateLimited,
    RetryPolicy,
    SymbolNotFound,
    Unavailable,
    ValidationFailed,
)
from entasis_client import models as m
from fastapi import FastAPI

from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, generate_key
from api.ws.protocol import format_levels
from infra.store.repository import MarketRepository
from schemas.codecs.risk import table as risk_table
from schemas.risk import RiskMethod
from tests.api.conftest import HOUR, MINUTE, NS, CandleRow, Market, TradeRow, new_account, token_for
from tests.api.test_prediction_api import agent_rows, store
from tests.api.test_risk_api import estimate
from tests.clients.conftest import make_app, serve_http, test_api_settings

T0 = 1_723_161_600 * NS  # 2024-08-09T00:00:00Z
D = Decimal


def raw(base_url: str, token: str, path: str, **params: Any) -> Any:
    """The server's JSON, read without the client."""
    response = httpx.get(base_url + path, params=params, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def wire(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_unset=True)


@pytest.fixture
def token() -> str:
    return token_for(new_account("cl"))


@pytest.fixture
def api(base_url: str, token: str) -> Iterator[Client]:
    with Client(base_url, token=token) as client:
        yield client


def seed_market(market: Market, symbol: str) -> None:
    """Trades on two venues (binance the latest) and three stored 1m candles."""
    trades = [
        TradeRow("binance", symbol, f"t{i}", D(100 + i) / 4, D(i + 1) / 1000, T0 + i * 20 * NS) for i in range(9)
    ]
    trades.append(TradeRow("okx", symbol, "o1", D("24.5"), D("3"), T0 - HOUR))
    market.trades(trades)
    market.candles([
        CandleRow("binance", symbol, "1m", T0 + i * MINUTE, D(25 + i), D(26 + i), D(24 + i), D("25.5") + i, D("0.1"))
        for i in range(3)
    ])


def test_price_and_history_parse_into_models_equal_to_the_raw_json(
    api: Client, base_url: str, token: str, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("CP")
    seed_market(market, symbol)

    price = api.price(symbol.lower())
    assert isinstance(price, m.PriceResponse)
    assert wire(price) == raw(base_url, token, f"/api/v1/market/price/{symbol}")
    assert price.symbol == symbol and price.exchange == "binance"
    assert price.price == D("27") and isinstance(price.price, Decimal)
    assert price.timestamp == dt.datetime(2024, 8, 9, 0, 2, 40, tzinfo=dt.UTC)
    assert api.price(symbol, exchange="okx").price == D("24.5")

    start = dt.datetime(2024, 8, 9, tzinfo=dt.UTC)
    history = api.history(symbol, interval="1m", start=start, exchange="binance")
    assert wire(history) == raw(
        base_url, token, f"/api/v1/market/history/{symbol}", interval="1m", start="2024-08-09T00:00:00Z",
        exchange="binance",
    )
    assert [c.timestamp.minute for c in history.data] == [0, 1, 2]
    assert history.data[0].open == D(25) and history.data[0].volume > 0
    # naive datetimes are UTC, strings go as they are
    window = api.history(symbol, start=dt.datetime(2024, 8, 9, 0, 1), end="2024-08-09T00:02:00Z")
    assert window.data == history.data[1:2]


async def test_the_async_client_reads_the_same(
    base_url: str, token: str, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("CA")
    seed_market(market, symbol)
    async with AsyncClient(base_url, token=token) as api:
        price = await api.price(symbol)
        history = await api.history(symbol, start="2024-08-09")
        trades = [t async for t in api.iter_trades(symbol, start="2024-08-09", page_size=4)]
        with pytest.raises(SymbolNotFound):
            await api.price("NOPE1-USDT")
    assert price.price == D("27")
    assert len(history.data) == 3
    assert [t.trade_id for t in trades] == [f"t{i}" for i in range(9)]


def test_every_route_parses_into_its_model(
    api_app: FastAPI,
    api: Client,
    base_url: str,
    token: str,
    db: DbClient,
    market: Market,
    new_symbol: Callable[[str], str],
) -> None:
    symbol = new_symbol("CR")
    seed_market(market, symbol)
    market.quality("binance", symbol, "book_gap", T0 + 5 * NS)
    market.quality("binance", symbol, "book_resync", T0 + 6 * NS)

    # order book: the live book the app's hub holds
    api_app.state.market_hub.publish_book(
        "binance", symbol, format_levels([["27", "1"], ["26.5", "2"]]), format_levels([["27.5", "3"]]), T0 + 170 * NS
    )
    book = api.orderbook(symbol, depth=1)
    assert wire(book) == raw(base_url, token, f"/api/v1/market/orderbook/{symbol}", depth=1)
    assert book.bids == [[D(27), D(1)]] and book.asks == [[D("27.5"), D(3)]]

    page = api.trades(symbol, start="2024-08-09T00:00:00Z", limit=4)
    assert wire(page) == raw(base_url, token, f"/api/v1/market/trades/{symbol}", start="2024-08-09T00:00:00Z", limit=4)
    assert len(page.data) == 4 and page.next_cursor is not None
    assert [t.trade_id for t in api.iter_trades(symbol, start=dt.date(2024, 8, 9), page_size=4)] == [
        f"t{i}" for i in range(9)
    ]

    symbols = api.symbols()
    assert wire(symbols) == raw(base_url, token, "/api/v1/market/symbols")
    mine = [s for s in symbols.data if s.symbol == symbol]
    assert [(s.exchange, s.trades) for s in mine] == [("binance", 9), ("okx", 1)]

    quality = api.quality(symbol, kind=["book_gap", "book_resync"], start="2024-08-09")
    assert wire(quality) == raw(base_url, token, f"/api/v1/market/quality/{symbol}", kind="book_gap,book_resync",
                                start="2024-08-09")
    assert [q.kind for q in quality.data] == ["book_gap", "book_resync"]
    assert [q.kind for q in api.iter_quality(symbol, kind="book_resync", start="2024-08-09", page_size=1)] == [
        "book_resync"
    ]

    # analysis: a stored risk estimate, stored forecasts
    db.insert_arrow("risk_estimates", risk_table([estimate(symbol, RiskMethod.EWMA, T0 + HOUR, "1.25")]))
    market.trades([TradeRow("binance", symbol, "late", D(27), D(1), T0 + HOUR)])
    risk = api.risk(symbol)
    assert wire(risk) == raw(base_url, token, f"/api/v1/analysis/risk/{symbol}")
    assert (risk.method, risk.var_95) == ("ewma", D("1.25"))

    forecast_symbol = new_symbol("CF")
    preds, outs, bars = agent_rows(forecast_symbol, 60)
    store(db, market, forecast_symbol, preds, outs, bars)
    prediction = api.prediction(forecast_symbol, timeframe="1h", model="ensemble")
    assert wire(prediction) == raw(base_url, token, f"/api/v1/analysis/prediction/{forecast_symbol}",
                                   timeframe="1h", model="ensemble")
    assert 0 <= prediction.confidence <= 1 and prediction.direction in ("up", "down")
    metrics = api.prediction_metrics(forecast_symbol)
    assert wire(metrics) == raw(base_url, token, f"/api/v1/analysis/prediction/{forecast_symbol}/metrics")
    assert {(h.model, h.timeframe) for h in metrics.metrics} >= {("ensemble", "1h")}

    # portfolio, on the app's in-process bus
    opened = api.open_position(symbol, "0.5", "long", leverage=2)
    assert opened.status == "success"
    positions = api.positions()
    assert wire(positions) == raw(base_url, token, "/api/v1/portfolio/positions")
    assert [(p.position_id, p.size, p.leverage) for p in positions.positions] == [(opened.position_id, D("0.5"), D(2))]
    balance = api.balance()
    assert wire(balance) == raw(base_url, token, "/api/v1/portfolio/balance")
    assert balance.open_positions == 1
    closed = api.close_position(opened.position_id)
    assert (closed.position_id, closed.status) == (opened.position_id, "closed")
    assert api.positions().positions == []

    ready = api.ready()
    assert isinstance(ready, m.ReadinessResponse) and ready.status in ("ok", "unavailable")


def test_backtest_parses(api: Client, market: Market, new_symbol: Callable[[str], str]) -> None:
    symbol = new_symbol("CB")
    day = 24 * HOUR
    start = T0 - 12 * day
    closes = [D(100) + D(i % 7) - D(i % 5) for i in range(12 * 24)]
    market.candles(
        [
            CandleRow("binance", symbol, "1h", start + i * HOUR, c, c + 1, c - 1, c, D(1))
            for i, c in enumerate(closes)
        ]
    )
    market.trades([TradeRow("binance", symbol, "b1", closes[-1], D(1), start + len(closes) * HOUR - 1)])
    report = api.risk_backtest(symbol, start="2024-08-01", method="historical", window_days=3)
    assert isinstance(report, m.BacktestResponse) and report.symbol == symbol
    assert [r.method for r in report.results] == ["historical"]
    assert report.results[0].observations >= 1


def test_error_codes_become_their_exceptions(
    api: Client, base_url: str, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("CE")
    seed_market(market, symbol)

    with pytest.raises(InvalidSymbol) as malformed:
        api.price("BTC$USDT")
    error = malformed.value
    assert not isinstance(error, NotFound)
    assert (error.code, error.status, error.message) == ("MARKET_001", 400, "Invalid symbol")
    assert error.details == {"symbol": "BTC$USDT", "reason": "expected BASE-QUOTE, e.g. BTC-USDT"}
    assert error.request_id and len(error.request_id) == 32

    with pytest.raises(SymbolNotFound) as unknown:
        api.price("XYZQ1-USDT")
    assert isinstance(unknown.value, NotFound) and isinstance(unknown.value, InvalidSymbol)
    assert (unknown.value.code, unknown.value.status) == ("MARKET_001", 404)

    with pytest.raises(ValidationFailed) as bad:
        api.history(symbol, interval="2m")  # type: ignore[arg-type]
    assert bad.value.code == "BAD_REQUEST" and bad.value.details is not None
    assert bad.value.details["errors"][0]["field"] == "query.interval"

    with pytest.raises(NotFound) as missing:
        api.close_position("p-does-not-exist")
    assert missing.value.code == "NOT_FOUND"

    with pytest.raises(InsufficientBalance) as poor:
        api.open_position(symbol, "1000000", "long")
    assert (poor.value.code, poor.value.status) == ("PORT_001", 422)

    # no live book of this symbol: 503 MARKET_002 without Retry-After, raised at once
    slept: list[float] = []
    with Client(base_url, token=token_for(new_account()), sleep=slept.append) as once:
        with pytest.raises(FeedUnavailable) as no_book:
            once.orderbook(symbol)
        assert no_book.value.code == "MARKET_002" and isinstance(no_book.value, Unavailable)
        assert no_book.value.retry_after is None and slept == []

    with Client(base_url) as anonymous, pytest.raises(AuthError) as refused:
        anonymous.price(symbol)
    assert not isinstance(refused.value, Forbidden)
    assert (refused.value.code, refused.value.status) == ("AUTH_FAILED", 401)
    assert refused.value.details == {"reason": "credentials required"}

    with Client(base_url, token=token_for(new_account(), ["analysis:read"])) as narrow, pytest.raises(Forbidden) as no:
        narrow.price(symbol)
    assert (no.value.code, no.value.status) == ("FORBIDDEN", 403)

    with Client(base_url, token=token_for(new_account()), language="ko") as korean, pytest.raises(InvalidSymbol) as ko:
        korean.price("BTC$USDT")
    assert ko.value.message == "유효하지 않은 심볼"
    assert "MARKET_001 (400): 유효하지 않은 심볼" in str(ko.value)


def test_a_long_retry_after_is_raised_at_once_not_slept(
    base_url: str, token: str, db: DbClient, market: Market, new_symbol: Callable[[str], str]
) -> None:
    """A model warming up answers 503 AI_002 with Retry-After in candle intervals (hours): over
    `max_retry_after`, so the call raises at once with `retry_after` set."""
    symbol = new_symbol("CW")
    preds, _, bars = agent_rows(symbol, 30, min_scored=500)
    store(db, market, symbol, [p for p in preds if p.horizon.value == "1h"][-1:], [], bars)
    slept: list[float] = []
    with Client(base_url, token=token, sleep=slept.append) as api, pytest.raises(PredictionUnavailable) as warming:
        api.prediction(symbol)
    assert warming.value.code == "AI_002" and warming.value.status == 503
    assert warming.value.retry_after is not None and warming.value.retry_after > 60
    assert slept == []


class Recording(httpx.HTTPTransport):
    """The real transport, noting each answer's status and `Retry-After`."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.answers.append((response.status_code, response.headers.get("retry-after")))
        return response


def test_429_retry_after_is_honoured(
    repository: MarketRepository, key_repository: ApiKeyRepository, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("CL")
    seed_market(market, symbol)
    # a window long enough that three requests fit in it on a loaded machine, short enough to wait for
    app = make_app(repository, key_repository, test_api_settings(rate_limit="3/3 seconds"))
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)  # the server's window must pass for the retry to be let through

    with serve_http(app) as url:
        transport = Recording()
        with Client(url, token=token_for(new_account("rl")), sleep=sleep, transport=transport) as api:
            prices = [api.price(symbol).price for _ in range(4)]  # the 4th is over 3 in 3 seconds
            assert prices == [D(27)] * 4
            assert api.rate_limit is not None and api.rate_limit.limit == 3
        # five attempts for four calls: the 429, one wait of exactly what the server said, the retry
        assert [status for status, _ in transport.answers] == [200, 200, 200, 429, 200]
        retry_after = transport.answers[3][1]
        assert retry_after is not None and 1 <= int(retry_after) <= 3
        assert slept == [float(retry_after)]

        with Client(url, token=token_for(new_account("rl")), retry=RetryPolicy.never()) as once:
            for _ in range(3):
                once.price(symbol)
            with pytest.raises(RateLimited) as limited:
                once.price(symbol)
        error = limited.value
        assert (error.code, error.status) == ("RATE_LIMITED", 429)
        assert error.retry_after is not None and 1 <= error.retry_after <= 3
        assert error.details is not None and error.details["limit"] == 3

        # bounded: a client out of attempts raises the last 429
        transport = Recording()
        with Client(url, token=token_for(new_account("rl")), retry=RetryPolicy(max_attempts=2),
                    sleep=lambda s: None, transport=transport) as hasty:
            for _ in range(3):
                hasty.price(symbol)
            with pytest.raises(RateLimited):
                hasty.price(symbol)  # attempt 2 comes at once (sleep does nothing): still limited
        assert [status for status, _ in transport.answers] == [200, 200, 200, 429, 429]


def test_api_key_and_bearer_token(
    base_url: str, key_repository: ApiKeyRepository, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("CK")
    seed_market(market, symbol)
    account = new_account("key")
    new = generate_key()
    key_repository.insert(ApiKeyRecord(new.key_id, account, new.key_hash, ("market:read",)))
    with Client(base_url, api_key=new.key) as by_key:
        assert by_key.price(symbol).price == D(27)
        with pytest.raises(Forbidden):
            by_key.balance()  # the key has market:read only
    tokens = iter([token_for(account), token_for(account)])
    with Client(base_url, token=lambda: next(tokens), api_key=new.key) as both:  # the same account: accepted
        assert both.price(symbol).price == D(27)
    with Client(base_url, api_key=new.key[:-2] + "xx") as forged, pytest.raises(AuthError):
        forged.price(symbol)


def test_tls_with_a_ca_file(
    api_app: FastAPI, tls_files: tuple[Path, Path], token: str, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("CT")
    seed_market(market, symbol)
    cert, key = tls_files
    with serve_http(api_app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        assert url.startswith("https://")
        with Client(url, token=token, ca_file=cert) as api:
            assert api.price(symbol).price == D(27)
        slept: list[float] = []
        with Client(url, token=token, sleep=slept.append) as untrusting, pytest.raises(ConnectionFailed) as failed:
            untrusting.price(symbol)  # the system's trust store does not know the self-signed certificate
        assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value) and slept == []  # never retried
        with Client(url, token=token, verify=False) as unverified:
            assert unverified.price(symbol).price == D(27)


def test_idempotency_conflict_and_replay_on_the_real_api(
    api: Client, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("CI")
    seed_market(market, symbol)
    first = api.open_position(symbol, "0.1", "long", idempotency_key="order-42")
    again = api.open_position(symbol, D("0.10"), "long", idempotency_key="order-42")  # the same request
    assert again.position_id == first.position_id
    assert len(api.positions().positions) == 1
    with pytest.raises(IdempotencyConflict) as conflict:
        api.open_position(symbol, "0.2", "long", idempotency_key="order-42")
    assert (conflict.value.code, conflict.value.status) == ("IDEMPOTENCY_CONFLICT", 409)
    assert isinstance(conflict.value, EntasisError)


def test_extra_fields_and_bulk_exports(
    api: Client, base_url: str, token: str, market: Market, tmp_path: Path, new_symbol: Callable[[str], str]
) -> None:
    """`fields=` on the history, and the CSV / Parquet exports streamed to a file or a buffer."""
    import io

    import pyarrow.parquet as pq

    symbol = new_symbol("CX")
    seed_market(market, symbol)
    with_fields = api.history(symbol, start="2024-08-09", exchange="binance", fields=["trades", "vwap"])
    assert wire(with_fields) == raw(base_url, token, f"/api/v1/market/history/{symbol}", start="2024-08-09",
                                    exchange="binance", fields="trades,vwap")
    assert all("trades" in c.model_fields_set and "vwap" in c.model_fields_set for c in with_fields.data)

    buffer = io.BytesIO()
    written = api.export_history(symbol, buffer, start="2024-08-09", exchange="binance")
    lines = buffer.getvalue().decode().splitlines()
    assert written == len(buffer.getvalue()) and lines[0] == "timestamp,open,high,low,close,volume"
    assert lines[1].startswith("2024-08-09T00:00:00.000Z,25.00000000,") and len(lines) == 4

    target = tmp_path / "trades.parquet"
    assert api.export_trades(symbol, target, format="parquet", start="2024-08-09", exchange="binance") > 0
    table = pq.read_table(target)
    assert table.column("trade_id").to_pylist() == [f"t{i}" for i in range(9)]

    with pytest.raises(SymbolNotFound):
        api.export_trades("NOPE7-USDT", tmp_path / "none.csv")
    assert not (tmp_path / "none.csv").exists()
    with pytest.raises(ValueError):
        api.export_trades(symbol, buffer, format="xlsx")  # type: ignore[arg-type]
