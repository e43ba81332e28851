"""Prediction agent: final candles (`md.candles.{interval}.v1`) -> forecasts and their outcomes
on `an.predictions.v1`, stored in `predictions` / `prediction_outcomes`, with the models
checkpointed in `prediction_checkpoints`. Decisions and counters:
`streams.core.predict_processor.PredictProcessor`, one `PredictStream` per (venue, symbol); an
optional second agent on the top-of-book topic feeds the order-book imbalance feature.

Restart safety: whenever a stream's candles have advanced `checkpoint_every_s` of event time its
predictor is saved through the injected `ModelStore`. On the first candle of a stream after a
start (or after its partition comes back) the agent loads the checkpoint and replays, through
the injected `BarLoader`, the stored final candles between the checkpoint and this candle; a
stream without a checkpoint replays up to `bootstrap_bars`. A checkpoint that cannot be used is
logged and the stream starts from scratch with status `load_failed` (the API answers AI_001);
it never stops the worker. Nor does the database going away: the stored candles a stream replays
are waited for, and a checkpoint that cannot be saved is tried again after the next candle.
Replayed candles publish the same events again, which the idempotent tables absorb. The models'
work runs in a worker thread, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from streams.agents.candle_messages import candle_agent
from streams.core.predict_processor import (
    CandleView,
    PredictAgentConfig,
    PredictionEvent,
    PredictProcessor,
    PredictStream,
    decode_candle,
    outcome_event,
    prediction_event,
)
from streams.runtime import model_store
from streams.runtime.batch_sink import TableSink, batch_agent
from streams.runtime.emit import Emitter, topic_emitter
from streams.runtime.keyed import KeyedState, forget_on_revoke
from streams.runtime.model_store import BarLoader, MemoryModelStore, ModelStore
from streams.runtime.retrying import brief, until_done
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.predict import ClickHouseBarLoader, ClickHouseModelStore, prediction_rows

log = logging.getLogger(__name__)

__all__ = ["MemoryModelStore", "PredictAgentConfig", "PredictAgentState", "PredictionEvent", "decode_candle",
           "outcome_event", "prediction_event", "register_predict_agent"]


class PredictAgentState(PredictProcessor):
    """The processor, with the streams' predictors and the I/O: `store` holds the checkpoints,
    `loader` the stored final candles (None: no replay; tests, no database)."""

    def __init__(self, config: PredictAgentConfig, store: ModelStore, loader: BarLoader | None = None) -> None:
        super().__init__(config)
        self.store, self.loader = store, loader
        self.failed_checkpoints = 0
        self.streams: KeyedState[tuple[str, str], PredictStream] = KeyedState()

    async def fold(self, view: CandleView, partition: Any = None) -> list[PredictionEvent]:
        """The events a candle produces (none for a candle that changes nothing)."""
        if not self.admit(view):
            return []
        key = (view.venue, view.symbol)
        s, new = await self.streams.get_or_load(  # a checkpoint it cannot read: `load_predictor`'s own policy
            key, partition, lambda: model_store.open_stream(self.store, self, *key))
        window = self.replay_window(s, view, new)
        replay = await until_done(lambda: model_store.stored_bars(self.loader, self.config, *key, window),
                                  f"reading the stored candles of {key} to replay")
        if self.is_redelivery(s, view, replay):
            return []
        return self.counted(await asyncio.to_thread(s.handle, view, replay, self.imbalance(view)), len(replay))

    async def checkpoint_if_due(self, venue: str, symbol: str) -> None:
        s = self.streams.get((venue, symbol))
        if s is not None and s.checkpoint_due():
            try:
                await model_store.save_predictor(self.store, self.config.interval, venue, symbol, s)
            except Exception as exc:  # due still: tried again after the next candle; a restart replays more
                self.failed_checkpoints += 1
                log.warning("storing the prediction checkpoint of %s %s failed (%s); tried again after the "
                            "next candle", venue, symbol, brief(exc))
                return
            self.checkpoints += 1

    def forget(self, partitions: set[Any]) -> None:
        """Whoever gets a revoked partition next loads its streams' checkpoints."""
        self.streams.forget(partitions)


@dataclass
class PredictWiring:
    agents: dict[str, Any]
    state: PredictAgentState


def register_predict_agent(app: Any, settings: Any, *, candle_topic: Any, prediction_topic: Any, sink: ClickHouseSink,
                           book_top_topic: Any = None, emit: Emitter[PredictionEvent] | None = None,
                           store: ModelStore | None = None, loader: BarLoader | None = None,
                           config: PredictAgentConfig | None = None) -> PredictWiring:
    """Wire the prediction agent (on `candle_topic`), its sink (on `prediction_topic`), the
    book-imbalance agent (on `book_top_topic`, when given: top-of-book snapshots -> the
    imbalance feature of the next candles) and the rebalance hook on `app`. `emit`, `store` and
    `loader` replace publishing, the ClickHouse checkpoint store and the stored-candle loader (tests)."""
    config = config or PredictAgentConfig.from_settings(settings)
    state = PredictAgentState(config, store if store is not None else ClickHouseModelStore(sink),
                              loader if loader is not None else ClickHouseBarLoader(sink))
    agents = {
        # the checkpoint comes after publishing: a crash in between re-folds the same candles, same events
        "predict": app.agent(candle_topic, name="predict")(candle_agent(
            state, decode_candle, emit or topic_emitter(prediction_topic),
            lambda view: state.checkpoint_if_due(view.venue, view.symbol))),
        "prediction_sink": app.agent(prediction_topic, name="prediction_sink")(batch_agent(
            TableSink(sink, prediction_rows), settings.sink.batch_messages, settings.sink.flush_seconds)),
    }
    if book_top_topic is not None:
        async def predict_book(stream: Any) -> None:
            async for raw in stream:
                state.observe_book_message(raw)

        agents["predict_book"] = app.agent(book_top_topic, name="predict_book")(predict_book)
    forget_on_revoke(app, state)
    return PredictWiring(agents, state)
