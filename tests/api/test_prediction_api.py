"""GET /analysis/prediction/{symbol} and /metrics against the embedded database, with rows
written exactly as the prediction agent's sink writes them; and the agent's ClickHouse parts
(checkpoint store, stored-candle loader, audit view) on the same database."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.key_repository import ApiKeyRepository
from infra.store.repository import MarketRepository
from schemas.codecs.predictions import outcomes_table, predictions_table
from schemas.prediction import ModelStatus, Prediction, PredictionOutcome
from streams.agents.predict import outcome_event, prediction_event
from streams.core.predict.engine import CheckpointError, PredictConfig, StreamPredictor, decode_checkpoint
from streams.core.predict.features import Bar
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.predict import ClickHouseBarLoader, ClickHouseModelStore
from tests.api.conftest import (
    HOUR,
    CandleRow,
    Market,
    TradeRow,
    bearer,
    canon,
    error_of,
    new_account,
    test_api_settings,
    token_for,
)
from tests.unit.test_predict_engine import ar1_bars

T0 = 1_723_161_600 * 10**9 - 100 * HOUR  # on the hour


@pytest.fixture(scope="module")
def prediction_app(repository: MarketRepository, key_repository: ApiKeyRepository) -> FastAPI:
    return create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository)


@pytest.fixture
def client(prediction_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(prediction_app, headers=bearer(token_for(new_account()))) as c:
        yield c


def agent_rows(symbol: str, n: int, min_scored: int = 5) -> tuple[list[Prediction], list[PredictionOutcome], list[Bar]]:
    """What the agent publishes for `n` hourly candles of an AR(1) series (ensemble only)."""
    bars = ar1_bars(0.4, n, seed=5, start=T0)
    predictor = StreamPredictor(PredictConfig(models=("ensemble",), horizons=("1h", "4h"), min_scored=min_scored,
                                              min_independent=1))
    preds: list[Prediction] = []
    outs: list[PredictionOutcome] = []
    for bar in bars:
        update = predictor.update(bar)
        recv = bar.open_ns + HOUR
        outs += [outcome_event("binance", symbol, "1h", o, recv) for o in update.outcomes]
        preds += [prediction_event("binance", symbol, "1h", f, "f1", recv) for f in update.forecasts]
    return preds, outs, bars


def store(db: Client, market: Market, symbol: str, preds: list[Prediction], outs: list[PredictionOutcome],
          bars: list[Bar]) -> None:
    db.insert_arrow("predictions", predictions_table(preds))
    if outs:
        db.insert_arrow("prediction_outcomes", outcomes_table(outs))
    last = bars[-1]
    market.trades([TradeRow("binance", symbol, "1", last.close_exact, Decimal("1"), last.open_ns + HOUR - 1)])
    market.candles([CandleRow("binance", symbol, "1h", b.open_ns, Decimal(repr(b.open)), Decimal(repr(b.high)),
                              Decimal(repr(b.low)), b.close_exact, Decimal("1")) for b in bars[-3:]])


def test_serves_the_latest_ready_forecast_as_the_agent_stored_it(
    client: TestClient, db: Client, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("PR")
    preds, outs, bars = agent_rows(symbol, 60)
    store(db, market, symbol, preds, outs, bars)
    for timeframe in ("1h", "4h"):
        latest = [p for p in preds if p.horizon.value == timeframe][-1]
        assert latest.status == ModelStatus.READY and latest.prediction is not None and latest.confidence is not None
        response = client.get(f"/api/v1/analysis/prediction/{symbol.lower()}",
                              params={"timeframe": timeframe, "model": "ensemble"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert {k: body[k] for k in ("symbol", "prediction", "confidence", "timeframe", "model", "timestamp")} == {
            "symbol": symbol, "prediction": canon(latest.prediction), "confidence": round(latest.confidence, 6),
            "timeframe": timeframe, "model": "ensemble", "timestamp": "2024-08-07T08:00:00.000Z",  # T0 + 60 h
        }
        assert body["price"] == canon(bars[-1].close_exact) and body["exchange"] == "binance"
        assert body["direction"] == ("up" if latest.direction > 0 else "down")
        implied = Decimal(body["price"]) * Decimal(repr(math.exp(float(body["log_return"]))))
        assert abs(implied - Decimal(body["prediction"])) < Decimal("0.0001")
        assert isinstance(body["confidence"], float) and 0.0 <= body["confidence"] <= 1.0
    default = client.get(f"/api/v1/analysis/prediction/{symbol}").json()
    assert (default["timeframe"], default["model"]) == ("1h", "ensemble")


def _only(symbol: str, status: ModelStatus, remaining: int) -> tuple[list[Prediction], list[Bar]]:
    preds, _, bars = agent_rows(symbol, 30, min_scored=500)
    last = [p for p in preds if p.horizon.value == "1h"][-1]
    return [last.model_copy(update={"status": status, "remaining_candles": remaining})], bars


def test_warming_up_is_ai_002_with_retry_after_in_candle_intervals(
    client: TestClient, db: Client, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("PW")
    preds, bars = _only(symbol, ModelStatus.WARMING_UP, 7)
    store(db, market, symbol, preds, [], bars)
    response = client.get(f"/api/v1/analysis/prediction/{symbol}")
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(7 * 3600)
    error = error_of(response)
    assert error["code"] == "AI_002" and error["message"] == "Prediction failure"
    assert error["details"]["remaining_candles"] == 7 and error["details"]["status"] == "warming_up"  # type: ignore[index]
    korean = client.get(f"/api/v1/analysis/prediction/{symbol}", headers={"Accept-Language": "ko"})
    assert error_of(korean)["message"] == "예측 실패"


def test_a_model_restarted_after_a_bad_checkpoint_is_ai_001(
    client: TestClient, db: Client, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("PF")
    preds, bars = _only(symbol, ModelStatus.LOAD_FAILED, 3)
    store(db, market, symbol, preds, [], bars)
    response = client.get(f"/api/v1/analysis/prediction/{symbol}")
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "AI_001" and error["message"] == "Model load failure"
    assert error["details"]["remaining_candles"] == 3  # type: ignore[index]


def test_no_forecast_yet_and_an_agent_behind_the_candles_are_ai_002(
    client: TestClient, db: Client, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("PN")
    market.trades([TradeRow("binance", symbol, "1", Decimal("5"), Decimal("1"), T0)])
    none = client.get(f"/api/v1/analysis/prediction/{symbol}", params={"model": "lstm"})
    assert none.status_code == 503 and none.headers["retry-after"] == "3600" and error_of(none)["code"] == "AI_002"

    stale = new_symbol("PS")
    preds, outs, bars = agent_rows(stale, 40)
    store(db, market, stale, preds, outs, bars)
    later = bars[-1].open_ns + 2 * HOUR  # two more candles closed that the agent never answered
    market.candles([CandleRow("binance", stale, "1h", later, Decimal(1), Decimal(1), Decimal(1), Decimal(1),
                              Decimal(1))])
    response = client.get(f"/api/v1/analysis/prediction/{stale}")
    assert response.status_code == 503 and response.headers["retry-after"] == "3600"
    assert error_of(response)["details"]["reason"] == "prediction agent behind the candles"  # type: ignore[index]


def test_parameters_symbols_and_scope(
    client: TestClient, prediction_app: FastAPI, new_symbol: Callable[[str], str]
) -> None:
    assert error_of(client.get("/api/v1/analysis/prediction/BTC$USDT"))["code"] == "MARKET_001"
    unknown = client.get(f"/api/v1/analysis/prediction/{new_symbol('PU')}")
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "MARKET_001"
    for params in ({"timeframe": "2h"}, {"model": "arima"}):
        bad = client.get("/api/v1/analysis/prediction/BTC-USDT", params=params)
        assert bad.status_code == 400 and error_of(bad)["code"] == "BAD_REQUEST"
    with TestClient(prediction_app, headers=bearer(token_for(new_account(), ["market:read"]))) as market_only:
        forbidden = market_only.get("/api/v1/analysis/prediction/BTC-USDT")
    assert forbidden.status_code == 403 and error_of(forbidden)["code"] == "FORBIDDEN"
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/api/v1/analysis/prediction/{symbol}"]["get"]
    assert {"500", "503"} <= set(op["responses"]) and "Retry-After" in op["responses"]["503"]["headers"]
    assert "calibrated" in op["description"]


def test_metrics_report_every_model_and_horizon_against_no_change(
    client: TestClient, db: Client, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("PM")
    preds, outs, bars = agent_rows(symbol, 60)
    store(db, market, symbol, preds, outs, bars)
    body = client.get(f"/api/v1/analysis/prediction/{symbol}/metrics").json()
    assert [(m["model"], m["timeframe"], m["status"]) for m in body["metrics"]] == [
        ("ensemble", "1h", "ready"), ("ensemble", "4h", "ready")]
    latest = [p for p in preds if p.horizon.value == "1h"][-1].scores
    one = body["metrics"][0]["all"]
    assert one["scored"] == latest.scored
    assert latest.skill is not None and Decimal(one["skill"]) == Decimal(repr(latest.skill)).quantize(Decimal("1e-8"))
    assert latest.hit_rate is not None and Decimal(one["directional_accuracy"]) == Decimal(
        repr(latest.hit_rate)).quantize(Decimal("1e-8"))
    only = client.get(f"/api/v1/analysis/prediction/{symbol}/metrics", params={"timeframe": "4h"}).json()
    assert [m["timeframe"] for m in only["metrics"]] == ["4h"]
    none = client.get(f"/api/v1/analysis/prediction/{symbol}/metrics", params={"model": "lstm"})
    assert none.status_code == 503 and error_of(none)["code"] == "AI_002"


def test_audit_view_joins_each_forecast_with_its_outcome(
    db: Client, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("PA")
    preds, outs, bars = agent_rows(symbol, 40)
    store(db, market, symbol, preds, outs, bars)
    store(db, market, symbol, preds, outs, bars)  # re-delivered: the same rows, not twice as many
    rows = db.query(
        "SELECT horizon, toUnixTimestamp64Nano(as_of), prediction, realised_price, hit FROM prediction_audit "
        "WHERE symbol = {s:String} ORDER BY horizon, as_of", parameters={"s": symbol}).result_rows
    assert len(rows) == len(preds)
    realised = {(o.horizon.value, o.as_of_ns): o for o in outs}
    for horizon, as_of, _, realised_price, hit in rows:
        o = realised.get((horizon, int(as_of)))
        assert (realised_price, hit) == ((o.realised_price, int(o.hit)) if o else (None, None))


async def test_checkpoint_store_and_candle_loader_on_clickhouse(
    client_factory: Callable[[], Client], db: Client, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("PC")
    sink = ClickHouseSink(client_factory)
    try:
        models = ClickHouseModelStore(sink)
        assert await models.load("binance", symbol, "1h") is None
        predictor = StreamPredictor(PredictConfig(models=("ensemble",), horizons=("1h",)))
        for bar in ar1_bars(0.3, 40, seed=6, start=T0):
            predictor.update(bar)
        blob = predictor.dumps()
        assert b"\xff" in blob or any(b > 127 for b in blob)  # binary: must survive the String column
        await models.save("binance", symbol, "1h", predictor.last_open_ns or 0, blob)
        loaded = await models.load("binance", symbol, "1h")
        assert loaded == blob
        assert decode_checkpoint(loaded, predictor.config).last_open_ns == predictor.last_open_ns
        db.command("INSERT INTO prediction_checkpoints (venue, symbol, interval, last_open_ts, bytes, payload) "
                   "VALUES ('binance', {s:String}, '1h', now64(9), 3, 'not base64!')", parameters={"s": symbol})
        with pytest.raises(CheckpointError):
            decode_checkpoint(await models.load("binance", symbol, "1h") or b"", predictor.config)

        closes = [Decimal(100 + i) for i in range(6)]
        market.candles([CandleRow("binance", symbol, "1h", T0 + i * HOUR, c, c + 1, c - 1, c, Decimal("2"),
                                  is_final=i != 5) for i, c in enumerate(closes)])
        loader = ClickHouseBarLoader(sink)
        bars = await loader("binance", symbol, "1h", None, T0 + 6 * HOUR, 3)
        assert [(b.open_ns, b.close_exact) for b in bars] == [(T0 + i * HOUR, closes[i]) for i in (2, 3, 4)]
        after = await loader("binance", symbol, "1h", T0 + 2 * HOUR, T0 + 4 * HOUR, 10)
        assert [b.open_ns for b in after] == [T0 + 3 * HOUR]
    finally:
        sink.close()
