"""GET /analysis/risk/{symbol} and /analysis/risk/{symbol}/backtest against the embedded
database: the latest stored estimate per method, symbol rules, 503 without an estimate, and a
backtest over stored candles equal to the core backtest of the same closes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import numpy as np
import pytest
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import API_PREFIX, create_app
from api.key_repository import ApiKeyRepository
from infra.store.risk_repository import RiskRepository
from schemas.codecs.risk import table as risk_table
from schemas.events import Interval
from schemas.risk import RiskEstimate, RiskMethod
from streams.core.risk import DAY_NS, RiskConfig
from streams.core.risk_backtest import backtest
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.risk import ClickHouseCandleLoader
from tests.api.conftest import (
    HOUR,
    CandleRow,
    Market,
    TradeRow,
    bearer,
    error_of,
    new_account,
    token_for,
)
from tests.api.conftest import test_api_settings as secured_api_settings

BASE = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z
D = Decimal


@pytest.fixture(scope="module")
def risk_app(db: Client, client_factory: Callable[[], Client], key_repository: ApiKeyRepository) -> Iterator[FastAPI]:
    repository = RiskRepository(client_factory, symbols_ttl_s=0)
    yield create_app(repository=repository, api_settings=secured_api_settings(), key_repository=key_repository)
    repository.close()


@pytest.fixture
def api(risk_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(risk_app, headers=bearer(token_for(new_account(), scopes=["analysis:read"]))) as client:
        yield client


def test_risk_needs_the_analysis_scope(risk_app: FastAPI) -> None:
    with TestClient(risk_app, headers=bearer(token_for(new_account(), scopes=["market:read"]))) as client:
        response = client.get(f"{API_PREFIX}/analysis/risk/BTC-USDT")
    assert response.status_code == 403 and error_of(response)["code"] == "FORBIDDEN"
    with TestClient(risk_app) as client:
        assert client.get(f"{API_PREFIX}/analysis/risk/BTC-USDT").status_code == 401


def estimate(symbol: str, method: RiskMethod, as_of: int, var: str, venue: str = "binance") -> RiskEstimate:
    return RiskEstimate(
        venue=venue, symbol=symbol, interval=Interval.H1, method=method, event_ts_ns=as_of, recv_ts_ns=as_of + 5,
        price=D("65000.12"), var_95=D(var), expected_shortfall=D(var) * 2, volatility=D("0.5123456789"),
        window=2160,
    )


def trade(symbol: str, ts: int, venue: str = "binance", price: str = "65000") -> TradeRow:
    return TradeRow(venue, symbol, f"{venue}-{ts}", D(price), D("0.5"), ts)


def test_latest_estimate_of_the_default_method(api: TestClient, db: Client, market: Market,
                                               new_symbol: Callable[[str], str]) -> None:
    s = new_symbol("RK")
    market.trades([trade(s, BASE + 10 * HOUR)])
    db.insert_arrow("risk_estimates", risk_table([
        estimate(s, RiskMethod.EWMA, BASE + 9 * HOUR, "1000.5"),
        estimate(s, RiskMethod.EWMA, BASE + 10 * HOUR, "1100.25"),
        estimate(s, RiskMethod.HISTORICAL, BASE + 10 * HOUR, "900"),
        estimate(s, RiskMethod.EWMA, BASE + 10 * HOUR, "1100.25"),  # a re-delivered estimate: one row
    ]))
    response = api.get(f"/api/v1/analysis/risk/{s.lower()}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "symbol": s,
        "var_95": "1100.25000000",
        "expected_shortfall": "2200.50000000",
        "volatility": "0.51234568",
        "timestamp": "2024-01-01T10:00:00.000Z",
        "method": "ewma",
        "interval": "1h",
        "window": 2160,
        "price": "65000.12000000",
        "exchange": "binance",
    }
    historical = api.get(f"/api/v1/analysis/risk/{s}", params={"method": "historical"}).json()
    assert (historical["method"], historical["var_95"]) == ("historical", "900.00000000")


def test_no_estimate_yet_is_503_and_bad_input_is_400(api: TestClient, market: Market,
                                                      new_symbol: Callable[[str], str]) -> None:
    s = new_symbol("RN")
    market.trades([trade(s, BASE)])
    response = api.get(f"/api/v1/analysis/risk/{s}", params={"method": "garch"})
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "UNAVAILABLE"
    assert error["details"] == {"reason": "no risk estimate yet (not enough data)", "symbol": s,
                                "exchange": "binance", "method": "garch", "interval": "1h"}
    bad_method = api.get(f"/api/v1/analysis/risk/{s}", params={"method": "montecarlo"})
    assert bad_method.status_code == 400 and error_of(bad_method)["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(("path", "status"), [("BTC$USDT", 400), ("-USDT", 400), ("XYZQ-USDT", 404)])
def test_symbol_rules(api: TestClient, path: str, status: int) -> None:
    for suffix in ("", "/backtest"):
        response = api.get(f"/api/v1/analysis/risk/{path}{suffix}")
        assert response.status_code == status
        assert error_of(response)["code"] == "MARKET_001"


def test_exchange_defaults_to_the_venue_that_traded_last(api: TestClient, db: Client, market: Market,
                                                         new_symbol: Callable[[str], str]) -> None:
    s = new_symbol("RV")
    market.trades([trade(s, BASE, "binance"), trade(s, BASE + HOUR, "kraken")])
    db.insert_arrow("risk_estimates", risk_table([
        estimate(s, RiskMethod.EWMA, BASE + HOUR, "10", "binance"),
        estimate(s, RiskMethod.EWMA, BASE + HOUR, "20", "kraken"),
    ]))
    assert api.get(f"/api/v1/analysis/risk/{s}").json()["exchange"] == "kraken"
    on_binance = api.get(f"/api/v1/analysis/risk/{s}", params={"exchange": "BINANCE"}).json()
    assert (on_binance["exchange"], on_binance["var_95"]) == ("binance", "10.00000000")


@pytest.fixture(scope="module")
def stored_series(db: Client) -> tuple[str, list[tuple[int, Decimal]]]:
    """40 days of hourly final candles of a random walk, stored like the candle sink does."""
    symbol = "RBT1-USDT"
    rng = np.random.default_rng(12)
    closes = [D(f"{c:.2f}") for c in 30000 * np.exp(np.cumsum(rng.standard_t(4, 24 * 40) * 0.006))]
    Market(db).trades([trade(symbol, BASE + 24 * 40 * HOUR - 1)])
    Market(db).candles([CandleRow("binance", symbol, "1h", BASE + i * HOUR, c, c, c, c, D("1")) for i, c in
                        enumerate(closes)])
    return symbol, [(BASE + i * HOUR, c) for i, c in enumerate(closes)]


def test_backtest_equals_the_core_backtest_of_the_stored_closes(
        api: TestClient, stored_series: tuple[str, list[tuple[int, Decimal]]]) -> None:
    symbol, bars = stored_series
    start, end = BASE + 10 * DAY_NS, BASE + 38 * DAY_NS
    response = api.get(f"/api/v1/analysis/risk/{symbol}/backtest",
                       params={"start": "2024-01-11T00:00:00Z", "end": "2024-02-08", "window_days": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["symbol"], body["exchange"], body["interval"], body["window_days"]) == (symbol, "binance", "1h", 7)
    assert (body["start"], body["end"]) == ("2024-01-11T00:00:00.000Z", "2024-02-08T00:00:00.000Z")
    cfg = RiskConfig(interval_ns=HOUR, window_days=7)
    want = {r.method.value: r for r in backtest([(t, float(c)) for t, c in bars], cfg, start, end)}
    assert [r["method"] for r in body["results"]] == [m.value for m in RiskMethod]
    for row in body["results"]:
        w = want[row["method"]]
        assert (row["observations"], row["breaches"]) == (w.observations, w.breaches)
        if w.observations:
            assert row["observations"] == 28
            assert Decimal(row["expected"]) == Decimal("1.4")
            assert float(row["kupiec"]["statistic"]) == pytest.approx(w.kupiec.statistic, abs=1e-8)
            assert float(row["kupiec"]["p_value"]) == pytest.approx(w.kupiec.p_value, abs=1e-8)
            assert float(row["christoffersen"]["p_value"]) == pytest.approx(w.christoffersen.p_value, abs=1e-8)
        else:  # garch: a 7-day window never holds the 250 returns it needs
            assert row["method"] == "garch" and row["kupiec"] == {"statistic": None, "p_value": None}


def test_backtest_defaults_and_limits(api: TestClient,
                                      stored_series: tuple[str, list[tuple[int, Decimal]]]) -> None:
    symbol, _ = stored_series
    url = f"/api/v1/analysis/risk/{symbol}/backtest"
    body = api.get(url, params={"method": "parametric", "window_days": 7}).json()
    # the last candle closes at 2024-02-10T00:00Z: the end is the next midnight after that close
    assert body["end"] == "2024-02-11T00:00:00.000Z"
    assert body["start"] == "2023-02-11T00:00:00.000Z"
    assert [r["method"] for r in body["results"]] == ["parametric"]
    assert body["results"][0]["observations"] == 40 - 7 - 1  # from day 7 (min history) to the last full day
    for params in ({"start": "2023-01-01", "end": "2024-02-01"}, {"start": "2024-02-01", "end": "2024-01-01"},
                   {"window_days": 0}, {"interval": "2h"}, {"start": "yesterday"}):
        response = api.get(url, params=params)
        assert response.status_code == 400, params
        assert error_of(response)["code"] == "BAD_REQUEST"


def test_openapi_documents_the_default_method_and_window(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    risk = schema["paths"]["/api/v1/analysis/risk/{symbol}"]["get"]
    assert "**Default: `method=ewma` on `interval=1h` candles with a 90-day window**" in risk["description"]
    params = {p["name"]: p for p in risk["parameters"]}
    assert params["method"]["schema"]["default"] == "ewma"
    assert set(risk["responses"]) >= {"200", "400", "404", "503"}
    assert "/api/v1/analysis/risk/{symbol}/backtest" in schema["paths"]


async def test_the_agents_loader_reads_the_last_stored_final_candles(
        client_factory: Callable[[], Client], db: Client,
        stored_series: tuple[str, list[tuple[int, Decimal]]]) -> None:
    """The risk agent's restart path (streams/sinks/risk.py) on the same embedded database: the
    last `limit` final candles strictly before a candle, oldest first; a non-final revision
    does not count."""
    symbol, bars = stored_series
    Market(db).candles([CandleRow("binance", symbol, "1h", bars[-1][0] + HOUR, D("1"), D("1"), D("1"), D("1"),
                                  D("1"), revision=0, is_final=False)])
    sink = ClickHouseSink(client_factory)
    try:
        loaded = await ClickHouseCandleLoader(sink)("binance", symbol, "1h", bars[500][0], 100)
        assert loaded == bars[400:500]
        everything = await ClickHouseCandleLoader(sink)("binance", symbol, "1h", bars[-1][0] + 2 * HOUR, 10**6)
        assert everything == bars
    finally:
        sink.close()
