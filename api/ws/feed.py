"""The one Kafka consumer of an API process: reads the raw trades topic and the book-top topic
and hands every update to the hub, which fans it out. One per process (not one per client), so
the broker's load does not grow with sockets.

No consumer group: every API process wants every partition, and a group would split them. All
partitions are assigned by hand and read from their end, since a socket wants what happens from
now on (the latest book arrives within the book agent's publish interval; the REST price route
serves the last price before that)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from api.ws.hub import MarketHub
from api.ws.protocol import MAX_DEPTH, format_levels
from infra.config.settings import Settings
from schemas import topics
from schemas.wire import WireError, decode_trade_batch

logger = logging.getLogger("api.ws.feed")

_BOOK_SNAPSHOT = "book_snapshot.v1"
_RETRY_S = 1.0


def apply_trade_batch(hub: MarketHub, raw: bytes) -> None:
    """A `trade_batch.v1` message is one update: the last trade's price and time, and the size
    the whole batch traded (so `volume` adds up to the traded volume, batch by batch)."""
    _venue, symbol, rows = decode_trade_batch(raw)
    if not rows:
        return
    last = rows[-1]
    volume = sum((row.size for row in rows), Decimal(0))
    hub.publish_trades(symbol, last.price, last.event_ts_ns, volume)


def apply_book_snapshot(hub: MarketHub, raw: bytes) -> None:
    msg = orjson.loads(raw)
    if not isinstance(msg, dict) or msg.get("schema_version") != _BOOK_SNAPSHOT:
        raise WireError(f"expected {_BOOK_SNAPSHOT}")
    hub.publish_book(
        str(msg["venue"]),
        str(msg["symbol"]),
        format_levels(msg["bids"][:MAX_DEPTH]),
        format_levels(msg["asks"][:MAX_DEPTH]),
        int(msg["event_ts_ns"]),
    )


class MarketFeed:
    """`start()` returns at once; the consumer connects and reconnects in the background (the
    API keeps serving REST while the broker is away; sockets just get no updates)."""

    def __init__(self, settings: Settings, hub: MarketHub, *, client_id: str = "entasis-api-ws") -> None:
        self.hub = hub
        self.bootstrap = settings.kafka_bootstrap
        self.client_id = client_id
        self.trades_topic = topics.TRADES.full_name(settings.topic_namespace)
        self.book_topic = topics.BOOK_TOP.full_name(settings.topic_namespace)
        self._task: asyncio.Task[None] | None = None
        self.assigned = asyncio.Event()  # set once every partition is assigned and at its end
        self.bad_messages = 0

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
                fetch_max_wait_ms=10,  # latency over batching: a tick should not wait for company
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
            for topic in (self.trades_topic, self.book_topic):
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
                self._apply(tp.topic, (r.value for r in records))

    def _apply(self, topic: str, values: Iterable[Any]) -> None:
        apply = apply_trade_batch if topic == self.trades_topic else apply_book_snapshot
        for value in values:
            if value is None:
                continue
            try:
                apply(self.hub, value)
            except Exception as exc:  # one bad message must not stop the feed for everyone
                self.bad_messages += 1
                logger.warning("market feed: skipped a message on %s: %s", topic, exc)
