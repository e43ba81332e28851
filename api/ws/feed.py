"""The one Kafka consumer of an API process: reads the raw trades topic, the book-top topic, the
candle topics, md.quality.v1, an.risk.v1 and an.predictions.v1 and hands every update to the
hub, which fans it out (candles on the `candles` channel; quality events decide whether a
venue's book is live, for `GET /market/orderbook`); with a read model (api/read_model.py) it
also keeps the model current, and the latest risk estimates and forecasts (api/risk_memory.py,
api/prediction_memory.py). One per process (not one per client), so the
broker's load does not grow with sockets.

No consumer group: every API process wants every partition, and a group would split them. All
partitions are assigned by hand and read from their end, since a socket wants what happens from
now on (the latest book arrives within the book agent's publish interval; the REST price route
serves the last price before that)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from api.prediction_memory import LatestPredictions
from api.read_model import MemTrade, ReadModel, VersionedCandle, candle_version
from api.risk_memory import LatestRisk
from api.ws.hub import MarketHub
from api.ws.protocol import MAX_DEPTH, CandleBar, format_levels
from infra.config.kafka import aiokafka_options
from infra.config.settings import Settings
from infra.store.repository import CandleRow
from schemas import topics
from schemas.codecs import book_top, candles, predictions, quality, risk, trades

logger = logging.getLogger("api.ws.feed")

_RETRY_S = 1.0
# One fetch carries every message since the previous one: hundreds when the broker holds a long
# poll (Tansu answers after up to half the fetch wait) or the feed is busy. Applied in one go, all
# of them would wait in every socket's queue before any sender ran, and a client that keeps up
# would pass the hub's backlog bound (256) and be conflated as if it were slow. The event loop
# gets a turn between chunks, so the senders drain between them (a fetch of one chunk or less,
# the usual case, is applied as before, in one go).
APPLY_CHUNK = 64


def apply_trade_batch(hub: MarketHub, raw: bytes, model: ReadModel | None = None) -> None:
    """A `trade_batch.v1` message is one update: the last trade's price and time, and the size
    the whole batch traded (so `volume` adds up to the traded volume, batch by batch)."""
    venue, symbol, rows = trades.decode(raw)
    if not rows:
        return
    if model is not None:
        model.apply_trades(venue, symbol, [MemTrade(r.event_ts_ns, r.trade_id, r.price, r.size, r.side) for r in rows])
    last = rows[-1]
    volume = sum((row.size for row in rows), Decimal(0))
    hub.publish_trades(venue, symbol, last.price, last.event_ts_ns, volume)


def apply_candle(model: ReadModel | None, raw: bytes, hub: MarketHub | None = None,
                 forecasts: LatestPredictions | None = None) -> None:
    """A `candle.v1` message (one candle revision, the model's JSON): to the read model, to the
    hub's `candles` channel, and, when final, to the forecasts' newest-final-candle check."""
    c = candles.decode(raw)
    if forecasts is not None and c.is_final:
        forecasts.apply_final_candle(c.venue, c.symbol, c.interval.value, c.open_ts_ns)
    if model is not None:
        row = CandleRow(c.open_ts_ns, c.open, c.high, c.low, c.close, c.volume)
        version = candle_version(c.revision, c.is_final)
        model.apply_candle(c.venue, c.symbol, c.interval.value, VersionedCandle(version, row))
    if hub is not None:
        bar = CandleBar(c.open_ts_ns, c.open, c.high, c.low, c.close, c.volume, c.is_final)
        hub.publish_candle(c.venue, c.symbol, c.interval.value, bar)


def apply_quality(model: ReadModel | None, raw: bytes, hub: MarketHub | None = None) -> None:
    """A `quality.v1` message; the model keeps the feed-state kinds only, the hub the kinds that
    invalidate a book."""
    e = quality.decode(raw)
    if model is not None:
        model.apply_quality(e.venue, e.symbol, e.kind.value, e.event_ts_ns)
    if hub is not None:
        hub.publish_quality(e.venue, e.symbol, e.kind.value, e.event_ts_ns)


def apply_risk(latest: LatestRisk | None, raw: bytes) -> None:
    """A `risk_estimate.v1` message: the latest estimate of its key, for the risk route."""
    if latest is not None:
        latest.apply(risk.decode(raw))


def apply_prediction(forecasts: LatestPredictions | None, raw: bytes) -> None:
    """An an.predictions.v1 message (a forecast, or an outcome, which memory does not serve)."""
    if forecasts is not None:
        forecasts.apply(predictions.decode(raw))


def apply_book_snapshot(hub: MarketHub, raw: bytes) -> None:
    snap = book_top.decode(raw)
    hub.publish_book(
        snap.venue,
        snap.symbol,
        format_levels(snap.bids[:MAX_DEPTH]),
        format_levels(snap.asks[:MAX_DEPTH]),
        snap.event_ts_ns,
    )


class MarketFeed:
    """`start()` returns at once; the consumer connects and reconnects in the background (the
    API keeps serving REST while the broker is away; sockets just get no updates)."""

    def __init__(
        self,
        settings: Settings,
        hub: MarketHub,
        *,
        model: ReadModel | None = None,
        risk_estimates: LatestRisk | None = None,
        forecasts: LatestPredictions | None = None,
        client_id: str = "entasis-api-ws",
    ) -> None:
        self.hub = hub
        self.model = model
        self.risk_estimates = risk_estimates
        self.forecasts = forecasts
        self.bootstrap = settings.kafka_bootstrap
        self._kafka_options = aiokafka_options(settings)  # SASL where the broker wants it
        self.client_id = client_id
        ns = settings.topic_namespace
        self.trades_topic = topics.TRADES.full_name(ns)
        self.book_topic = topics.BOOK_TOP.full_name(ns)
        self.candle_topics = {spec.full_name(ns) for spec in topics.CANDLES.values()}
        self.quality_topic = topics.QUALITY.full_name(ns)
        self.risk_topic = topics.RISK.full_name(ns)
        self.prediction_topic = topics.PREDICTIONS.full_name(ns)
        self.topics = [self.trades_topic, self.book_topic, *sorted(self.candle_topics), self.quality_topic]
        if risk_estimates is not None:
            self.topics.append(self.risk_topic)
        if forecasts is not None:
            self.topics.append(self.prediction_topic)
        self._task: asyncio.Task[None] | None = None
        self.assigned = asyncio.Event()  # set once every partition is assigned and at its end
        self.bad_messages = 0

    @property
    def state(self) -> str:
        """`stopped` (not started, stopped, or its task ended), `connecting` (connecting, waiting
        for topics, or retrying after an error) or `consuming` (every partition assigned and
        read); read by `/readyz` and the metrics."""
        if self._task is None or self._task.done():
            return "stopped"
        return "consuming" if self.assigned.is_set() else "connecting"

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="market-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                # Tansu lists a partition's whole log for each fetch that finds data: at 10 ms that was
                # one listing per batch (docs/embedded.md); 100 ms halved the broker's CPU and cut the
                # API's by 60 %, for at most ~50 ms more on a tick
                fetch_max_wait_ms=100,
                **self._kafka_options,
            )
            try:
                await consumer.start()
                partitions = await self._partitions(consumer)
                consumer.assign(partitions)
                await consumer.seek_to_end(*partitions)
                for tp in partitions:  # resolve the end offsets now, not lazily on the first fetch
                    await consumer.position(tp)
                self.assigned.set()
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("market feed: %s; retrying in %.0f s", exc, _RETRY_S)
                self.assigned.clear()
                await asyncio.sleep(_RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            await consumer.topics()  # refreshes metadata
            found: list[TopicPartition] = []
            missing = []
            for topic in self.topics:
                ids = consumer.partitions_for_topic(topic)
                if ids:
                    found.extend(TopicPartition(topic, p) for p in sorted(ids))
                else:
                    missing.append(topic)
            if not missing:
                return found
            # Topics are created up front (`entasis topics create`), never auto-created: wait.
            logger.warning("market feed: topics %s not found yet", missing)
            await asyncio.sleep(_RETRY_S)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            for tp, records in batches.items():
                for start in range(0, len(records), APPLY_CHUNK):
                    if start:
                        await asyncio.sleep(0)  # the sockets' senders take what the last chunk queued
                    self._apply(tp.topic, (r.value for r in records[start : start + APPLY_CHUNK]))

    def _handler(self, topic: str) -> Callable[[bytes], None]:
        hub, model = self.hub, self.model
        if topic == self.trades_topic:
            return lambda raw: apply_trade_batch(hub, raw, model)
        if topic == self.book_topic:
            return lambda raw: apply_book_snapshot(hub, raw)
        if topic == self.quality_topic:
            return lambda raw: apply_quality(model, raw, hub)
        if topic == self.risk_topic:
            return lambda raw: apply_risk(self.risk_estimates, raw)
        if topic == self.prediction_topic:
            return lambda raw: apply_prediction(self.forecasts, raw)
        return lambda raw: apply_candle(model, raw, hub, self.forecasts)

    def _apply(self, topic: str, values: Iterable[Any]) -> None:
        apply = self._handler(topic)
        for value in values:
            if value is None:
                continue
            try:
                apply(value)
            except Exception as exc:  # one bad message must not stop the feed for everyone
                self.bad_messages += 1
                logger.warning("market feed: skipped a message on %s: %s", topic, exc)
