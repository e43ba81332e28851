"""Issue 18, finding 9: the backtest endpoint was a CPU denial of service
(`interval=1m&window_days=365&method=garch` refitted GARCH over half a million returns in the
shared request threads). Now: a bar limit per call (400 with the limit), at most N backtests at
once on threads of their own (503 + Retry-After when busy), and a deadline (503, work stopped)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.risk_service import BacktestCancelled, BacktestRunner, backtest_report
from api.routes.risk import get_backtest_runner
from infra.store.risk_repository import RiskRepository
from schemas.events import Interval
from tests.api.conftest import HOUR, CandleRow, Market, TradeRow, bearer, error_of, new_account, token_for
from tests.api.conftest import test_api_settings as secured_api_settings

BASE = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z
D = Decimal
LIVENESS_S = 10.0  # only how long to wait for a thread that must finish; never asserted as a duration


@pytest.fixture(scope="module")
def risk_app(db: Client, client_factory: Callable[[], Client], key_repository: ApiKeyRepository) -> Iterator[FastAPI]:
    repository = RiskRepository(client_factory, symbols_ttl_s=0)
    yield create_app(repository=repository, api_settings=secured_api_settings(), key_repository=key_repository)
    repository.close()


@pytest.fixture(scope="module")
def symbol(db: Client) -> str:
    """Three days of hourly final candles, enough for a real (short) backtest."""
    s = "HBT9-USDT"
    Market(db).trades([TradeRow("binance", s, "t1", D("100"), D("1"), BASE + 72 * HOUR - 1)])
    Market(db).candles(
        [
            CandleRow("binance", s, "1h", BASE + i * HOUR, c, c, c, c, D("1"))
            for i, c in enumerate(D(100 + (i % 7)) for i in range(72))
        ]
    )
    return s


@pytest.fixture
def api(risk_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(risk_app, headers=bearer(token_for(new_account(), scopes=["analysis:read"]))) as client:
        yield client
    risk_app.dependency_overrides.clear()


def test_the_half_a_million_bar_probe_is_refused_with_the_limit(api: TestClient, symbol: str) -> None:
    response = api.get(
        f"/api/v1/analysis/risk/{symbol}/backtest",
        params={"interval": "1m", "window_days": 365, "method": "garch", "start": "2024-01-01", "end": "2024-01-03"},
    )
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["code"] == "BAD_REQUEST"
    details = error["details"]
    assert isinstance(details, dict)
    # the limit, and the count of this call: 365 + 2 + 1 days of minutes, plus GARCH's refit day
    assert details["max_bars"] == 50_000
    assert details["bars"] >= (365 + 2) * 1440
    description = api.get("/openapi.json").json()["paths"]["/api/v1/analysis/risk/{symbol}/backtest"]["get"][
        "description"
    ]
    assert "at most 50000 bars read per call" in description


def test_a_backtest_within_the_limit_still_runs(api: TestClient, symbol: str) -> None:
    response = api.get(
        f"/api/v1/analysis/risk/{symbol}/backtest",
        params={"method": "historical", "window_days": 1, "start": "2024-01-02", "end": "2024-01-03"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["method"] == "historical"


def test_busy_slots_answer_503_with_retry_after(api: TestClient, risk_app: FastAPI, symbol: str) -> None:
    runner = BacktestRunner(slots=1, deadline_s=LIVENESS_S, retry_after_s=7)
    risk_app.dependency_overrides[get_backtest_runner] = lambda: runner
    started, release = threading.Event(), threading.Event()

    def blocking(cancel: threading.Event) -> str:
        started.set()
        release.wait(LIVENESS_S)
        return "done"

    holder = threading.Thread(target=lambda: asyncio.run(runner.run(blocking)))
    holder.start()
    try:
        assert started.wait(LIVENESS_S)
        response = api.get(f"/api/v1/analysis/risk/{symbol}/backtest", params={"window_days": 1})
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "7"
        assert error_of(response)["code"] == "UNAVAILABLE"
    finally:
        release.set()
        holder.join(LIVENESS_S)
    # the slot is free again once the running backtest finished
    ok = api.get(
        f"/api/v1/analysis/risk/{symbol}/backtest",
        params={"window_days": 1, "start": "2024-01-02", "end": "2024-01-03"},
    )
    assert ok.status_code == 200, ok.text
    runner.close()


def test_past_the_deadline_the_answer_is_503_and_the_work_stops() -> None:
    runner = BacktestRunner(slots=1, deadline_s=0.0, retry_after_s=3)
    stopped = threading.Event()

    def spins(cancel: threading.Event) -> None:
        # stands for a long backtest: runs until told to stop (or the liveness bound)
        if cancel.wait(LIVENESS_S):
            stopped.set()

    with pytest.raises(Exception) as caught:
        asyncio.run(runner.run(spins))
    error = caught.value
    assert getattr(error, "status", None) == 503
    assert getattr(error, "headers", None) == {"Retry-After": "3"}
    assert stopped.wait(LIVENESS_S), "the abandoned backtest was not told to stop"
    runner.close()


def test_the_deadline_through_the_route(api: TestClient, risk_app: FastAPI, symbol: str) -> None:
    runner = BacktestRunner(slots=1, deadline_s=0.0)
    risk_app.dependency_overrides[get_backtest_runner] = lambda: runner
    response = api.get(f"/api/v1/analysis/risk/{symbol}/backtest", params={"window_days": 1})
    assert response.status_code == 503 and "Retry-After" in response.headers
    assert "deadline" in str(error_of(response)["details"])
    runner.close()


def test_a_cancelled_backtest_stops_reading_bars(client_factory: Callable[[], Client], symbol: str) -> None:
    repository = RiskRepository(client_factory, symbols_ttl_s=0)
    cancel = threading.Event()
    cancel.set()
    try:
        with pytest.raises(BacktestCancelled):
            backtest_report(
                repository,
                symbol,
                start_ns=BASE + 24 * HOUR,
                end_ns=BASE + 48 * HOUR,
                exchange=None,
                method=None,
                interval=Interval.H1,
                window_days=1,
                cancel=cancel,
            )
    finally:
        repository.close()
