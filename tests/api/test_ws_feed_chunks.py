"""The market feed applies a large fetch in chunks and lets the sockets' senders run between
them (api/ws/feed.py APPLY_CHUNK): a client that keeps up gets every update of a fetch of 1,000
trade batches, none conflated, although 1,000 is far above the hub's backlog bound of 256."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from api.ws.feed import MarketFeed
from api.ws.hub import MARKET, MarketHub, sub_key
from infra.config.settings import Settings
from schemas.codecs import trades
from schemas.codecs.trades import TradeRow

SYMBOL = "FCH-USDT"
TS = 1_711_013_400_000_000_000
MESSAGES = 1_000


class OneFetch:
    """A consumer whose first fetch returns `values` on one partition, and nothing after."""

    def __init__(self, topic: str, values: list[bytes]) -> None:
        self.topic = topic
        self.values: list[bytes] | None = values

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if self.values is None:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        values, self.values = self.values, None
        return {TopicPartition(self.topic, 0): [SimpleNamespace(value=v) for v in values]}


def trade_batch(i: int) -> bytes:
    row = TradeRow(str(i), Decimal(1000 + i), Decimal("0.25"), "buy", TS + i, TS + i)
    return trades.encode_rows("binance", SYMBOL, [row])


async def test_a_fetch_far_above_the_backlog_bound_reaches_a_keeping_up_client_whole() -> None:
    hub = MarketHub()
    feed = MarketFeed(Settings(kafka_bootstrap="127.0.0.1:9", topic_namespace="chunks."), hub)  # type: ignore[call-arg]
    session = hub.open_session()
    hub.subscribe(session, sub_key(MARKET, "binance", SYMBOL))
    received: list[str] = []

    async def client() -> None:
        while True:
            received.extend(await session.queue.get())

    tasks = [asyncio.create_task(client()),
             asyncio.create_task(feed._consume(OneFetch(feed.trades_topic, [trade_batch(i) for i in range(MESSAGES)])))]  # type: ignore[arg-type]
    try:
        for _ in range(500):
            if len(received) >= MESSAGES:
                break
            await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert session.queue.conflated == 0
    assert [f'"price":"{1000 + i}.00000000"' in text for i, text in enumerate(received)] == [True] * MESSAGES
    assert [text.endswith(f',"seq":{i + 1}}}') for i, text in enumerate(received)] == [True] * MESSAGES
