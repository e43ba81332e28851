"""Prediction agent: final candles (`md.candles.{interval}.v1`) -> forecasts and their outcomes
on `an.predictions.v1`, stored in `predictions` / `prediction_outcomes`, with the models
checkpointed in `prediction_checkpoints`.

Per stream (venue, symbol) it keeps a `StreamPredictor` (streams/core/predict/engine.py): each
final candle of the configured interval is folded in, which scores the forecasts whose horizon
it completes (published as `PredictionOutcome`), lets the models learn from them, and issues a
forecast per model and horizon (published as `Prediction`, with the model's status and live
scores). Candles that are not final, of other intervals, or at or before the stream's last
candle (re-deliveries) change nothing. An optional second agent on the top-of-book topic feeds
the order-book imbalance feature.

Restart safety: whenever a stream's candles have advanced `checkpoint_every_s` of event time (an
hour: every 1h candle, every 60th 1m candle) its predictor is saved through the injected
`ModelStore` (ClickHouse by default; ~0.3-1.5 MB a stream). On the first candle of a stream after a start
(or after its partition comes back) the agent loads the checkpoint and replays, through the
injected `BarLoader`, the stored final candles between the checkpoint and this candle, so
nothing learned is lost and no candle is skipped; a stream without a checkpoint replays up to
`bootstrap_bars` stored candles, so a new deployment on existing data starts warm. A checkpoint
that cannot be used (corrupt, another format or configuration) is logged and the stream starts
from scratch with status `load_failed` (the API answers AI_001) until the fresh model is warm;
it never stops the worker. Replayed candles publish their forecasts and outcomes again, with
the same values, which the idempotent tables absorb.

The models' work (milliseconds per candle, seconds for a replay) runs in a worker thread, so the
event loop keeps serving heartbeats and the other agents.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from infra.config.settings import Settings
from schemas.events import INTERVAL_NS, Interval
from schemas.prediction import (
    Horizon,
    ModelStatus,
    Prediction,
    PredictionModel,
    PredictionOutcome,
    Scores,
)
from schemas.symbols import stream_key
from schemas.wire import encode_event
from streams.agents.candle_messages import CandleMessageError, read_candle
from streams.core.predict.engine import (
    MODELS,
    CheckpointError,
    Forecast,
    Outcome,
    PredictConfig,
    StreamPredictor,
    decode_checkpoint,
)
from streams.core.predict.features import Bar
from streams.core.predict.scoring import ScoreSnapshot
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.predict import ClickHouseBarLoader, ClickHouseModelStore, outcomes_table, predictions_table

log = logging.getLogger(__name__)

PredictionEvent = Prediction | PredictionOutcome
PredictionEmitter = Callable[[PredictionEvent], Awaitable[None]]
# (venue, symbol, interval, after open ns (exclusive, None: no bound), before open ns, limit) -> bars oldest first
BarLoader = Callable[[str, str, str, int | None, int, int], Awaitable[Sequence[Bar]]]


class ModelStore(Protocol):
    async def load(self, venue: str, symbol: str, interval: str) -> bytes | None: ...

    async def save(self, venue: str, symbol: str, interval: str, last_open_ns: int, blob: bytes) -> None: ...


class MemoryModelStore:
    """For tests and for a worker without a database."""

    def __init__(self) -> None:
        self.saved: dict[tuple[str, str, str], tuple[int, bytes]] = {}
        self.saves = 0

    async def load(self, venue: str, symbol: str, interval: str) -> bytes | None:
        found = self.saved.get((venue, symbol, interval))
        return found[1] if found else None

    async def save(self, venue: str, symbol: str, interval: str, last_open_ns: int, blob: bytes) -> None:
        self.saves += 1
        self.saved[(venue, symbol, interval)] = (last_open_ns, blob)


@dataclass(frozen=True)
class PredictAgentConfig:
    interval: str = "1h"
    horizons: tuple[str, ...] = ("1h", "4h", "1d")
    models: tuple[str, ...] = MODELS
    min_scored: int = 200
    min_independent: int = 20
    checkpoint_every_s: int = 3600  # event time between checkpoints of a stream
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


def _candle_view(c: dict[str, Any]) -> CandleView:
    bar = Bar.of(int(c["open_ts_ns"]), c["open"], c["high"], c["low"], c["close"], c["volume"])
    return CandleView(str(c["venue"]), str(c["symbol"]), str(c["interval"]), bar, bool(c["is_final"]),
                      int(c["recv_ts_ns"]))


def decode_candle(raw: bytes) -> CandleView:
    return read_candle(raw, _candle_view)


def book_imbalance(snapshot: dict[str, Any], depth: int) -> float | None:
    """(Σ bid size − Σ ask size) / (Σ bid size + Σ ask size) over the top `depth` levels."""
    try:
        bids = sum(float(size) for _, size in snapshot["bids"][:depth])
        asks = sum(float(size) for _, size in snapshot["asks"][:depth])
    except (KeyError, TypeError, ValueError):
        return None
    total = bids + asks
    return (bids - asks) / total if total > 0.0 and math.isfinite(total) else None


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
class _BookMeans:
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
class _Stream:
    predictor: StreamPredictor
    partition: Any  # Faust TP, to drop the stream when its partition is revoked
    checkpointed_ns: int | None = None  # last candle (open time) in the stored checkpoint


@dataclass
class PredictAgentState:
    config: PredictAgentConfig
    store: ModelStore
    loader: BarLoader | None = None  # None: no replay from stored candles (tests, no database)
    streams: dict[tuple[str, str], _Stream] = field(default_factory=dict)
    books: dict[tuple[str, str], _BookMeans] = field(default_factory=dict)
    messages: int = 0
    folded: int = 0  # final candles of the interval folded into a predictor (replayed ones included)
    replayed: int = 0  # of which from the candle store
    skipped: int = 0  # not final, or another interval
    redelivered: int = 0
    malformed: int = 0
    load_failures: int = 0
    checkpoints: int = 0
    book_snapshots: int = 0

    @property
    def interval_ns(self) -> int:
        return INTERVAL_NS[self.config.interval]

    async def _load(self, venue: str, symbol: str) -> StreamPredictor:
        core = self.config.core()
        error: str
        for attempt in range(self.config.load_attempts):
            try:
                blob = await self.store.load(venue, symbol, self.config.interval)
            except Exception as exc:  # the store is unreachable: retry, then start fresh
                error = f"checkpoint store failed: {exc!r}"
                log.warning("prediction checkpoint of %s:%s not readable (attempt %d): %s", venue, symbol,
                            attempt + 1, exc)
                await asyncio.sleep(self.config.retry_delay_s * (attempt + 1))
                continue
            if blob is None:
                return StreamPredictor(core)
            try:
                return await asyncio.to_thread(decode_checkpoint, blob, core)
            except CheckpointError as exc:
                error = str(exc)
                break
        self.load_failures += 1
        log.error("prediction models of %s:%s start from scratch (AI_001 until warm): %s", venue, symbol, error)
        return StreamPredictor(core, load_error=error)

    async def stream_for(self, view: CandleView, partition: Any) -> tuple[_Stream, list[Bar]]:
        """The stream's state (its checkpoint loaded on first sight) and the stored candles to fold
        before `view`: up to `bootstrap_bars` of history for a stream that starts empty, and the
        candles between the last one folded and `view` when some are missing (lost in a crash
        before a checkpoint, or not delivered). A gap the store cannot fill was a stretch without
        trades, which the predictor fills as flat."""
        key = (view.venue, view.symbol)
        s = self.streams.get(key)
        new = s is None
        if s is None:
            predictor = await self._load(view.venue, view.symbol)
            s = _Stream(predictor, partition, predictor.last_open_ns)
            self.streams[key] = s
        last = s.predictor.last_open_ns
        limit = self.config.bootstrap_bars
        wanted = (last is None and new) or (last is not None and last + self.interval_ns < view.bar.open_ns)
        if self.loader is None or limit <= 0 or not wanted:
            return s, []
        # A gap longer than `limit` is one the predictor resets its features over anyway.
        return s, list(await self.loader(view.venue, view.symbol, self.config.interval, last, view.bar.open_ns, limit))

    def _fold_sync(self, s: _Stream, view: CandleView, replay: list[Bar],
                   imbalance: float | None) -> list[PredictionEvent]:
        predictor = s.predictor
        interval = self.config.interval
        version = predictor.features_version
        events: list[PredictionEvent] = []
        for bar, recv_ns, imb in [*((b, b.open_ns + self.interval_ns, None) for b in replay),
                                  (view.bar, view.recv_ts_ns, imbalance)]:
            if predictor.last_open_ns is not None and bar.open_ns <= predictor.last_open_ns:
                self.redelivered += 1
                continue
            update = predictor.update(bar, imb)
            self.folded += 1
            events.extend(outcome_event(view.venue, view.symbol, interval, o, recv_ns) for o in update.outcomes)
            events.extend(prediction_event(view.venue, view.symbol, interval, f, version, recv_ns)
                          for f in update.forecasts)
        self.replayed += len(replay)
        return events

    async def fold(self, view: CandleView, partition: Any = None) -> list[PredictionEvent]:
        """The events a candle produces (none for a candle that changes nothing)."""
        if not view.is_final or view.interval != self.config.interval:
            self.skipped += 1
            return []
        if not view.bar.valid:
            self.malformed += 1
            return []
        s, replay = await self.stream_for(view, partition)
        if s.predictor.last_open_ns is not None and view.bar.open_ns <= s.predictor.last_open_ns and not replay:
            self.redelivered += 1
            return []
        book = self.books.get((view.venue, view.symbol))
        imbalance = book.mean(view.bar.open_ns) if book else None
        return await asyncio.to_thread(self._fold_sync, s, view, replay, imbalance)

    async def checkpoint_if_due(self, venue: str, symbol: str) -> None:
        s = self.streams.get((venue, symbol))
        last = s.predictor.last_open_ns if s is not None else None
        if s is None or last is None:
            return
        if s.checkpointed_ns is not None and last - s.checkpointed_ns < self.config.checkpoint_every_s * 10**9:
            return  # a restart replays the candles since the checkpoint from the candle store
        blob = await asyncio.to_thread(s.predictor.dumps)
        await self.store.save(venue, symbol, self.config.interval, last, blob)
        s.checkpointed_ns = last
        self.checkpoints += 1

    def observe_book(self, snapshot: dict[str, Any]) -> None:
        try:
            venue, symbol, ts = str(snapshot["venue"]), str(snapshot["symbol"]), int(snapshot["event_ts_ns"])
        except (KeyError, TypeError, ValueError):
            self.malformed += 1
            return
        value = book_imbalance(snapshot, self.config.book_depth)
        if value is None:
            return
        self.book_snapshots += 1
        self.books.setdefault((venue, symbol), _BookMeans()).add(ts - ts % self.interval_ns, value)

    def forget(self, partitions: set[Any]) -> None:
        """Drop the streams of revoked partitions; whoever gets them next loads the checkpoint."""
        for key in [k for k, s in self.streams.items() if s.partition in partitions]:
            del self.streams[key]


def make_predict_agent(state: PredictAgentState, emit: PredictionEmitter
                       ) -> Callable[[Any], AsyncIterator[PredictionEvent]]:
    async def predict(stream: Any) -> AsyncIterator[PredictionEvent]:
        async for event in stream.events():
            state.messages += 1
            try:
                view = decode_candle(event.value)
            except CandleMessageError:
                state.malformed += 1  # the candle sink dead-letters it: one report per message
                continue
            produced = await state.fold(view, event.message.tp)
            for item in produced:
                await emit(item)
                yield item
            if produced:
                # after publishing: a crash in between re-folds the same candles, same events
                await state.checkpoint_if_due(view.venue, view.symbol)

    return predict


def make_book_agent(state: PredictAgentState) -> Callable[[Any], Any]:
    """Top-of-book snapshots (`book_snapshot.v1`) -> the imbalance feature of the next candles."""

    async def predict_book(stream: Any) -> None:
        async for raw in stream:
            try:
                state.observe_book(orjson.loads(raw))
            except orjson.JSONDecodeError:
                state.malformed += 1

    return predict_book


def make_prediction_sink(sink: ClickHouseSink, batch: int, within: float) -> Callable[[Any], Any]:
    async def prediction_sink(stream: Any) -> None:
        async for values in stream.take(batch, within=within):
            predictions: list[Prediction] = []
            outcomes: list[PredictionOutcome] = []
            for raw in values:
                try:
                    kind = orjson.loads(raw).get("schema_version")
                    if kind == "prediction.v1":
                        predictions.append(Prediction.model_validate_json(raw))
                    elif kind == "prediction_outcome.v1":
                        outcomes.append(PredictionOutcome.model_validate_json(raw))
                except (ValueError, AttributeError):
                    continue  # not ours to judge twice; the topic keeps the bytes
            if predictions:
                await sink.insert("predictions", predictions_table(predictions))
            if outcomes:
                await sink.insert("prediction_outcomes", outcomes_table(outcomes))

    return prediction_sink


def topic_emitter(topic: Any) -> PredictionEmitter:
    async def publish(event: PredictionEvent) -> None:
        fut = await topic.send(key=stream_key(event.venue, event.symbol).encode(), value=encode_event(event))
        await fut  # on the broker before the candle behind it is acknowledged

    return publish


@dataclass
class PredictWiring:
    agents: dict[str, Any]
    state: PredictAgentState


def register_predict_agent(
    app: Any,
    settings: Any,
    *,
    candle_topic: Any,
    prediction_topic: Any,
    sink: ClickHouseSink,
    book_top_topic: Any = None,
    emit: PredictionEmitter | None = None,
    store: ModelStore | None = None,
    loader: BarLoader | None = None,
    config: PredictAgentConfig | None = None,
) -> PredictWiring:
    """Wire the prediction agent (on `candle_topic`: the candle topic of the configured
    interval), its sink (on `prediction_topic`), the book-imbalance agent (on `book_top_topic`,
    when given) and the rebalance hook on `app`.

    `settings`: any object; its `predict_*` attributes override `PredictAgentConfig`'s defaults
    (unless `config` is given). `emit`, `store` and `loader` replace publishing to
    `prediction_topic`, the ClickHouse checkpoint store and the stored-candle loader (tests)."""
    config = config or PredictAgentConfig.from_settings(settings)
    if "lstm" in config.models:
        from streams.core.predict.lstm import limit_torch_threads

        limit_torch_threads(1)
    state = PredictAgentState(config, store if store is not None else ClickHouseModelStore(sink),
                              loader if loader is not None else ClickHouseBarLoader(sink))
    batch, within = settings.sink.batch_messages, settings.sink.flush_seconds
    agents = {
        "predict": app.agent(candle_topic, name="predict")(make_predict_agent(state, emit or topic_emitter(
            prediction_topic))),
        "prediction_sink": app.agent(prediction_topic, name="prediction_sink")(make_prediction_sink(sink, batch,
                                                                                                    within)),
    }
    if book_top_topic is not None:
        agents["predict_book"] = app.agent(book_top_topic, name="predict_book")(make_book_agent(state))

    async def _forget_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        state.forget(revoked)

    app.on_partitions_revoked.connect(_forget_revoked)
    log.debug("prediction agent on %s candles: %s x %s", config.interval, config.models, config.horizons)
    return PredictWiring(agents, state)

