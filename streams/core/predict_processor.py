"""The prediction agent's decisions: which candles count, the events a final candle of one
(venue, symbol) stream produces (outcomes of the forecasts it completes, then new forecasts),
which stored candles a stream must replay first, when its models are due a checkpoint, and the
order-book imbalance feature, and the counters of all that (`PredictProcessor`). No I/O: the
agent loads and saves checkpoints, reads stored candles and publishes what `handle` returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.config.settings import Settings
from schemas.codecs import book_top
from schemas.codecs.envelope import WireError
from schemas.events import INTERVAL_NS, Interval
from schemas.prediction import Horizon, ModelStatus, Prediction, PredictionModel, PredictionOutcome, Scores
from streams.core.candle_admission import Verdict
from streams.core.candle_input import CandleCounters, read_candle
from streams.core.predict.engine import MODELS, Forecast, Outcome, PredictConfig, StreamPredictor
from streams.core.predict.features import Bar
from streams.core.predict.scoring import ScoreSnapshot

PredictionEvent = Prediction | PredictionOutcome


@dataclass(frozen=True)
class PredictAgentConfig:
    interval: str = "1h"
    horizons: tuple[str, ...] = ("1h", "4h", "1d")
    models: tuple[str, ...] = MODELS
    min_scored: int = 200
    min_independent: int = 20
    checkpoint_every_s: int = 86400  # event time between checkpoints of a stream
    bootstrap_bars: int = 2000  # stored candles replayed into a stream that starts without a checkpoint
    book_depth: int = 5  # levels per side in the imbalance feature
    load_attempts: int = 3  # a store that cannot be reached is retried before the stream starts fresh
    retry_delay_s: float = 0.5  # times the attempt number

    def __post_init__(self) -> None:
        if self.interval not in INTERVAL_NS:
            raise ValueError(f"interval must be one of {tuple(INTERVAL_NS)}, got {self.interval!r}")
        if self.checkpoint_every_s < 0 or self.book_depth < 1 or self.load_attempts < 1:
            raise ValueError("book_depth and load_attempts must be at least 1, checkpoint_every_s not negative")
        if self.bootstrap_bars < 0 or self.retry_delay_s < 0:
            raise ValueError("bootstrap_bars and retry_delay_s must not be negative")
        self.core()  # validates horizons, models and min_scored

    def core(self) -> PredictConfig:
        return PredictConfig(interval_ns=INTERVAL_NS[self.interval], horizons=tuple(self.horizons),
                             models=tuple(self.models), min_scored=self.min_scored,
                             min_independent=self.min_independent)

    @property
    def interval_ns(self) -> int:
        return INTERVAL_NS[self.interval]

    @classmethod
    def from_settings(cls, settings: Settings) -> PredictAgentConfig:
        """From the `predict` section of the settings (ENTASIS_PREDICT_*)."""
        return cls(**settings.predict.model_dump())


@dataclass(frozen=True, slots=True)
class CandleView:
    venue: str
    symbol: str
    interval: str
    bar: Bar
    is_final: bool
    recv_ts_ns: int


def candle_view(c: dict[str, Any]) -> CandleView:
    bar = Bar.of(int(c["open_ts_ns"]), c["open"], c["high"], c["low"], c["close"], c["volume"])
    return CandleView(str(c["venue"]), str(c["symbol"]), str(c["interval"]), bar, bool(c["is_final"]),
                      int(c["recv_ts_ns"]))


def decode_candle(raw: bytes) -> CandleView:
    return read_candle(raw, candle_view)


def admit(config: PredictAgentConfig, view: CandleView) -> Verdict:
    if not view.is_final or view.interval != config.interval:
        return Verdict.SKIP
    return Verdict.FOLD if view.bar.valid else Verdict.MALFORMED


def book_imbalance(snapshot: dict[str, Any], depth: int) -> float | None:
    """(Σ bid size − Σ ask size) / (Σ bid size + Σ ask size) over the top `depth` levels."""
    try:
        bids = sum(float(size) for _, size in snapshot["bids"][:depth])
        asks = sum(float(size) for _, size in snapshot["asks"][:depth])
    except (KeyError, TypeError, ValueError):
        return None
    total = bids + asks
    return (bids - asks) / total if total > 0.0 and math.isfinite(total) else None


def book_observation(
    snapshot: dict[str, Any], depth: int, interval_ns: int
) -> tuple[tuple[str, str], int, float] | None:
    """(venue, symbol), candle bucket and imbalance of a decoded top-of-book snapshot; None when
    the book has no size to weigh. ValueError when the snapshot lacks its identity."""
    try:
        venue, symbol, ts = str(snapshot["venue"]), str(snapshot["symbol"]), int(snapshot["event_ts_ns"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"book snapshot without venue, symbol or time: {exc!r}") from None
    value = book_imbalance(snapshot, depth)
    return None if value is None else ((venue, symbol), ts - ts % interval_ns, value)


def _scores(s: ScoreSnapshot) -> Scores:
    return Scores(scored=s.scored, mae=s.mae, mae_naive=s.mae_naive, skill=s.skill, r2=s.r2, hit_rate=s.hit_rate,
                  up_rate=s.up_rate, mean_confidence=s.mean_confidence, calibration_error=s.calibration_error)


def prediction_event(venue: str, symbol: str, interval: str, f: Forecast, features_version: str,
                     recv_ts_ns: int) -> Prediction:
    return Prediction(
        venue=venue, symbol=symbol, event_ts_ns=f.as_of_ns, recv_ts_ns=recv_ts_ns, interval=Interval(interval),
        model=PredictionModel(f.model), model_version=f.model_version, features_version=features_version,
        horizon=Horizon(f.horizon), target_ts_ns=f.target_ns, price=f.price, prediction=f.prediction,
        log_return=f.log_return, raw_log_return=f.raw_log_return, direction=1 if f.direction > 0 else -1,
        confidence=f.confidence, status=ModelStatus(f.status), remaining_candles=f.remaining,
        scores=_scores(f.scores), recent_scores=_scores(f.recent),
    )


def outcome_event(venue: str, symbol: str, interval: str, o: Outcome, recv_ts_ns: int) -> PredictionOutcome:
    return PredictionOutcome(
        venue=venue, symbol=symbol, event_ts_ns=o.target_ns, recv_ts_ns=recv_ts_ns, interval=Interval(interval),
        model=PredictionModel(o.model), horizon=Horizon(o.horizon), as_of_ns=o.as_of_ns, price=o.price,
        realised_price=o.realised_price, realised_log_return=o.realised_log_return, log_return=o.log_return,
        direction=1 if o.direction > 0 else -1, confidence=o.confidence, hit=o.hit,
    )


@dataclass
class BookMeans:
    """Mean imbalance of the book snapshots per candle bucket, for the last few buckets (book
    snapshots of a bucket may arrive before or after its candle)."""

    buckets: dict[int, tuple[float, int]] = field(default_factory=dict)

    def add(self, bucket: int, value: float) -> None:
        total, n = self.buckets.get(bucket, (0.0, 0))
        self.buckets[bucket] = (total + value, n + 1)
        if len(self.buckets) > 4:
            del self.buckets[min(self.buckets)]

    def mean(self, bucket: int) -> float | None:
        total, n = self.buckets.get(bucket, (0.0, 0))
        return total / n if n else None


@dataclass
class Folded:
    events: list[PredictionEvent] = field(default_factory=list)
    folded: int = 0
    redelivered: int = 0


class PredictStream:
    """One stream's predictor and when it was last checkpointed."""

    def __init__(self, config: PredictAgentConfig, predictor: StreamPredictor) -> None:
        self.config = config
        self.predictor = predictor
        self.checkpointed_ns = predictor.last_open_ns  # last candle (open time) in the stored checkpoint

    def missing(self, view: CandleView, new: bool) -> tuple[int | None, int] | None:
        """(after, before) open times of the stored candles to replay before `view`, if any: a
        new stream without history bootstraps, and a gap after the last candle folded (lost in
        a crash before a checkpoint, or not delivered) is filled from the store."""
        last = self.predictor.last_open_ns
        if (last is None and new) or (last is not None and last + self.config.interval_ns < view.bar.open_ns):
            return last, view.bar.open_ns
        return None

    def redelivered(self, view: CandleView) -> bool:
        last = self.predictor.last_open_ns
        return last is not None and view.bar.open_ns <= last

    def handle(self, view: CandleView, replay: Sequence[Bar], imbalance: float | None) -> Folded:
        """Fold the replayed bars (received at their close), then the candle."""
        predictor, interval, step = self.predictor, self.config.interval, self.config.interval_ns
        out = Folded()
        for bar, recv_ns, imb in [*((b, b.open_ns + step, None) for b in replay),
                                  (view.bar, view.recv_ts_ns, imbalance)]:
            if predictor.last_open_ns is not None and bar.open_ns <= predictor.last_open_ns:
                out.redelivered += 1
                continue
            update = predictor.update(bar, imb)
            out.folded += 1
            out.events.extend(outcome_event(view.venue, view.symbol, interval, o, recv_ns) for o in update.outcomes)
            out.events.extend(prediction_event(view.venue, view.symbol, interval, f, predictor.features_version,
                                               recv_ns) for f in update.forecasts)
        return out

    def checkpoint_due(self) -> bool:
        last = self.predictor.last_open_ns
        if last is None:
            return False
        # between checkpoints a restart replays the candles since the last one from the store
        return self.checkpointed_ns is None or last - self.checkpointed_ns >= self.config.checkpoint_every_s * 10**9


