"""`/analysis/prediction/{symbol}` (the latest forecast of a model and horizon) and
`/analysis/prediction/{symbol}/metrics` (the live prequential scores of every model and horizon).

Parse, ask api/prediction_service.py, return its model. Plain `def` routes on purpose, as in
api/routes/market.py: FastAPI runs them in its threadpool, where the repository's per-thread
clients live.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api import prediction_service
from api.deps import ANALYSIS_READER, ExchangeQuery, PredictionRepositoryDep, SymbolPath
from api.errors import ErrorCode, openapi_error_responses
from api.params import parse_exchange, parse_symbol
from api.prediction_service import MetricsResponse, PredictionResponse
from api.security import SECURITY_ERRORS
from schemas.prediction import Horizon, PredictionModel

router = APIRouter(prefix="/analysis/prediction", tags=["analysis"], dependencies=[ANALYSIS_READER])

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


_RETRY_AFTER = {"Retry-After": {"description": "AI_002: seconds until the model is expected to answer.",
                                "schema": {"type": "integer", "minimum": 1}}}


def _responses(errors: dict[int, list[ErrorCode]]) -> dict[int | str, dict[str, Any]]:
    responses = openapi_error_responses({**errors, **SECURITY_ERRORS})
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
    repository: PredictionRepositoryDep,
    symbol: SymbolPath,
    timeframe: Annotated[Horizon, Query(description="Forecast horizon.")] = Horizon.H1,
    model: Annotated[PredictionModel, Query(description="`ensemble` or `lstm` (see above).")] = (
        PredictionModel.ENSEMBLE
    ),
    exchange: ExchangeQuery = None,
) -> PredictionResponse:
    return prediction_service.forecast(repository, parse_symbol(symbol), parse_exchange(exchange), model, timeframe)


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
    repository: PredictionRepositoryDep,
    symbol: SymbolPath,
    timeframe: Annotated[Horizon | None, Query(description="One horizon; default: all.")] = None,
    model: Annotated[PredictionModel | None, Query(description="One model; default: both.")] = None,
    exchange: ExchangeQuery = None,
) -> MetricsResponse:
    return prediction_service.scores(repository, parse_symbol(symbol), parse_exchange(exchange), model, timeframe)
