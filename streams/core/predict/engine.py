"""One stream's forecasting state: features, models, prequential scores, calibration, and the
forecasts in flight. Pure logic; `StreamPredictor.update(bar)` per closed candle.

Per closed candle t (bar index i), in this order:
1. outcomes: every forecast issued h bars ago (for each horizon h) is realised at this bar's
   close, y = ln(C_t / C_{t−h}), and scored (`scoring.RunningScore`), then fed to the
   confidence calibrator and the shrinkage of its model and horizon;
2. learning: each model learns from those forecasts' features and targets (delayed labels: a
   model never learns a target before the forecast it could have leaked into was scored);
3. forecasts: each model predicts every horizon from this bar's features.

Targets are in volatility units: y / (σ_t √h), σ_t the per-bar volatility at issue (see
`features.py`), clipped to ±`target_clip` for learning (a crash bar must not rewrite a linear
model); scores use the raw log returns, unclipped. The served log return is
β × model output × σ_t √h (`scoring.Shrink`), the price `prediction` = C_t · exp(served).

Status of a model and horizon (what the API answers):
- `ready`: at least `min_scored` of its forecasts have been scored, and at least
  `min_independent` horizons' worth (h-bar outcomes overlap: 24 one-day outcomes of hourly bars
  are one day's evidence), so the scores and the calibration rest on real evidence;
- `warming_up`: not yet; `remaining` says how many more candles that takes (API: AI_002 with
  Retry-After = remaining × interval);
- `load_failed`: not yet, and the stream started fresh because its checkpoint could not be
  loaded (API: AI_001).

Gaps: a missing candle is an interval without trades (price unchanged), so up to
`max_gap_fill` missing bars are filled with flat bars and go through the same steps. A longer
gap resets the features and drops the forecasts in flight (they cannot be scored honestly);
the models and scores are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from streams.core.predict import versions
from streams.core.predict.features import FEATURES_VERSION, Bar, FeatureBuilder, FeatureConfig, Features
from streams.core.predict.scoring import DirectionCalibrator, RunningScore, ScoreSnapshot, Shrink

HOUR_NS = 3600 * 10**9
HORIZON_NS: dict[str, int] = {"1h": HOUR_NS, "4h": 4 * HOUR_NS, "1d": 24 * HOUR_NS}
MODELS: tuple[str, ...] = ("ensemble", "lstm")

READY = "ready"
WARMING_UP = "warming_up"
LOAD_FAILED = "load_failed"


class Model(Protocol):
    name: str

    @property
    def version(self) -> str: ...

    def predict(self, index: int, features: Features) -> dict[int, float]: ...

    def learn(self, examples: Sequence[tuple[int, int, Features, float]]) -> None: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class PredictConfig:
    interval_ns: int = HOUR_NS  # the closed candles the models learn from
    horizons: tuple[str, ...] = ("1h", "4h", "1d")
    models: tuple[str, ...] = MODELS
    min_scored: int = 200  # scored forecasts before a model and horizon is served...
    min_independent: int = 20  # ...and at least this many horizons' worth of them (h-bar outcomes overlap)
    score_window: int = 500  # the "recent" scores
    calibration_window: int = 1000  # outcomes of a one-bar horizon; h times that for h bars...
    calibration_window_cap: int = 20_000  # ...up to this many
    shrink_halflife: float = 500.0  # in horizons
    target_clip: float = 6.0
    max_gap_fill: int = 24  # missing bars filled as flat; a longer gap resets the features
    ensemble_learning_rate: float = 0.02
    lstm_hidden: int = 16
    lstm_seq_len: int = 24
    lstm_steps: int = 1
    lstm_replay: int = 15
    lstm_lr: float = 1e-3
    seed: int = 7

    def __post_init__(self) -> None:
        if not self.horizons or any(h not in HORIZON_NS for h in self.horizons):
            raise ValueError(f"horizons must be some of {tuple(HORIZON_NS)}, got {self.horizons}")
        if not self.models or any(m not in MODELS for m in self.models):
            raise ValueError(f"models must be some of {MODELS}, got {self.models}")
        for h in self.horizons:
            if self.interval_ns <= 0 or HORIZON_NS[h] % self.interval_ns:
                raise ValueError(f"horizon {h} is not a whole number of {self.interval_ns} ns candles")
        if self.min_scored < 1 or self.min_independent < 0:
            raise ValueError("min_scored must be at least 1 and min_independent not negative")

    def required(self, horizon: str) -> int:
        """Scored forecasts before `horizon` is served: `min_scored`, and `min_independent`
        horizons' worth of outcomes (h per horizon of h bars) where that is more."""
        return max(self.min_scored, self.min_independent * self.steps(horizon))

    def steps(self, horizon: str) -> int:
        return HORIZON_NS[horizon] // self.interval_ns

    @property
    def features(self) -> FeatureConfig:
        return FeatureConfig(horizons=tuple(self.steps(h) for h in self.horizons))


