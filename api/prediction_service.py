"""What the prediction endpoints mean, between parsed parameters and the prediction repository:
the venue, whether a stored forecast may be served (ready, and not behind the candles), and the
scores. Both read what the prediction agent (streams/agents/predict.py) stored; nothing is
computed per request. No SQL, no HTTP.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api import market_service
from api.errors import ApiError, ErrorCode
from api.models import DecimalString, UtcTimestamp, format_timestamp, ns_to_datetime
from infra.store.prediction_repository import PredictionRepository, PredictionRow, ScoreRow
from schemas.events import INTERVAL_NS
from schemas.prediction import Horizon, ModelStatus, PredictionModel
from streams.core.predict.engine import PredictConfig

_NS = 10**9
# Without any stored forecast the interval is unknown: the agent's default candle interval.
DEFAULT_INTERVAL_S = PredictConfig().interval_ns // _NS


class PredictionResponse(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "symbol": "BTC-USDT",
                    "prediction": "65512.34000000",
                    "confidence": 0.5312,
                    "timeframe": "1h",
                    "model": "ensemble",
                    "timestamp": "2024-03-21T09:00:00.000Z",
                    "price": "65432.10000000",
                    "log_return": "0.00122553",
                    "direction": "up",
                    "exchange": "binance",
                    "interval": "1h",
                    "model_version": "ewa-nochange-blr-blr998-ht-v1",
                    "features_version": "f1",
                }
            ]
        },
    )

    symbol: str = Field(examples=["BTC-USDT"])
    prediction: DecimalString = Field(description="Forecast price at `timestamp + timeframe`.")
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated P(the price moves in `direction`); see above.")
    timeframe: Horizon
    model: PredictionModel
    timestamp: UtcTimestamp = Field(description="As-of time: close time of the candle the forecast was issued at.")
    price: DecimalString = Field(description="That candle's close: the price the forecast starts from.")
    log_return: DecimalString = Field(description="Forecast log return ln(prediction / price).")
    direction: Literal["up", "down"] = Field(
        description="The side of `price` the model expects: what `confidence` is about."
    )
    exchange: str
    interval: str = Field(description="The candles the model learns from.")
    model_version: str
    features_version: str


class Metrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    scored: int = Field(description="Forecasts scored (whose horizon had passed).")
    mae: DecimalString | None
    mae_naive: DecimalString | None
    skill: DecimalString | None
    r2: DecimalString | None
    directional_accuracy: DecimalString | None
    up_rate: DecimalString | None
    mean_confidence: DecimalString | None
    calibration_error: DecimalString | None


class HorizonMetrics(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model: PredictionModel
    timeframe: Horizon
    status: ModelStatus = Field(description="`ready` (served), `warming_up` or `load_failed`.")
    remaining_candles: int = Field(description="Closed candles until `ready` (0 when ready).")
    timestamp: UtcTimestamp = Field(description="As-of time of the latest forecast, which carries these scores.")
    interval: str
    model_version: str
    features_version: str
    all: Metrics = Field(description="Every forecast scored since the model started.")
    recent: Metrics = Field(description="The last 500 scored forecasts.")


class MetricsResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    symbol: str
    exchange: str
    metrics: list[HorizonMetrics]


def _dec(value: float | None) -> Decimal | None:
    return None if value is None or not math.isfinite(value) else Decimal(repr(value))


def _metrics(s: ScoreRow) -> Metrics:
    return Metrics(scored=s.scored, mae=_dec(s.mae), mae_naive=_dec(s.mae_naive), skill=_dec(s.skill), r2=_dec(s.r2),
                   directional_accuracy=_dec(s.hit_rate), up_rate=_dec(s.up_rate),
                   mean_confidence=_dec(s.mean_confidence), calibration_error=_dec(s.calibration_error))


def _interval_s(interval: str) -> int:
    return INTERVAL_NS.get(interval, DEFAULT_INTERVAL_S * _NS) // _NS


def _not_ready(row: PredictionRow, context: dict[str, Any]) -> ApiError:
    seconds = max(1, row.remaining_candles * _interval_s(row.interval))
    details = {**context, "status": row.status, "remaining_candles": row.remaining_candles,
               "ready_in_seconds": seconds, "scored": row.scores.scored, "as_of": format_timestamp(
                   ns_to_datetime(row.as_of_ns))}
    if row.status == ModelStatus.LOAD_FAILED:
        return ApiError(ErrorCode.AI_001, {**details, "reason": "model checkpoint could not be loaded; "
                                                                "restarted from scratch and warming up"})
    return ApiError(ErrorCode.AI_002, {**details, "reason": "model warming up"},
                    headers={"Retry-After": str(seconds)})


def forecast(
    repository: PredictionRepository, symbol: str, exchange: str | None, model: PredictionModel, timeframe: Horizon
) -> PredictionResponse:
    """The latest forecast, when it may be served: AI_002 (503) without one, while the model warms up
    or when the agent is behind the candles; AI_001 (500) after a failed checkpoint load."""
    venue = market_service.last_trade(repository.market, symbol, exchange).venue
    context: dict[str, Any] = {"symbol": symbol, "exchange": venue, "model": model.value, "timeframe": timeframe.value}
    row = repository.latest(symbol, venue, model.value, timeframe.value)
    if row is None:
        raise ApiError(ErrorCode.AI_002, {**context, "reason": "no forecast yet"},
                       headers={"Retry-After": str(DEFAULT_INTERVAL_S)})
    if row.status != ModelStatus.READY or row.prediction is None or row.confidence is None:
        raise _not_ready(row, context)
    step = INTERVAL_NS.get(row.interval, 0)
    last_open = repository.last_final_open(symbol, venue, row.interval)
    # The newest candle closes at last_open + step; one candle of slack covers the sinks' lag.
    if last_open is not None and row.as_of_ns < last_open:
        raise ApiError(
            ErrorCode.AI_002,
            {**context, "reason": "prediction agent behind the candles", "as_of": format_timestamp(
                ns_to_datetime(row.as_of_ns)), "latest_candle_close": format_timestamp(
                ns_to_datetime(last_open + step))},
            headers={"Retry-After": str(_interval_s(row.interval))},
        )
    return PredictionResponse(
        symbol=symbol, prediction=row.prediction, confidence=round(float(row.confidence), 6), timeframe=timeframe,
        model=model, timestamp=ns_to_datetime(row.as_of_ns), price=row.price,
        log_return=Decimal(repr(row.log_return or 0.0)), direction="up" if row.direction > 0 else "down",
        exchange=venue, interval=row.interval, model_version=row.model_version,
        features_version=row.features_version,
    )


def scores(
    repository: PredictionRepository,
    symbol: str,
    exchange: str | None,
    model: PredictionModel | None,
    timeframe: Horizon | None,
) -> MetricsResponse:
    """The latest scores of every model and horizon (or the chosen ones); AI_002 (503) without any forecast."""
    venue = market_service.last_trade(repository.market, symbol, exchange).venue
    rows = [r for r in repository.latest_each(symbol, venue)
            if (model is None or r.model == model.value) and (timeframe is None or r.horizon == timeframe.value)]
    if not rows:
        raise ApiError(ErrorCode.AI_002, {"symbol": symbol, "exchange": venue, "reason": "no forecast yet"},
                       headers={"Retry-After": str(DEFAULT_INTERVAL_S)})
    return MetricsResponse(symbol=symbol, exchange=venue, metrics=[
        HorizonMetrics(model=PredictionModel(r.model), timeframe=Horizon(r.horizon), status=ModelStatus(r.status),
                       remaining_candles=r.remaining_candles, timestamp=ns_to_datetime(r.as_of_ns),
                       interval=r.interval, model_version=r.model_version, features_version=r.features_version,
                       all=_metrics(r.scores), recent=_metrics(r.recent))
        for r in rows
    ])
