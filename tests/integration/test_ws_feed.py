"""`/ws/market` end to end through a real broker: trades produced to the raw topic and a book top
to `md.book.top.v1` reach a `websockets` client through the API's one MarketFeed consumer."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaProducer

from api.app import create_app
from api.ws import MarketFeed, MarketHub
from infra.cli.topics import create_topics
from schemas import topics
from schemas.events import BookSnapshot, Side, Trade
from schemas.symbols import stream_key
from schemas.wire import encode_event, encode_trade_batch
from tests.api.conftest import new_account, test_api_settings, token_for
from tests.api.test_ws_support import NoStore, recv_json, send_json, serve
from tests.integration.conftest import Infra

pytestmark = pytest.mark.integration


def trade(symbol: str, n: int, price: str, size: str) -> Trade:
    now = time.time_ns()
    return Trade(venue="binance", symbol=symbol, trade_id=str(n), price=Decimal(price), size=Decimal(size),
                 side=Side.BUY, event_ts_ns=now, recv_ts_ns=now)  # fmt: skip


async def test_feed_to_websocket_client(infra: Infra) -> None:
    settings = infra.settings()
    await asyncio.to_thread(create_topics, settings.kafka_bootstrap, settings.topic_namespace)
    hub = MarketHub()
    feed = MarketFeed(settings, hub)
    app = create_app(repository=NoStore(), api_settings=test_api_settings(), key_repository=NoStore())  # type: ignore[arg-type]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
    await producer.start()
    await feed.start()
    try:
        await asyncio.wait_for(feed.assigned.wait(), 30)
        trades_topic = topics.TRADES.full_name(settings.topic_namespace)
        book_topic = topics.BOOK_TOP.full_name(settings.topic_namespace)
        key = stream_key("binance", "ITWS-USDT").encode()

        # The first batch makes the symbol known (seen on the feed).
        await producer.send_and_wait(
            trades_topic, encode_trade_batch("binance", "ITWS-USDT", [trade("ITWS-USDT", 1, "10", "1")]), key=key
        )
        for _ in range(300):
            if hub.seen("ITWS-USDT"):
                break
            await asyncio.sleep(0.05)
        assert hub.seen("ITWS-USDT")
        now = time.time_ns()
        book = BookSnapshot(venue="binance", symbol="ITWS-USDT", event_ts_ns=now, recv_ts_ns=now, last_update_id=7,
                            bids=((Decimal("9.9"), Decimal("1")), (Decimal("9.8"), Decimal("2"))),
                            asks=((Decimal("10.1"), Decimal("3")),))  # fmt: skip
        await producer.send_and_wait(book_topic, encode_event(book), key=key)

        async with serve(app, hub) as served, served.connect(token_for(new_account("itws"))) as ws:
            await send_json(ws, {"action": "subscribe", "channel": "orderbook", "symbol": "ITWS-USDT", "depth": 1})
            assert (await recv_json(ws))["type"] == "subscribed"
            snapshot = await recv_json(ws, timeout=15)
            assert snapshot["bids"] == [["9.90000000", "1.00000000"]]
            assert snapshot["asks"] == [["10.10000000", "3.00000000"]]
            await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": ["ITWS-USDT"]})
            assert (await recv_json(ws))["type"] == "subscribed"
            assert (await recv_json(ws))["price"] == "10.00000000"  # the last price, at once
            for i in range(2, 6):
                batch = [
                    trade("ITWS-USDT", i * 10, f"{10 + i}", "0.5"),
                    trade("ITWS-USDT", i * 10 + 1, f"{10 + i}.5", "0.25"),
                ]
                await producer.send_and_wait(trades_topic, encode_trade_batch("binance", "ITWS-USDT", batch), key=key)
                update = await recv_json(ws, timeout=15)
                assert update["symbol"] == "ITWS-USDT"
                assert update["price"] == f"{10 + i}.50000000"  # the batch's last trade
                assert update["volume"] == "0.75000000"  # what the batch traded
        assert feed.bad_messages == 0
    finally:
        await feed.stop()
        await producer.stop()