@dataclass(frozen=True, slots=True)
class Forecast:
    """One model's forecast for one horizon, issued at the close of a candle.

    `log_return`, `price_factor` and `confidence` are None while the features are still
    warming up (the status rows then say only how long that takes)."""

    model: str
    model_version: str
    horizon: str
    as_of_ns: int  # close time of the candle (open + interval)
    target_ns: int  # as_of + horizon
    price: Decimal  # the candle's close
    log_return: float | None  # served: β × model output, in log-return units
    raw_log_return: float | None  # the model's own output, before shrinkage
    direction: int  # +1 up, −1 down: the sign of the model's output (up on a tie)
    confidence: float | None  # P(price at target_ns is strictly on the `direction` side of `price`)
    status: str
    remaining: int  # candles until `ready` (0 when ready)
    scores: ScoreSnapshot  # outcomes scored before this forecast was issued, since the start
    recent: ScoreSnapshot  # the same over the last `score_window`

    @property
    def prediction(self) -> Decimal | None:
        """The price implied at `target_ns`: close × exp(log_return), exact to 8 places."""
        if self.log_return is None:
            return None
        return (self.price * Decimal(repr(math.exp(self.log_return)))).quantize(Decimal("0.00000001"))


@dataclass(frozen=True, slots=True)
class Outcome:
    """A forecast's realised value, published when its horizon has passed."""

    model: str
    horizon: str
    as_of_ns: int
    target_ns: int
    price: Decimal
    realised_price: Decimal
    realised_log_return: float
    log_return: float
    direction: int
    confidence: float
    hit: bool


@dataclass(frozen=True, slots=True)
class Update:
    forecasts: list[Forecast]
    outcomes: list[Outcome]


@dataclass(slots=True)
class _Issued:
    raw: float  # model output, volatility units
    log_return: float  # served, log-return units
    direction: int
    confidence: float


@dataclass(slots=True)
class _Pending:
    index: int
    as_of_ns: int
    price: Decimal
    close: float
    features: Features
    scale: float  # σ√h at issue: target units
    issued: dict[str, _Issued]


@dataclass
class _Track:
    """Scores, calibration and shrinkage of one model on one horizon."""

    score: RunningScore
    calibrator: DirectionCalibrator
    shrink: Shrink


def _make_model(name: str, config: PredictConfig, n_features: int) -> Model:
    steps = [config.steps(h) for h in config.horizons]
    if name == "ensemble":
        from streams.core.predict.ensemble import EnsembleModel

        return EnsembleModel(steps, learning_rate=config.ensemble_learning_rate)
    # torch is imported only by a process that runs the network
    from streams.core.predict.lstm import LstmModel, limit_torch_threads

    limit_torch_threads(1)
    return LstmModel(n_features, steps, seq_len=config.lstm_seq_len, hidden=config.lstm_hidden,
                     lr=config.lstm_lr, steps=config.lstm_steps, replay=config.lstm_replay, seed=config.seed)


def _version(name: str, config: PredictConfig) -> str:
    if name == "ensemble":
        return versions.ENSEMBLE
    return versions.lstm(config.lstm_hidden, config.lstm_seq_len, config.lstm_replay, config.lstm_steps)


class _Deferred:
    """A stream's model, built on its first prediction or lesson. The libraries behind the models
    cost ~3 s of CPU to import (torch ~2, river's ensemble ~1) and a worker's threads share one
    interpreter lock, so paying that while trades flow slows them (bench_pipeline); a stream has
    nothing to predict until its features fill (`FeatureBuilder`: days of hourly candles on a
    fresh stream), so until then nothing is imported. A model built late is the same model: its
    initial state depends on its configuration and seed only, and a reset of one never built
    changes nothing. Built on the prediction agent's worker thread, never on the event loop."""

    def __init__(self, name: str, config: PredictConfig, n_features: int) -> None:
        self.name, self.config, self.n_features = name, config, n_features
        self.model: Model | None = None
        self.version = _version(name, config)

    def _built(self) -> Model:
        if self.model is None:
            self.model = _make_model(self.name, self.config, self.n_features)
        return self.model

    def predict(self, index: int, features: Features) -> dict[int, float]:
        return self._built().predict(index, features)

    def learn(self, examples: Sequence[tuple[int, int, Features, float]]) -> None:
        self._built().learn(examples)

    def reset(self) -> None:
        if self.model is not None:
            self.model.reset()


