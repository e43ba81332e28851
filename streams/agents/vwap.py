"""VWAP agent: final 1m candles (`md.candles.1m.v1`) -> a rolling VWAP per stream on
`an.vwap.v1`, stored in `vwap`. Decisions: `streams.core.vwap.RollingVwap`. The window is not
checkpointed: after a start (or a rebalance) it fills again from the next candles, and the
event's `candles` says how many it holds."""

from __future__ import annotations

from typing import Any

from infra.config.settings import Settings
from schemas.codecs import candles
from schemas.codecs import vwap as vwap_codec
from schemas.codecs.envelope import WireError
from schemas.symbols import stream_key
from schemas.vwap import Vwap
from streams.core.vwap import RollingVwap
from streams.runtime.batch_sink import TableSink, batch_agent, model_rows
from streams.runtime.emit import Emitter, topic_emitter
from streams.runtime.keyed import KeyedState, forget_on_revoke
from streams.sinks.clickhouse import ClickHouseSink


def register_vwap_agent(app: Any, settings: Settings, *, candle_topic: Any, vwap_topic: Any, sink: ClickHouseSink,
                        emit: Emitter[Vwap] | None = None) -> tuple[dict[str, Any], KeyedState[str, RollingVwap]]:
    """The VWAP agent (on the 1m candle topic), its sink (on `vwap_topic`) and the rebalance hook."""
    streams: KeyedState[str, RollingVwap] = KeyedState()
    window = settings.vwap.window_minutes
    publish = emit or topic_emitter(vwap_topic)

    async def vwap(stream: Any) -> None:
        async for event in stream.events():
            streams.count("messages")
            try:
                candle = candles.decode(event.value)
            except WireError:
                streams.count("malformed")  # the candle sink dead-letters it
                continue
            key = stream_key(candle.venue, candle.symbol)
            out = streams.get_or_create(key, event.message.tp, lambda: RollingVwap(window)).handle(candle)
            if out is not None:
                await publish(out)
                streams.count("published")

    rows = TableSink(sink, model_rows(vwap_codec.CODEC, "vwap", vwap_codec.table))
    forget_on_revoke(app, streams)
    return {"vwap": app.agent(candle_topic, name="vwap")(vwap), "vwap_sink": app.agent(vwap_topic, name="vwap_sink")(
        batch_agent(rows, settings.sink.batch_messages, settings.sink.flush_seconds))}, streams
