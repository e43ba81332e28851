"""Prediction agent: final candles (`md.candles.{interval}.v1`) -> forecasts and their outcomes
on `an.predictions.v1`, stored in `predictions` / `prediction_outcomes`, with the models
checkpointed in `prediction_checkpoints`. Decisions: `streams.core.predict_processor`, one
`PredictStream` per (venue, symbol); an optional second agent on the top-of-book topic feeds
the order-book imbalance feature.

Restart safety: whenever a stream's candles have advanced `checkpoint_every_s` of event time its
predictor is saved through the injected `ModelStore`. On the first candle of a stream after a
start (or after its partition comes back) the agent loads the checkpoint and replays, through
the injected `BarLoader`, the stored final candles between the checkpoint and this candle; a
stream without a checkpoint replays up to `bootstrap_bars`. A checkpoint that cannot be used is
logged and the stream starts from scratch with status `load_failed` (the API answers AI_001);
it never stops the worker. Replayed candles publish the same events again, which the idempotent
tables absorb. The models' work runs in a worker thread, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.codecs import book_top
from schemas.codecs.envelope import WireError
from streams.agents.candle_messages import admitted, candle_agent, read_candle
from streams.core.predict.features import Bar
from streams.core.predict_processor import (
    BookMeans,
    CandleView,
    PredictAgentConfig,
    PredictionEvent,
    PredictStream,
    admit,
    book_observation,
    candle_view,
    outcome_event,
    prediction_event,
)
from streams.runtime.batch_sink import TableSink, batch_agent
from streams.runtime.emit import Emitter, topic_emitter
from streams.runtime.keyed import KeyedState, forget_on_revoke
from streams.runtime.model_store import BarLoader, MemoryModelStore, ModelStore, load_predictor
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.predict import ClickHouseBarLoader, ClickHouseModelStore, prediction_rows

__all__ = ["MemoryModelStore", "PredictAgentConfig", "PredictAgentState", "PredictionEvent", "decode_candle",
           "outcome_event", "prediction_event", "register_predict_agent"]

def decode_candle(raw: bytes) -> CandleView:
    return read_candle(raw, candle_view)


@dataclass
class PredictAgentState:
    config: PredictAgentConfig
    store: ModelStore
    loader: BarLoader | None = None  # None: no replay from stored candles (tests, no database)
    streams: KeyedState[tuple[str, str], PredictStream] = field(default_factory=KeyedState)
    books: dict[tuple[str, str], BookMeans] = field(default_factory=dict)
    messages: int = 0
    folded: int = 0  # final candles of the interval folded into a predictor (replayed ones included)
    replayed: int = 0  # of which from the candle store
    skipped: int = 0  # not final, or another interval
    redelivered: int = 0
    malformed: int = 0
    load_failures: int = 0
    checkpoints: int = 0
    book_snapshots: int = 0
    published: int = 0

    async def fold(self, view: CandleView, partition: Any = None) -> list[PredictionEvent]:
        """The events a candle produces (none for a candle that changes nothing)."""
        if not admitted(self, admit(self.config, view)):
            return []
        key = (view.venue, view.symbol)
        s = self.streams.get(key)
        new = s is None
        if s is None:
            predictor = await load_predictor(self.store, self.config, *key)
            self.load_failures += predictor.load_error is not None
            s = self.streams.put(key, PredictStream(self.config, predictor), partition)
        gap = s.missing(view, new)
        replay: list[Bar] = []
        if gap is not None and self.loader is not None and self.config.bootstrap_bars > 0:
            # a gap longer than `bootstrap_bars` is one the predictor resets its features over anyway
            replay = list(await self.loader(*key, self.config.interval, *gap, self.config.bootstrap_bars))
        if s.redelivered(view) and not replay:
            self.redelivered += 1
            return []
        book = self.books.get(key)
        imbalance = book.mean(view.bar.open_ns) if book else None
        folded = await asyncio.to_thread(s.handle, view, replay, imbalance)
        self.folded += folded.folded
        self.redelivered += folded.redelivered
        self.replayed += len(replay)
        return folded.events

    async def checkpoint_if_due(self, venue: str, symbol: str) -> None:
        s = self.streams.get((venue, symbol))
        if s is None or not s.checkpoint_due():
            return
        last = s.predictor.last_open_ns
        assert last is not None  # checkpoint_due says so
        blob = await asyncio.to_thread(s.predictor.dumps)
        await self.store.save(venue, symbol, self.config.interval, last, blob)
        s.checkpointed_ns = last
        self.checkpoints += 1

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

    def forget(self, partitions: set[Any]) -> None:
        """Whoever gets a revoked partition next loads its streams' checkpoints."""
        self.streams.forget(partitions)


def make_book_agent(state: PredictAgentState) -> Callable[[Any], Any]:
    """Top-of-book snapshots (`book_snapshot.v1`) -> the imbalance feature of the next candles."""

    async def predict_book(stream: Any) -> None:
        async for raw in stream:
            try:
                state.observe_book(book_top.decode_fields(raw))
            except WireError:
                state.malformed += 1

    return predict_book


@dataclass
class PredictWiring:
    agents: dict[str, Any]
    state: PredictAgentState


def register_predict_agent(app: Any, settings: Any, *, candle_topic: Any, prediction_topic: Any,
                           sink: ClickHouseSink, book_top_topic: Any = None,
                           emit: Emitter[PredictionEvent] | None = None, store: ModelStore | None = None,
                           loader: BarLoader | None = None, config: PredictAgentConfig | None = None
                           ) -> PredictWiring:
    """Wire the prediction agent (on `candle_topic`), its sink (on `prediction_topic`), the
    book-imbalance agent (on `book_top_topic`, when given) and the rebalance hook on `app`.
    `emit`, `store` and `loader` replace publishing, the ClickHouse checkpoint store and the
    stored-candle loader (tests)."""
    config = config or PredictAgentConfig.from_settings(settings)
    if "lstm" in config.models:
        from streams.core.predict.lstm import limit_torch_threads

        limit_torch_threads(1)
    state = PredictAgentState(config, store if store is not None else ClickHouseModelStore(sink),
                              loader if loader is not None else ClickHouseBarLoader(sink))
    publish = emit or topic_emitter(prediction_topic)
    rows = TableSink(sink, prediction_rows)
    agents = {
        # the checkpoint comes after publishing: a crash in between re-folds the same candles, same events
        "predict": app.agent(candle_topic, name="predict")(candle_agent(
            state, decode_candle, publish, lambda view: state.checkpoint_if_due(view.venue, view.symbol))),
        "prediction_sink": app.agent(prediction_topic, name="prediction_sink")(
            batch_agent(rows, settings.sink.batch_messages, settings.sink.flush_seconds)),
    }
    if book_top_topic is not None:
        agents["predict_book"] = app.agent(book_top_topic, name="predict_book")(make_book_agent(state))
    forget_on_revoke(app, state)
    return PredictWiring(agents, state)