@dataclass
class StreamPredictor:
    config: PredictConfig
    load_error: str | None = None  # why the stream started fresh instead of from its checkpoint
    features: FeatureBuilder = field(init=False)
    models: dict[str, Model] = field(init=False)
    tracks: dict[tuple[str, str], _Track] = field(init=False)
    pending: dict[str, deque[_Pending]] = field(init=False)
    last_open_ns: int | None = None
    last_bar: Bar | None = None
    index: int = -1
    bars: int = 0  # bars folded, filled ones included
    filled: int = 0
    resets: int = 0
    dropped: int = 0  # forecasts in flight dropped by a reset

    def __post_init__(self) -> None:
        cfg = self.config
        fc = cfg.features
        self.features = FeatureBuilder(fc)
        self.models = {m: _Deferred(m, cfg, len(fc.names)) for m in cfg.models}
        self.tracks = {
            (m, h): _Track(
                RunningScore(cfg.score_window),
                # Overlapping h-bar outcomes count 1/h each, and the memories hold the same number
                # of horizons (so of independent outcomes) for every horizon.
                DirectionCalibrator(min(cfg.calibration_window * cfg.steps(h), cfg.calibration_window_cap),
                                    weight=1.0 / cfg.steps(h)),
                Shrink(cfg.shrink_halflife * cfg.steps(h), weight=1.0 / cfg.steps(h)),
            )
            for m in cfg.models for h in cfg.horizons
        }
        self.pending = {h: deque() for h in cfg.horizons}

    @property
    def features_version(self) -> str:
        return FEATURES_VERSION

    def update(self, bar: Bar, imbalance: float | None = None) -> Update:
        """Fold a closed candle (with the mean book imbalance seen during it, if any). A candle
        at or before the last one folded (a re-delivery) or with impossible prices changes
        nothing and returns no forecasts."""
        forecasts: list[Forecast] = []
        outcomes: list[Outcome] = []
        if not bar.valid or (self.last_open_ns is not None and bar.open_ns <= self.last_open_ns):
            return Update(forecasts, outcomes)
        if self.last_open_ns is not None and self.last_bar is not None:
            step = self.config.interval_ns
            missing = (bar.open_ns - self.last_open_ns) // step - 1
            if missing > self.config.max_gap_fill:
                self._reset()
            else:
                for _ in range(missing):
                    self._fold(self.last_bar.flat_after(self.last_open_ns + step), None, forecasts, outcomes)
                    self.filled += 1
        self._fold(bar, imbalance, forecasts, outcomes)
        return Update(forecasts, outcomes)

    def _reset(self) -> None:
        self.features.reset()
        for model in self.models.values():
            model.reset()
        for queue in self.pending.values():
            self.dropped += len(queue) * len(self.models)
            queue.clear()
        self.resets += 1

    def _fold(self, bar: Bar, imbalance: float | None, forecasts: list[Forecast], outcomes: list[Outcome]) -> None:
        cfg = self.config
        self.index += 1
        self.bars += 1
        self.last_open_ns = bar.open_ns
        self.last_bar = bar
        as_of = bar.open_ns + cfg.interval_ns
        feats = self.features.update(bar, imbalance)

        # 1. outcomes and scores
        examples: list[tuple[int, int, Features, float]] = []
        for h in cfg.horizons:
            steps = cfg.steps(h)
            queue = self.pending[h]
            if not queue or queue[0].index != self.index - steps:
                continue
            p = queue.popleft()
            realised = math.log(bar.close / p.close)
            target = max(-cfg.target_clip, min(cfg.target_clip, realised / p.scale))
            examples.append((steps, p.index, p.features, target))
            for name, issued in p.issued.items():
                track = self.tracks[(name, h)]
                hit = track.score.add(issued.log_return, realised, issued.direction, issued.confidence)
                track.calibrator.add(issued.raw, hit)
                track.shrink.add(issued.raw, target)
                outcomes.append(Outcome(name, h, p.as_of_ns, as_of, p.price, bar.close_exact, realised,
                                        issued.log_return, issued.direction, issued.confidence, hit))

        # 2. learning
        if examples:
            for model in self.models.values():
                model.learn(examples)

        # 3. forecasts
        outputs: dict[str, dict[int, float]] = {}
        if feats is not None:
            outputs = {name: model.predict(self.index, feats) for name, model in self.models.items()}
        for h in cfg.horizons:
            steps = cfg.steps(h)
            scale = feats.sigma * math.sqrt(steps) if feats is not None else 0.0
            issued_now: dict[str, _Issued] = {}
            for name, model in self.models.items():
                track = self.tracks[(name, h)]
                status, remaining = self._status(track, h, feats is not None)
                if feats is None:
                    forecasts.append(Forecast(name, model.version, h, as_of, as_of + HORIZON_NS[h], bar.close_exact,
                                              None, None, 1, None, status, remaining, track.score.snapshot(),
                                              track.score.recent_snapshot()))
                    continue
                raw = outputs[name][steps]
                served = track.shrink.beta * raw * scale
                direction = 1 if raw >= 0.0 else -1
                confidence = track.calibrator.probability(raw)
                issued_now[name] = _Issued(raw, served, direction, confidence)
                forecasts.append(Forecast(name, model.version, h, as_of, as_of + HORIZON_NS[h], bar.close_exact,
                                          served, raw * scale, direction, confidence, status, remaining,
                                          track.score.snapshot(), track.score.recent_snapshot()))
            if feats is not None:
                self.pending[h].append(_Pending(self.index, as_of, bar.close_exact, bar.close, feats, scale,
                                                issued_now))

    def _status(self, track: _Track, horizon: str, has_features: bool) -> tuple[str, int]:
        need = self.config.required(horizon) - track.score.scored
        if need <= 0:
            return READY, 0
        steps = self.config.steps(horizon)
        if has_features:
            in_flight = len(self.pending[horizon]) + 1  # this bar's forecast is about to join them
            remaining = need if need <= in_flight else steps + need - in_flight
        else:
            remaining = self.features.bars_until_ready() + steps + need
        return (LOAD_FAILED if self.load_error else WARMING_UP), remaining

    # --- checkpoints -------------------------------------------------------------------------

    def dumps(self) -> bytes:
        return encode_checkpoint(self)


