"""The one place where the Faust app, its topics and agents are wired.

`build_worker(settings)` returns the app and the parts tests may swap (the emitters and
the sink's client factory) through arguments, never through monkeypatching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
from clickhouse_connect.driver.client import Client

from infra.settings import Settings
from schemas import topics
from schemas.events import Candle, DeadLetter
from schemas.symbols import stream_key
from schemas.wire import encode_event
from streams.agents.candles import CandleAgentState, CandleEmitter, DeadLetterEmitter, make_candle_agent
from streams.agents.sinks import make_candle_sink, make_dead_letter_sink, make_trade_sink
from streams.sinks.clickhouse import ClickHouseSink


@dataclass
class Worker:
    app: faust.App
    candle_state: CandleAgentState
    sink: ClickHouseSink
    agents: dict[str, Any]


def faust_settings(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker": f"kafka://{settings.kafka_bootstrap}",
        "value_serializer": "raw",
        "key_serializer": "raw",
        "store": "memory://",
        "topic_disable_leader": True,  # no hidden leader topic: every topic is declared in schemas.topics
        "topic_allow_declare": False,  # topics are created up front by `entasis topics create`
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": False,
        "producer_acks": -1,
        # The candles agent holds back acknowledgements of open windows on purpose (see
        # streams/agents/candles.py); waiting for them at shutdown or rebalance would hang.
        "stream_wait_empty": False,
    }
    if settings.broker_flavour == "tansu":
        # Tansu holds a group join for half the session timeout: keep it short so a
        # (re)started worker gets its partitions in about a second, not five.
        conf.update(broker_session_timeout=3.0, broker_heartbeat_interval=0.5, broker_rebalance_timeout=3.0)
    return conf


def build_worker(
    settings: Settings,
    client_factory: Callable[[], Client] | None = None,
    candle_emitter: CandleEmitter | None = None,
    dead_letter_emitter: DeadLetterEmitter | None = None,
) -> Worker:
    ns = settings.topic_namespace
    app = faust.App(settings.worker_id, **faust_settings(settings))
    trades_topic = app.topic(topics.TRADES.full_name(ns))
    candles_1m = app.topic(topics.CANDLES["1m"].full_name(ns))
    dead_topic = app.topic(topics.DEAD_LETTER.full_name(ns))

    if client_factory is None:
        from infra.clickhouse import make_client

        def client_factory() -> Client:
            return make_client(settings)

    async def publish_candle(candle: Candle) -> None:
        fut = await candles_1m.send(key=stream_key(candle.venue, candle.symbol).encode(), value=encode_event(candle))
        await fut  # the candle is on the broker before the trades behind it are acknowledged

    async def publish_dead_letter(letter: DeadLetter) -> None:
        fut = await dead_topic.send(key=letter.source.encode(), value=encode_event(letter))
        await fut

    emit_candle = candle_emitter or publish_candle
    emit_dead = dead_letter_emitter or publish_dead_letter
    sink = ClickHouseSink(client_factory)
    state = CandleAgentState("1m", settings.candle_lateness_ms * 10**6, settings.candle_grace_ms * 10**6)
    batch, within = settings.sink_batch_messages, settings.sink_flush_seconds

    agents = {
        "candles_1m": app.agent(trades_topic, name="candles_1m")(
            make_candle_agent(state, emit_candle, emit_dead, trades_topic.get_topic_name())
        ),
        "trade_sink": app.agent(trades_topic, name="trade_sink")(
            make_trade_sink(sink, batch, within, emit_dead, trades_topic.get_topic_name())
        ),
        "candle_sink": app.agent(candles_1m, name="candle_sink")(
            make_candle_sink(sink, batch, within, emit_dead, candles_1m.get_topic_name())
        ),
        "dead_letter_sink": app.agent(dead_topic, name="dead_letter_sink")(make_dead_letter_sink(sink, batch, within)),
    }

    async def _forget_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        state.forget(revoked)

    app.on_partitions_revoked.connect(_forget_revoked)  # type: ignore[arg-type]  # mode's stub is too narrow

    return Worker(app, state, sink, agents)