class PredictProcessor(CandleCounters):
    """The decisions over every stream of a worker, and their counters. The caller does the I/O
    around them: it loads a new stream's predictor (`opened`), reads the stored candles
    `replay_window` names, runs `PredictStream.handle` (off the event loop) on what
    `is_redelivery` lets through, hands the result to `counted`, and stores the checkpoints
    `PredictStream.checkpoint_due` asks for."""

    def __init__(self, config: PredictAgentConfig) -> None:
        super().__init__()
        self.config = config
        self.books: dict[tuple[str, str], BookMeans] = {}
        self.replayed = 0  # of the folded candles, those read from the candle store
        self.load_failures = self.checkpoints = self.book_snapshots = 0

    def admit(self, view: CandleView) -> bool:
        return self.admitted(admit(self.config, view))

    def opened(self, predictor: StreamPredictor) -> PredictStream:
        """A stream's state around the predictor its checkpoint gave (or a fresh one)."""
        self.load_failures += predictor.load_error is not None
        return PredictStream(self.config, predictor)

    def replay_window(self, s: PredictStream, view: CandleView, new: bool) -> tuple[int | None, int] | None:
        """(after, before) open times of the stored candles to replay before `view`, at most
        `bootstrap_bars` of them: a longer gap is one the predictor resets its features over anyway."""
        return s.missing(view, new) if self.config.bootstrap_bars > 0 else None

    def is_redelivery(self, s: PredictStream, view: CandleView, replay: Sequence[Bar]) -> bool:
        if s.redelivered(view) and not replay:
            self.redelivered += 1
            return True
        return False

    def imbalance(self, view: CandleView) -> float | None:
        book = self.books.get((view.venue, view.symbol))
        return book.mean(view.bar.open_ns) if book else None

    def counted(self, folded: Folded, replayed: int) -> list[PredictionEvent]:
        self.folded += folded.folded
        self.redelivered += folded.redelivered
        self.replayed += replayed
        return folded.events

    def observe_book(self, snapshot: dict[str, Any]) -> None:
        try:
            observed = book_observation(snapshot, self.config.book_depth, self.config.interval_ns)
        except ValueError:
            self.malformed += 1
            return
        if observed is not None:
            key, bucket, value = observed
            self.book_snapshots += 1
            self.books.setdefault(key, BookMeans()).add(bucket, value)

    def observe_book_message(self, raw: bytes) -> None:
        """A `book_snapshot.v1` message of the top-of-book topic."""
        try:
            snapshot = book_top.decode_fields(raw)
        except WireError:
            self.malformed += 1
            return
        self.observe_book(snapshot)
