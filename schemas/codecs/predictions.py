"""`an.predictions.v1`: one event per message, a forecast (`prediction.v1`) or, once its horizon
has passed, its outcome (`prediction_outcome.v1`); `decode` takes either."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import pyarrow as pa

from schemas.codecs.envelope import TS, EventCodec, WireError, decimals, load, version_of
from schemas.limits import amount_problem, count_problem
from schemas.prediction import Prediction, PredictionOutcome, Scores


def _prediction_storable(e: Prediction) -> str | None:
    """Amounts `predictions` holds once rounded to 8 places; UInt32 counters."""
    return (amount_problem(e.price, "price")
            or (amount_problem(e.prediction, "prediction") if e.prediction is not None else None)
            or count_problem(e.remaining_candles, "remaining_candles")
            or count_problem(e.scores.scored, "scores.scored")
            or count_problem(e.recent_scores.scored, "recent_scores.scored"))


def _outcome_storable(e: PredictionOutcome) -> str | None:
    return amount_problem(e.price, "price") or amount_problem(e.realised_price, "realised_price")


PREDICTION_CODEC = EventCodec(Prediction, _prediction_storable)
OUTCOME_CODEC = EventCodec(PredictionOutcome, _outcome_storable)
PREDICTION = PREDICTION_CODEC.format
PREDICTION_OUTCOME = OUTCOME_CODEC.format
FORMATS = (PREDICTION, PREDICTION_OUTCOME)
_BY_FORMAT: dict[str, EventCodec[Prediction] | EventCodec[PredictionOutcome]] = {
    PREDICTION: PREDICTION_CODEC,
    PREDICTION_OUTCOME: OUTCOME_CODEC,
}


def encode(event: Prediction | PredictionOutcome) -> bytes:
    return _BY_FORMAT[event.schema_version].encode(event)  # type: ignore[arg-type]  # matched by format


def decode(raw: bytes | str) -> Prediction | PredictionOutcome:
    msg = load(raw, "prediction message")
    version = version_of(msg)
    codec = _BY_FORMAT.get(version) if isinstance(version, str) else None
    if codec is None:
        raise WireError(f"expected one of {FORMATS}, got {version!r}")
    return codec.validate(msg)


# --- the `predictions` and `prediction_outcomes` tables (infra/store/migrations/0006_predictions.sql)

F64 = pa.float64()
SCORE_FIELDS = ("mae", "mae_naive", "skill", "r2", "hit_rate", "up_rate", "mean_confidence", "calibration_error")


def _decimals(values: Sequence[Decimal | None]) -> pa.Array:
    return decimals(values, quantize=True)  # computed values: rounded to the store's 8 places


def _score_columns(prefix: str, scores: Sequence[Scores]) -> dict[str, pa.Array]:
    cols = {f"{prefix}scored": pa.array([s.scored for s in scores], pa.uint32())}
    for name in SCORE_FIELDS:
        cols[f"{prefix}{name}"] = pa.array([getattr(s, name) for s in scores], F64)
    return cols


def predictions_table(events: Sequence[Prediction]) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "venue": pa.array([e.venue for e in events], pa.string()),
        "symbol": pa.array([e.symbol for e in events], pa.string()),
        "interval": pa.array([e.interval.value for e in events], pa.string()),
        "model": pa.array([e.model.value for e in events], pa.string()),
        "horizon": pa.array([e.horizon.value for e in events], pa.string()),
        "as_of": pa.array([e.event_ts_ns for e in events], TS),
        "target_ts": pa.array([e.target_ts_ns for e in events], TS),
        "model_version": pa.array([e.model_version for e in events], pa.string()),
        "features_version": pa.array([e.features_version for e in events], pa.string()),
        "price": _decimals([e.price for e in events]),
        "prediction": _decimals([e.prediction for e in events]),
        "log_return": pa.array([e.log_return for e in events], F64),
        "raw_log_return": pa.array([e.raw_log_return for e in events], F64),
        "direction": pa.array([e.direction for e in events], pa.int8()),
        "confidence": pa.array([e.confidence for e in events], F64),
        "status": pa.array([e.status.value for e in events], pa.string()),
        "remaining_candles": pa.array([e.remaining_candles for e in events], pa.uint32()),
    }
    cols.update(_score_columns("", [e.scores for e in events]))
    cols.update(_score_columns("recent_", [e.recent_scores for e in events]))
    cols["recv_ts"] = pa.array([e.recv_ts_ns for e in events], TS)
    return pa.table(cols)


def outcomes_table(events: Sequence[PredictionOutcome]) -> pa.Table:
    return pa.table(
        {
            "venue": pa.array([e.venue for e in events], pa.string()),
            "symbol": pa.array([e.symbol for e in events], pa.string()),
            "interval": pa.array([e.interval.value for e in events], pa.string()),
            "model": pa.array([e.model.value for e in events], pa.string()),
            "horizon": pa.array([e.horizon.value for e in events], pa.string()),
            "as_of": pa.array([e.as_of_ns for e in events], TS),
            "target_ts": pa.array([e.event_ts_ns for e in events], TS),
            "price": _decimals([e.price for e in events]),
            "realised_price": _decimals([e.realised_price for e in events]),
            "realised_log_return": pa.array([e.realised_log_return for e in events], F64),
            "log_return": pa.array([e.log_return for e in events], F64),
            "direction": pa.array([e.direction for e in events], pa.int8()),
            "confidence": pa.array([e.confidence for e in events], F64),
            "hit": pa.array([int(e.hit) for e in events], pa.uint8()),
            "recv_ts": pa.array([e.recv_ts_ns for e in events], TS),
        }
    )
