"""The one place where the Faust app, its topics and agents are wired.

`build_worker(settings)` returns the app and the parts tests may swap (the emitters and
the sink's client factory) through arguments, never through monkeypatching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from clickhouse_connect.driver.client import Client
from faust.tables import TableManager

from infra.config.kafka import ssl_context
from infra.config.settings import Settings
from schemas import topics
from schemas.events import DeadLetter, QualityEvent
from streams.agents.book import clickhouse_snapshot_store, register_book_agents
from streams.agents.candles import (
    CandleAgentState,
    CandleConfig,
    CandleEmitter,
    CheckpointStore,
    DeadLetterEmitter,
    QualityEmitter,
    make_candle_agent,
    on_tick,
)
from streams.agents.portfolio import register_portfolio_agent
from streams.agents.predict import register_predict_agent
from streams.agents.quality import StaleFeedMonitor, StreamClock
from streams.agents.risk import register_risk_agents
from streams.agents.sinks import (
    PortfolioEventSink,
    make_candle_sink,
    make_dead_letter_sink,
    make_quality_sink,
    make_trade_sink,
    portfolio_event_sink_agent,
)
from streams.agents.vwap import register_vwap_agent
from streams.runtime.emit import routed, topic_emitter
from streams.runtime.keyed import forget_on_revoke
from streams.runtime.metrics import (
    DatabaseProbe,
    MeteredClickHouseSink,
    WorkerMetrics,
    attach_state,
    serve,
    track_assignment,
)
from streams.runtime.preload import start_preload
from streams.sinks.checkpoints import ClickHouseCheckpointStore
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.portfolio_snapshots import ClickHousePortfolioSnapshotStore
from streams.sinks.trade_store import TradeStoreProcess


@dataclass
class Worker:
    app: faust.App
    candle_state: CandleAgentState
    sink: ClickHouseSink
    agents: dict[str, Any]
    metrics: WorkerMetrics
    trade_store: TradeStoreProcess | None = None  # closed by whoever runs the app (`entasis worker`)


# Faust stops fetching a partition once an agent's buffer is 80 % full, but still delivers what
# the last poll returned, and while a full buffer takes it every partition waits. The history a
# fresh `up` imports (90 days: ~9,500 candle messages in one poll) overran the risk and prediction
# agents' 4,096 and held trade storage up for a minute. Candle messages are small (~0.4 KB), so
# their agents buffer 32,768, and no poll returns more than the 20 % headroom above the mark.
CANDLE_BUFFER = 32_768
MAX_POLL_RECORDS = 5_000
# With the embedded broker (see faust_settings)
TANSU_SESSION_TIMEOUT_S = 2.0


def candle_topic(app: faust.App, *names: str) -> Any:
    """A topic whose agents buffer `CANDLE_BUFFER` messages (`app.topic` drops its `maxsize`
    argument in faust-streaming 0.15.3, so the topic is built directly)."""
    return faust.Topic(app, topics=list(names), maxsize=CANDLE_BUFFER)


class PromptTableManager(TableManager):  # type: ignore[misc]
    """Faust's table manager without its fixed one-second wait before table recovery starts
    (`faust/tables/manager.py` `on_start`: it gives tables declared late a chance to register;
    every table here is declared before the app starts, and the worker has none). Recovery gates
    the first fetch, so the wait was a second of every worker start."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def faust_settings(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker": f"kafka://{settings.kafka_bootstrap}",
        "value_serializer": "raw",
        "key_serializer": "raw",
        "store": "memory://",
        "TableManager": PromptTableManager,
        "topic_disable_leader": True,  # no hidden leader topic: every topic is declared in schemas.topics
        "topic_allow_declare": False,  # topics are created up front by `entasis topics create`
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": False,
        "producer_acks": -1,
        # Raw messages carry ~100 trades: a 1 MB per-partition fetch cap (Faust's default)
        # left the worker idle between fetches (tests/bench/bench_pipeline.py).
        "consumer_max_fetch_size": 16 * 1024 * 1024,
        # Bounds what one poll hands the agents: see CANDLE_BUFFER
        "broker_max_poll_records": MAX_POLL_RECORDS,
        # The candles agent acknowledges only what a stored checkpoint covers (see
        # streams/agents/candles.py); waiting for the rest at shutdown or rebalance would hang.
        "stream_wait_empty": False,
        # Faust keeps a small folder per app id (its version marker; our tables are in memory);
        # under the data directory rather than `<app id>-data` in whatever folder the worker ran.
        "datadir": str(Path(settings.data_dir) / "faust" / "{conf.name}"),
    }
    if settings.kafka_security_protocol != "PLAINTEXT":
        # SASL on the broker (docker-compose): Faust's own credentials class, from the same settings
        # as every other client (infra/config/kafka.py)
        conf["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_username, password=settings.kafka_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism, ssl_context=ssl_context(settings))
    if settings.broker_flavour == "tansu":
        # Tansu holds a group join in whole-second sleeps until half the session timeout has
        # passed (tansu-broker coordinator/group/administrator.rs, join_group's loop): 2 s makes
        # it one sleep, the least it allows, so a (re)started worker has its partitions in ~1 s
        # (3 s made two). A member is evicted only when another one's request finds it silent
        # for the session timeout; heartbeats go every 0.5 s.
        conf.update(broker_session_timeout=TANSU_SESSION_TIMEOUT_S, broker_heartbeat_interval=0.5,
                    broker_rebalance_timeout=3.0)
    return conf


def build_worker(
    settings: Settings,
    client_factory: Callable[[], Client] | None = None,
    candle_emitter: CandleEmitter | None = None,
    quality_emitter: QualityEmitter | None = None,
    dead_letter_emitter: DeadLetterEmitter | None = None,
    checkpoint_store: CheckpointStore | None = None,
) -> Worker:
    ns = settings.topic_namespace
    (Path(settings.data_dir) / "faust").mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(settings.worker.id, **faust_settings(settings))
    trades_topic = app.topic(topics.TRADES.full_name(ns))
    candle_topics = {iv: candle_topic(app, spec.full_name(ns)) for iv, spec in topics.CANDLES.items()}
    all_candles = candle_topic(app, *(spec.full_name(ns) for spec in topics.CANDLES.values()))
    quality_topic = app.topic(topics.QUALITY.full_name(ns))
    dead_topic = app.topic(topics.DEAD_LETTER.full_name(ns))

    trade_store: TradeStoreProcess | None = None
    if client_factory is None:
        from infra.store.clickhouse import make_client

        def client_factory() -> Client:
            return make_client(settings)

        # The trade sink's rows built and inserted on the machine's other core (streams.sinks.trade_store);
        # started now, so that its imports overlap the worker's start-up. A caller's own client
        # factory (tests) keeps that work in this process.
        trade_store = TradeStoreProcess(settings)
        trade_store.start()

    # each waits for the broker before the input behind it is acknowledged; the candles agent
    # sends without waiting and waits for them all before its next checkpoint (runtime.checkpointed)
    per_interval = {iv: topic_emitter(topic) for iv, topic in candle_topics.items()}
    publish_candle: CandleEmitter = routed(per_interval, lambda candle: candle.interval.value)

    metrics = WorkerMetrics()
    raw_quality: QualityEmitter = quality_emitter or topic_emitter(quality_topic)
    raw_dead: DeadLetterEmitter = dead_letter_emitter or topic_emitter(dead_topic, key=lambda letter: letter.source)

    # Quality events and dead letters are rare (per gap or bad message, not per trade): counted
    # at the one place every agent publishes them through.
    async def emit_quality(event: QualityEvent) -> None:
        await raw_quality(event)
        metrics.child(metrics.quality_events, "quality", str(event.kind)).inc()

    async def emit_dead(letter: DeadLetter) -> None:
        await raw_dead(letter)
        metrics.child(metrics.dead_letters, "dead", letter.source).inc()

    emit_candle: CandleEmitter = candle_emitter or publish_candle
    # ENTASIS_WORKER_METRICS=false: nothing timed or observed per batch (to measure what that costs)
    metered = settings.worker.metrics
    sink = MeteredClickHouseSink(client_factory, metrics) if metered else ClickHouseSink(client_factory)
    config = CandleConfig(
        lateness_ns=settings.candle.lateness_ms * 10**6,
        grace_ns=settings.candle.grace_ms * 10**6,
        idle_timeout_s=settings.candle.idle_timeout_s,
        checkpoint_every_s=settings.checkpoint_every_s,
    )
    state = CandleAgentState(config, checkpoint_store or ClickHouseCheckpointStore(sink), trades_topic.get_topic_name())
    monitor = StaleFeedMonitor(settings.stale_feed_seconds)
    batch, within = settings.sink.batch_messages, settings.sink.flush_seconds

    def observe(agent: str) -> Callable[[int, float], None] | None:
        return (lambda messages, seconds: metrics.observe_agent(agent, messages, seconds)) if metered else None

    candle_observe = metrics.agent_seconds.labels("candles").observe if metered else None
    agents = {
        "candles": app.agent(trades_topic, name="candles")(
            make_candle_agent(state, emit_candle, emit_quality, emit_dead, observe=candle_observe)
        ),
        "trade_sink": app.agent(trades_topic, name="trade_sink")(
            make_trade_sink(sink, batch, within, observe("trade_sink"), store=trade_store)
        ),
        "candle_sink": app.agent(all_candles, name="candle_sink")(
            make_candle_sink(sink, batch, within, emit_dead, "md.candles", observe("candle_sink"))
        ),
        "quality_sink": app.agent(quality_topic, name="quality_sink")(
            make_quality_sink(sink, batch, within, observe("quality_sink"))
        ),
        "dead_letter_sink": app.agent(dead_topic, name="dead_letter_sink")(
            make_dead_letter_sink(sink, batch, within, observe("dead_letter_sink"))
        ),
    }

    book = register_book_agents(
        app, settings,
        book_topic=app.topic(topics.BOOK.full_name(ns)), book_top_topic=app.topic(topics.BOOK_TOP.full_name(ns)),
        emit_quality=emit_quality, emit_dead_letter=emit_dead, store_snapshots=clickhouse_snapshot_store(sink),
    )
    agents.update(book.agents)
    risk = register_risk_agents(app, settings, candle_topic=all_candles,
                                risk_topic=app.topic(topics.RISK.full_name(ns)), sink=sink)
    agents.update(risk.agents)
    predict = register_predict_agent(app, settings, candle_topic=all_candles,
                                     prediction_topic=app.topic(topics.PREDICTIONS.full_name(ns)),
                                     book_top_topic=app.topic(topics.BOOK_TOP.full_name(ns)), sink=sink)
    agents.update(predict.agents)
    portfolio = register_portfolio_agent(app, settings, commands_topic=app.topic(topics.PF_COMMANDS.full_name(ns)),
                                         events_topic=app.topic(topics.PF_EVENTS.full_name(ns)),
                                         admin_topic=app.topic(topics.PF_ADMIN.full_name(ns)),
                                         snapshots=ClickHousePortfolioSnapshotStore(sink))
    agents.update(portfolio.agents)
    event_writer = PortfolioEventSink(sink, portfolio.state.signing_key, emit_dead, topics.PF_EVENTS.full_name(ns))
    agents["portfolio_event_sink"] = app.agent(app.topic(topics.PF_EVENTS.full_name(ns)), name="portfolio_event_sink")(
        portfolio_event_sink_agent(event_writer, batch, within, observe("portfolio_event_sink"))
    )
    vwap_agents, _ = register_vwap_agent(app, settings, candle_topic=candle_topics["1m"],
                                         vwap_topic=app.topic(topics.VWAP.full_name(ns)), sink=sink)
    agents.update(vwap_agents)

    @app.timer(1.0)
    async def tick() -> None:
        await on_tick(state, emit_candle)
        clocks = ((key, StreamClock(key.split(":", 1)[0], key.split(":", 1)[1], slot.state.last_trade_wall,
                                    slot.state.max_event_ts_ns)) for key, slot in state.slots.items())
        for event in monitor.check(clocks, state.clock()):
            await emit_quality(event)

    forget_on_revoke(app, state)

    # What the agents count already is read at scrape time (streams/runtime/metrics.py).
    attach_state(metrics, lambda: app.monitor, state, sink.rows_written, forged=lambda: {
        "portfolio_commands": portfolio.state.forged,  # refused by the agent
        "portfolio_rebuild": portfolio.state.forged_events,  # skipped by its rebuild
        "portfolio_event_sink": event_writer.forged,  # not stored
    })
    track_assignment(app, metrics)
    metrics.database = DatabaseProbe(client_factory)  # `/readyz`: a client of its own, never the sink's
    if settings.worker.metrics_port:
        @app.task
        async def serve_metrics() -> None:
            # Stopped with the worker: the runner's sockets close when the loop ends.
            await serve(metrics, settings.worker.metrics_host, settings.worker.metrics_port)

    # What the first seconds of work would import on the event loop (streams.runtime.preload), now:
    # the app starts in ~0.05 s and then waits ~1 s for its consumer group.
    start_preload()
    return Worker(app, state, sink, agents, metrics, trade_store)
