"""`/analysis/prediction/{symbol}` (the latest forecast of a model and horizon) and
`/analysis/prediction/{symbol}/metrics` (the live prequential scores of every model and horizon).

Both read what the prediction agent (streams/agents/predict.py) stored; nothing is computed
per request. Plain `def` routes on purpose, as in api/routes/market.py: FastAPI runs them in its
threadpool, where the repository's per-thread clients live.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Security
from pydantic import BaseModel, ConfigDict, Field

from api import market_service
from api.errors import ApiError, ErrorCode, openapi_error_responses
from api.models import DecimalString, UtcTimestamp, format_timestamp, ns_to_datetime
from api.params import parse_exchange, parse_symbol
from api.principal import ANALYSIS_READ
from api.routes.market import ExchangeQuery, SymbolPath  # one definition per parameter
from api.security import require_scope
from infra.store.prediction_repository import PredictionRepository, PredictionRow, ScoreRow
from infra.store.repository import MarketRepository
from schemas.events import INTERVAL_NS
from schemas.prediction import Horizon, ModelStatus, PredictionModel
from streams.core.predict.engine import PredictConfig

router = APIRouter(prefix="/analysis/prediction", tags=["analysis"],
                   dependencies=[Security(require_scope(ANALYSIS_READ))])

_NS = 10**9
# Without any stored forecast the interval is unknown: the agent's default candle interval.
_DEFAULT_INTERVAL_S = PredictConfig().interval_ns // _NS


def get_prediction_repository(request: Request) -> PredictionRepository:
    repository = getattr(request.app.state, "prediction_repository", None)
    if isinstance(repository, PredictionRepository):
        return repository
    market = getattr(request.app.state, "repository", None)
    if not isinstance(market, MarketRepository):  # not started, or shutting down
        raise ApiError(ErrorCode.UNAVAILABLE, {"reason": "prediction store not ready"})
    return PredictionRepository(market)  # owns no clients: free to make per request


Repository = Annotated[PredictionRepository, Depends(get_prediction_repository)]

CONFIDENCE_DOC = """
**`confidence`** is the probability that the price at `timestamp + timeframe` is strictly on the
forecast's side of `price` (above it when `direction` is `up`, below when `down`), calibrated on
the same model's own past forecasts for that horizon: a logistic curve in the strength of the
signal (the forecast move in volatility units), monotone, fitted on the model's last 1000
one-candle outcomes (h times as many for an h-candle horizon, at most 20 000), where overlapping
outcomes count 1/h each: the independent evidence they are. A model without
skill reports its base rate (about 0.5, the observed hit rate) whatever it forecasts; a flat
outcome counts as a miss. `/metrics` reports its calibration error.
"""

MODELS_DOC = """
Models, both learning online from final candles of the agent's interval (1h by default; the 4h
and 1d forecasts are 4 and 24 such candles ahead), on the same scale-free features (log returns
over 1-3 bars and over 4, 12, 24 bars and each horizon, realised-volatility ratio, bar range,
relative volume, top-of-book imbalance when a book is published), predicting the log return over
the horizon in units of the current volatility:
- `ensemble`: river learners (Bayesian linear regression with and without forgetting, a Hoeffding
  tree with linear leaves, and the no-change forecast itself) hedged by an exponentially weighted
  average on their past squared errors.
- `lstm`: a small PyTorch LSTM (16 units over the last 24 bars, one network for all horizons),
  one Adam step per candle on the new outcomes plus replayed older ones.

The served log return is the model's output times a shrinkage factor in [0, 1]: the out-of-sample
least-squares slope of outcomes on the model's past forecasts, so a model without skill serves
(almost) the no-change price instead of its noise. `prediction` = `price` × exp(log return).

Every forecast is scored when its horizon has passed (predict, wait, score, then learn); a model
and horizon is served once 200 of its forecasts have been scored, and at least 20 horizons' worth
(overlapping outcomes: on hourly candles the 1d forecasts need 480, i.e. 20 days).
"""

PREDICTION_DESCRIPTION = f"""
The latest forecast of `symbol`'s price at `timestamp + timeframe`, issued by the prediction agent
at `timestamp`: the close time of the newest final candle it has processed.
{MODELS_DOC}{CONFIDENCE_DOC}
Errors: `MARKET_001` malformed (400) or unknown (404) symbol. `AI_002` (503, with `Retry-After` in
seconds): the model is warming up for this horizon (`details.remaining_candles` more closed candles;
`Retry-After` = that many candle intervals), there is no forecast yet, or the agent has fallen more
than one candle behind the stored candles. `AI_001` (500): the model's checkpoint could not be
loaded, so it restarted from scratch and is warming up again (`details` says how long).

Requires scope `analysis:read`.
"""

METRICS_DESCRIPTION = """
The live prequential scores of every model and horizon of `symbol` (or the one chosen by `model`,
`timeframe`), as of each one's latest forecast, over every forecast scored since the model started
(`all`) and over the last 500 (`recent`). All are out-of-sample: a forecast is scored on the price
at its target time, then learned from.
- `mae`: mean absolute error of the served log return; `mae_naive`: the same for the no-change
  forecast (mean absolute log return); `skill` = 1 − mae / mae_naive (> 0 beats no-change);
