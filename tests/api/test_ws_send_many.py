"""A socket's pending updates leave in one write (api/ws/server_protocol.py): on the API's own
uvicorn protocol a burst reaches the client whole, in order, numbered, in fewer writes than
messages; on uvicorn's plain protocol (no `send_many` in the scope) the same burst goes one
message at a time and arrives the same; a client gone mid-burst ends its socket quietly."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any, ClassVar

import pytest

from api.app import create_app
from api.main import uvicorn_config
from api.ws import MarketHub
from api.ws.server_protocol import SEND_MANY, SendManyWebSocketProtocol
from tests.api.conftest import new_account, test_api_settings, token_for
from tests.api.test_ws_support import NoStore, recv_json, send_json, serve

TS = 1_711_013_400_123_000_000
BURST = 200  # below the queue's backlog bound (256), so no update is conflated away


class RecordingProtocol(SendManyWebSocketProtocol):
    """Records how many texts each `send_many` carried (one entry per transport write)."""

    batches: ClassVar[list[int]] = []

    async def send(self, message: Any) -> None:
        if message["type"] == SEND_MANY:
            RecordingProtocol.batches.append(len(message["texts"]))
        await super().send(message)


def app_for_test() -> Any:
    return create_app(repository=NoStore(), api_settings=test_api_settings(), key_repository=NoStore())  # type: ignore[arg-type]


async def burst_received(ws_protocol: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Subscribe one client, publish BURST updates with no await between them (as the feed
    applies one broker fetch), and read them back; returns them and the prices published."""
    symbol = "SMB-USDT"
    hub = MarketHub(max_subscriptions=5)
    hub.publish_trades("binance", symbol, Decimal("1"), TS, Decimal("1"))
    async with serve(app_for_test(), hub, ws=ws_protocol) as served, served.connect(token_for(new_account("sm"))) as ws:
        await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [symbol]})
        assert (await recv_json(ws))["type"] == "subscribed"
        assert (await recv_json(ws))["price"] == "1.00000000"  # the last known value first
        prices = [f"{100 + i}.00000000" for i in range(BURST)]
        for i in range(BURST):
            hub.publish_trades("binance", symbol, Decimal(100 + i), TS + i + 1, Decimal("0.5"))
        return [await recv_json(ws) for _ in range(BURST)], prices


async def test_a_burst_arrives_whole_in_order_and_in_fewer_writes_than_messages() -> None:
    RecordingProtocol.batches = []
    received, prices = await burst_received(RecordingProtocol)
    assert [m["price"] for m in received] == prices
    seqs = [m["seq"] for m in received]
    assert seqs == list(range(seqs[0], seqs[0] + BURST))
    assert {m["volume"] for m in received} == {"0.50000000"}
    # Every message went through send_many, and the burst did not go one text per write.
    assert sum(RecordingProtocol.batches) >= BURST
    assert max(RecordingProtocol.batches) > 1
    assert len(RecordingProtocol.batches) < BURST


async def test_without_the_extension_the_same_burst_goes_one_message_at_a_time() -> None:
    received, prices = await burst_received("websockets-sansio")
    assert [m["price"] for m in received] == prices
    seqs = [m["seq"] for m in received]
    assert seqs == list(range(seqs[0], seqs[0] + BURST))


async def test_a_client_gone_mid_burst_ends_its_socket_without_an_error(caplog: pytest.LogCaptureFixture) -> None:
    symbol = "SMG-USDT"
    hub = MarketHub(max_subscriptions=5)
    hub.publish_trades("binance", symbol, Decimal("1"), TS, Decimal("1"))
    with caplog.at_level(logging.WARNING):
        async with serve(app_for_test(), hub, ws=SendManyWebSocketProtocol) as served:
            async with served.connect(token_for(new_account("sm"))) as ws:
                await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [symbol]})
                assert (await recv_json(ws))["type"] == "subscribed"
                await recv_json(ws)
            # The client has closed; the server may not have seen it yet: keep publishing until
            # the hub drops the session.
            for i in range(200):
                hub.publish_trades("binance", symbol, Decimal(2 + i), TS + i + 1, Decimal("1"))
                if not hub.sessions:
                    break
                await asyncio.sleep(0.01)
            assert not hub.sessions
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_the_api_serves_websockets_with_this_protocol() -> None:
    config = uvicorn_config(app_for_test(), "127.0.0.1", 8000, test_api_settings())
    assert config.ws is SendManyWebSocketProtocol
