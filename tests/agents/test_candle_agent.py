"""The candles agent in Faust's test context: decoded batches in, candles and dead letters out."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from infra.settings import Settings
from schemas.events import Candle, DeadLetter, Side, Trade
from schemas.wire import encode_trade_batch
from streams.app import build_worker
from tests.shared_data import raw_spot_trades, reference_candles


def _no_client():  # the candle agent never touches the database
    raise AssertionError("no database in this test")


@pytest.fixture
def worker_parts():
    candles: list[Candle] = []
    letters: list[DeadLetter] = []

    async def emit(c: Candle) -> None:
        candles.append(c)

    async def dead(d: DeadLetter) -> None:
        letters.append(d)

    settings = Settings(worker_id="test-candles", candle_lateness_ms=0, kafka_bootstrap="127.0.0.1:1")
    worker = build_worker(settings, client_factory=_no_client, candle_emitter=emit, dead_letter_emitter=dead)
    return worker, candles, letters


def spot_trades() -> list[Trade]:
    return [
        Trade(venue="binance", symbol="ETH-USDT", trade_id=str(t["t"]), price=Decimal(t["p"]), size=Decimal(t["q"]),
              side=Side.SELL if t["m"] else Side.BUY, event_ts_ns=t["T"] * 10**6, recv_ts_ns=t["T"] * 10**6)
        for t in raw_spot_trades()
    ]


async def test_agent_emits_reference_candles_and_dead_letters_garbage(worker_parts) -> None:
    worker, candles, letters = worker_parts
    trades = spot_trades()
    sent = 0
    async with worker.agents["candles_1m"].test_context() as agent:
        await agent.put(b"{not json", key=b"binance:ETH-USDT", wait=False)
        sent += 1
        for i in range(0, len(trades), 100):
            batch = encode_trade_batch("binance", "ETH-USDT", trades[i : i + 100])
            await agent.put(batch, key=b"binance:ETH-USDT", wait=False)
            sent += 1
        for _ in range(500):  # until the agent has taken every message
            if worker.candle_state.messages == sent:
                break
            await asyncio.sleep(0.01)
    reference = reference_candles()
    # every minute but the last closed; the last is still open (no later trade passed it)
    assert len(candles) == len(reference) - 1
    for got, want in zip(candles, reference, strict=False):
        assert (format(got.open, "f"), format(got.high, "f"), format(got.low, "f"), format(got.close, "f"),
                format(got.volume, "f"), str(got.trades)) == (
            want["open"], want["high"], want["low"], want["close"], want["volume"], want["trades"])
    assert [d.error for d in letters] and letters[0].raw_hex == b"{not json".hex()
    assert worker.candle_state.dead_letters == 1
    # the open minute's messages are held back (not acknowledged) so a restart can rebuild it
    (waiting,) = worker.candle_state.unacked.values()
    assert waiting and all(bucket == worker.candle_state.builders["binance:ETH-USDT"].pending_since_ns()
                           for bucket, _ in waiting)
