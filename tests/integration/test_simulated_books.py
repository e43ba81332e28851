"""The default simulated feed is a whole market: its order books go through the real worker's
book agent and reach a WebSocket client at any depth from 1 to 100, within seconds of the
subscription. Broker and database as the suite starts them (tests/integration/conftest.py)."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.ws import MarketFeed, MarketHub
from infra.cli.feeds import FeedResult, simulate_into
from tests.api.conftest import new_account, test_api_settings, token_for
from tests.api.test_ws_support import NoStore, recv_json, send_json, serve
from tests.integration.conftest import Infra, start_worker
from tests.integration.pipeline import prepare, scalar, wait_for

pytestmark = pytest.mark.integration

SYMBOL = "BTC-USDT"  # one of the default simulated symbols


def check_book(message: dict[str, Any], depth: int) -> None:
    assert message["symbol"] == SYMBOL, message
    bids = [(Decimal(p), Decimal(s)) for p, s in message["bids"]]
    asks = [(Decimal(p), Decimal(s)) for p, s in message["asks"]]
    assert len(bids) == len(asks) == depth, f"depth {depth}: {len(bids)} bids, {len(asks)} asks"
    assert [p for p, _ in bids] == sorted((p for p, _ in bids), reverse=True)
    assert [p for p, _ in asks] == sorted(p for p, _ in asks)
    assert bids[0][0] < asks[0][0], f"crossed: {bids[0]} / {asks[0]}"
    assert all(s > 0 for _, s in bids + asks)
    # near the simulated start price (60000): a plausible BTC book, not an empty or stray one
    assert Decimal(50000) < bids[0][0] < Decimal(70000)


async def test_the_default_simulated_feed_streams_order_books_at_depths_1_5_100(infra: Infra, tmp_path: Path) -> None:
    settings = infra.settings()  # the default tops are as deep as a client may ask (100)
    await asyncio.to_thread(prepare, settings)
    stop = threading.Event()
    result: list[FeedResult] = []
    # exactly what `entasis up` runs by default: paced, at the wall clock, both default symbols
    feeder = threading.Thread(target=lambda: result.append(simulate_into(settings, rate=20.0, seed=7, stop=stop)),
                              daemon=True)
    worker = start_worker(settings, tmp_path / "worker.log")
    hub = MarketHub()
    feed = MarketFeed(settings, hub)
    app = create_app(repository=NoStore(), api_settings=test_api_settings(), key_repository=NoStore())  # type: ignore[arg-type]
    feeder.start()
    await feed.start()
    try:
        for _ in range(1200):  # the worker starts in seconds; a minute is a failure
            if any(symbol == SYMBOL for _, symbol in hub.books):  # keyed by (venue, symbol)
                break
            await asyncio.sleep(0.05)
        reached = any(symbol == SYMBOL for _, symbol in hub.books)
        assert reached, f"no book top of {SYMBOL} reached the API; worker log: {tmp_path / 'worker.log'}"
        async with serve(app, hub) as served, served.connect(token_for(new_account("simbook"))) as ws:
            previous = None
            for depth in (1, 5, 100):
                await send_json(ws, {"action": "subscribe", "channel": "orderbook", "symbol": SYMBOL, "depth": depth})
                ack = await recv_json(ws)
                while "type" not in ack:  # the book of the previous subscription, still streaming
                    assert ack["symbol"] == SYMBOL, ack
                    ack = await recv_json(ws)
                assert ack["type"] == "subscribed", ack
                first = await recv_json(ws, timeout=10)
                # a book of the previous depth, queued before the re-subscription, may still arrive
                for _ in range(20):
                    if previous is None or len(first["bids"]) != previous:
                        break
                    first = await recv_json(ws, timeout=10)
                previous = depth
                check_book(first, depth)
                # and it streams: the book moves with the trades (20 a second)
                later = await recv_json(ws, timeout=10)
                check_book(later, depth)
                assert later != first
        assert feed.bad_messages == 0
        # the book agent stores snapshots of the simulated books too (the book_snapshots table)
        stored = "SELECT count() FROM book_snapshots WHERE venue = 'sim' AND symbol = {s:String} AND depth = 100"
        await asyncio.to_thread(wait_for, lambda: scalar(settings, stored, {"s": SYMBOL}) != 0, 30,
                                "a stored snapshot of the simulated book")
    finally:
        stop.set()
        await asyncio.to_thread(feeder.join, 30)
        await feed.stop()
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
    assert result and result[0].trades_published > 0


def test_book_gaps_of_the_simulated_feed_are_reported_and_resynced_by_the_worker(infra: Infra, tmp_path: Path) -> None:
    settings = infra.settings()
    prepare(settings)
    stop = threading.Event()
    # `entasis simulate --book-gaps 0.05`: one diff in twenty is lost on its way
    feeder = threading.Thread(target=lambda: simulate_into(settings, rate=20.0, seed=7, stop=stop, book_gaps=0.05),
                              daemon=True)
    worker = start_worker(settings, tmp_path / "worker.log")
    feeder.start()
    def reported(kind: str) -> bool:
        sql = "SELECT count() FROM quality_events WHERE venue = 'sim' AND symbol = {s:String} AND kind = {k:String}"
        return scalar(settings, sql, {"s": SYMBOL, "k": kind}) != 0

    try:
        wait_for(lambda: reported("book_gap") and reported("book_resync"), 90,
                 f"a book_gap and a book_resync of the simulated {SYMBOL} (worker log: {tmp_path / 'worker.log'})")
        detail = scalar(settings, "SELECT any(detail) FROM quality_events WHERE venue = 'sim' AND kind = 'book_gap'")
        assert isinstance(detail, str) and '"reason": "gap"' in detail.replace('":"', '": "'), detail
    finally:
        stop.set()
        feeder.join(30)
        worker.terminate()
        worker.wait(30)
