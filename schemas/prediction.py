"""The prediction agent's events: forecasts and, once their horizon has passed, their outcomes.

Both are published on `an.predictions.v1` (keyed `venue:symbol`) and stored in ClickHouse
(infra/store/migrations/0006_predictions.sql): `Prediction` in `predictions`, `PredictionOutcome` in
`prediction_outcomes`, joined in the view `prediction_audit`. The models, scores and the
meaning of `confidence` are defined in `streams/core/predict/`; this is the wire contract.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import DecimalStr, Event, Interval, NanoTime

PREDICTION_TOPIC_NAME = "an.predictions.v1"


class PredictionModel(StrEnum):
    ENSEMBLE = "ensemble"  # river learners hedged by an exponentially weighted average
    LSTM = "lstm"  # a small recurrent network (PyTorch), trained online


class Horizon(StrEnum):
    H1 = "1h"
    H4 = "4h"
    D1 = "1d"


class ModelStatus(StrEnum):
    READY = "ready"  # enough scored forecasts: served
    WARMING_UP = "warming_up"  # not yet: `remaining_candles` more closed candles needed
    LOAD_FAILED = "load_failed"  # not yet, and restarted from scratch: its checkpoint could not be loaded


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Scores(BaseModel):
    """Prequential scores of one model on one horizon, over forecasts whose horizon had passed
    (definitions: streams/core/predict/scoring.py). Null until there is one outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scored: Annotated[int, Field(ge=0)]
    mae: float | None  # mean |forecast − realised| log return
    mae_naive: float | None  # the same for the no-change forecast: mean |realised|
    skill: float | None  # 1 − mae / mae_naive
    r2: float | None  # 1 − Σ error² / Σ realised²
    hit_rate: Probability | None  # directional accuracy
    up_rate: Probability | None  # share of outcomes strictly up
    mean_confidence: Probability | None
    calibration_error: Probability | None  # expected calibration error of `confidence`, 10 bins


class Prediction(Event):
    """One model's forecast for one horizon, issued at the close of a final candle.

    `event_ts_ns` is the as-of time: the candle's close time (open + interval), exchange event
    time; `recv_ts_ns` is that candle's receive time (the candle's close time for candles
    replayed from the store), never the wall clock, so replays give the same events.
    `prediction` = `price` × exp(`log_return`): the price implied at `target_ts_ns`.
    `confidence` = the calibrated probability that the price at `target_ts_ns` is strictly
    above `price` when `direction` is 1 (strictly below when −1).
    `prediction`, `log_return` and `confidence` are null while the features warm up; rows
    whose `status` is not `ready` are kept for audit but not served."""

    schema_version: Literal["prediction.v1"] = "prediction.v1"
    interval: Interval  # the candles the model learns from
    model: PredictionModel
    model_version: str
    features_version: str
    horizon: Horizon
    target_ts_ns: NanoTime
    price: DecimalStr = Field(gt=0)
    prediction: DecimalStr | None
    log_return: float | None  # served: the model's output after shrinkage
    raw_log_return: float | None  # the model's own output
    direction: Literal[-1, 1]
    confidence: Probability | None
    status: ModelStatus
    remaining_candles: Annotated[int, Field(ge=0)]
    scores: Scores  # since the model started
    recent_scores: Scores  # over the last scoring window


class PredictionOutcome(Event):
    """A forecast's realised value. `event_ts_ns` = the forecast's target time (when it was
    realised); `as_of_ns` identifies the forecast (with venue, symbol, interval, model, horizon)."""

    schema_version: Literal["prediction_outcome.v1"] = "prediction_outcome.v1"
    interval: Interval
    model: PredictionModel
    horizon: Horizon
    as_of_ns: NanoTime
    price: DecimalStr = Field(gt=0)
    realised_price: DecimalStr = Field(gt=0)
    realised_log_return: float
    log_return: float
    direction: Literal[-1, 1]
    confidence: Probability
    hit: bool  # the price moved strictly in `direction`