CHECKPOINT_MAGIC = b"ENTASIS-PREDICT-1\n"


class CheckpointError(Exception):
    """A stored checkpoint that cannot be used: corrupt, of another format, or of another
    configuration (a changed interval, horizon set or model set is a different model)."""


def encode_checkpoint(predictor: StreamPredictor) -> bytes:
    payload = pickle.dumps(predictor, protocol=5)
    return CHECKPOINT_MAGIC + hashlib.blake2b(payload, digest_size=16).digest() + payload


def decode_checkpoint(blob: bytes, config: PredictConfig) -> StreamPredictor:
    """The predictor in a checkpoint written by `encode_checkpoint`, or CheckpointError.

    Checkpoints are pickles: they must come only from this deployment's own store (the digest
    catches corruption and truncation, not an attacker who can write to the store)."""
    if not blob.startswith(CHECKPOINT_MAGIC):
        raise CheckpointError("not a predictor checkpoint (unknown format)")
    body = blob[len(CHECKPOINT_MAGIC):]
    digest, payload = body[:16], body[16:]
    if hashlib.blake2b(payload, digest_size=16).digest() != digest:
        raise CheckpointError("checkpoint digest mismatch (corrupt or truncated)")
    try:
        predictor: Any = pickle.loads(payload)
    except Exception as exc:  # a class that moved, a torch state that no longer fits...
        raise CheckpointError(f"checkpoint cannot be unpickled: {exc!r}") from exc
    if not isinstance(predictor, StreamPredictor):
        raise CheckpointError(f"checkpoint holds a {type(predictor).__name__}, not a StreamPredictor")
    if _identity(predictor.config) != _identity(config):
        raise CheckpointError("checkpoint was written with another configuration")
    predictor.config = config  # serving thresholds may change without relearning
    return predictor


_SERVING_FIELDS = ("min_scored", "min_independent")


def _identity(config: PredictConfig) -> dict[str, Any]:
    """What defines the learned state: everything but the serving thresholds."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _SERVING_FIELDS}