- `r2`: 1 − Σ error² / Σ realised²: out-of-sample R² against no-change;
- `directional_accuracy`: share of forecasts whose direction the price took (flat = miss);
  `up_rate`: share of outcomes that went up, the accuracy of "always up";
- `mean_confidence`, `calibration_error`: the mean `confidence` and its expected calibration error
  (10 bins; 0 is perfectly calibrated).
Decimal strings (8 places), null until a forecast has been scored.

`AI_002` (503) when no forecast of the symbol has been stored yet. Requires scope `analysis:read`.
"""


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
    return INTERVAL_NS.get(interval, _DEFAULT_INTERVAL_S * _NS) // _NS


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


_SECURITY_ERRORS = {401: [ErrorCode.AUTH_FAILED], 403: [ErrorCode.FORBIDDEN], 429: [ErrorCode.RATE_LIMITED]}
_RETRY_AFTER = {"Retry-After": {"description": "AI_002: seconds until the model is expected to answer.",
                                "schema": {"type": "integer", "minimum": 1}}}


def _responses(errors: dict[int, list[ErrorCode]]) -> dict[int | str, dict[str, Any]]:
    responses = openapi_error_responses({**errors, **_SECURITY_ERRORS})
    responses[503]["headers"] = dict(_RETRY_AFTER)
    return responses


@router.get(
    "/{symbol}",
    response_model=PredictionResponse,
    summary="Price forecast at timestamp + timeframe, with calibrated confidence",
    description=PREDICTION_DESCRIPTION,
    responses=_responses({
        400: [ErrorCode.MARKET_001, ErrorCode.BAD_REQUEST],
        404: [ErrorCode.MARKET_001],
        500: [ErrorCode.AI_001, ErrorCode.INTERNAL],
        503: [ErrorCode.AI_002, ErrorCode.UNAVAILABLE],
    }),
)
def get_prediction(
    repository: Repository,
    symbol: SymbolPath,
    timeframe: Annotated[Horizon, Query(description="Forecast horizon.")] = Horizon.H1,
    model: Annotated[PredictionModel, Query(description="`ensemble` or `lstm` (see above).")] = (
        PredictionModel.ENSEMBLE
    ),
    exchange: ExchangeQuery = None,
) -> PredictionResponse:
    parsed = parse_symbol(symbol)
    venue = market_service.last_trade(repository.market, parsed, parse_exchange(exchange)).venue
    context: dict[str, Any] = {"symbol": parsed, "exchange": venue, "model": model.value, "timeframe": timeframe.value}
    row = repository.latest(parsed, venue, model.value, timeframe.value)
    if row is None:
        raise ApiError(ErrorCode.AI_002, {**context, "reason": "no forecast yet"},
                       headers={"Retry-After": str(_DEFAULT_INTERVAL_S)})
    if row.status != ModelStatus.READY or row.prediction is None or row.confidence is None:
        raise _not_ready(row, context)
    step = INTERVAL_NS.get(row.interval, 0)
    last_open = repository.last_final_open(parsed, venue, row.interval)
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
        symbol=parsed, prediction=row.prediction, confidence=round(float(row.confidence), 6), timeframe=timeframe,
        model=model, timestamp=ns_to_datetime(row.as_of_ns), price=row.price,
        log_return=Decimal(repr(row.log_return or 0.0)), direction="up" if row.direction > 0 else "down",
        exchange=venue, interval=row.interval, model_version=row.model_version,
        features_version=row.features_version,
    )


@router.get(
    "/{symbol}/metrics",
    response_model=MetricsResponse,
    summary="Live out-of-sample scores of each model and horizon against the no-change forecast",
    description=METRICS_DESCRIPTION,
    responses=_responses({
        400: [ErrorCode.MARKET_001, ErrorCode.BAD_REQUEST],
        404: [ErrorCode.MARKET_001],
        500: [ErrorCode.INTERNAL],
        503: [ErrorCode.AI_002, ErrorCode.UNAVAILABLE],
    }),
)
def get_metrics(
    repository: Repository,
    symbol: SymbolPath,
    timeframe: Annotated[Horizon | None, Query(description="One horizon; default: all.")] = None,
    model: Annotated[PredictionModel | None, Query(description="One model; default: both.")] = None,
    exchange: ExchangeQuery = None,
) -> MetricsResponse:
    parsed = parse_symbol(symbol)
    venue = market_service.last_trade(repository.market, parsed, parse_exchange(exchange)).venue
    rows = [r for r in repository.latest_each(parsed, venue)
            if (model is None or r.model == model.value) and (timeframe is None or r.horizon == timeframe.value)]
    if not rows:
        raise ApiError(ErrorCode.AI_002, {"symbol": parsed, "exchange": venue, "reason": "no forecast yet"},
                       headers={"Retry-After": str(_DEFAULT_INTERVAL_S)})
    return MetricsResponse(symbol=parsed, exchange=venue, metrics=[
        HorizonMetrics(model=PredictionModel(r.model), timeframe=Horizon(r.horizon), status=ModelStatus(r.status),
                       remaining_candles=r.remaining_candles, timestamp=ns_to_datetime(r.as_of_ns),
                       interval=r.interval, model_version=r.model_version, features_version=r.features_version,
                       all=_metrics(r.scores), recent=_metrics(r.recent))
        for r in rows
    ])
