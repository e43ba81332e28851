"""Candles agent: raw trade batches (`md.trades.v1`) -> candles of every interval on the derived
topics, late and duplicate trades as data-quality events, undecodable messages as dead letters.

Decisions: `streams.core.candle_processor.CandleProcessor`, one per stream. Restart safety: the
checkpoint protocol of `streams.runtime.checkpointed` (inputs acknowledged only once a stored
checkpoint covers them; candles emitted after the checkpoint are emitted again identically,
same revision, which the idempotent sink absorbs)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from schemas.events import Candle, DeadLetter, QualityEvent
from schemas.symbols import stream_key
from schemas.wire import WireError, decode_trade_batch
from streams.core.candle_processor import CandleConfig, CandleProcessor
from streams.core.checkpoint import CheckpointStore
from streams.runtime.checkpointed import CheckpointedStreams

__all__ = ["CandleAgentState", "CandleConfig", "CheckpointStore", "dead_letter_for", "make_candle_agent", "on_tick"]

CandleEmitter = Callable[[Candle], Awaitable[None]]
QualityEmitter = Callable[[QualityEvent], Awaitable[None]]
DeadLetterEmitter = Callable[[DeadLetter], Awaitable[None]]


class CandleAgentState(CheckpointedStreams[CandleProcessor]):
    def __init__(self, config: CandleConfig, store: CheckpointStore, topic: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        def make(key: str) -> CandleProcessor:
            venue, symbol = key.split(":", 1)
            return CandleProcessor(venue, symbol, config, clock())

        super().__init__(store, topic, make, config.checkpoint_every_s, clock)
        self.config = config
        self.messages = self.late_trades = self.duplicate_trades = self.dead_letters = 0


def make_candle_agent(
    state: CandleAgentState, emit: CandleEmitter, emit_quality: QualityEmitter, dead_letter: DeadLetterEmitter,
    observe: Callable[[float], None] | None = None,
) -> Callable[[Any], AsyncIterator[Candle]]:
    """`observe(seconds)`: the worker's metrics hook, told how long each input message (one trade
    batch, ~100 trades) took to fold, the emits it awaits included (per message, never per trade)."""

    async def candles(stream: Any) -> AsyncIterator[Candle]:
        stream = stream.noack()
        state.ack = stream.ack
        async for event in stream.events():
            if observe is None:
                async for candle in fold(stream, event):
                    yield candle
                continue
            started = time.perf_counter()
            async for candle in fold(stream, event):
                yield candle
            observe(time.perf_counter() - started)

    async def fold(stream: Any, event: Any) -> AsyncIterator[Candle]:
        state.messages += 1
        try:
            venue, symbol, rows = decode_trade_batch(event.value)
        except WireError as exc:
            state.dead_letters += 1
            await dead_letter(dead_letter_for(event.value, state.topic, exc))
            await stream.ack(event)
            return
        async with state.lock:
            key = stream_key(venue, symbol)
            slot = await state.slot(key, event.message.tp)
            if event.message.offset <= slot.folded_offset or not rows:
                await stream.ack(event)  # already in the checkpoint (a re-delivery), or empty
                return
            actions = slot.state.handle(rows, state.clock())
            state.folded(key, slot, event.message.offset, event)
            for candle in actions.candles:
                await emit(candle)
                yield candle
            state.late_trades += actions.late
            state.duplicate_trades += actions.duplicates
            for quality in actions.quality:
                await emit_quality(quality)
            if state.due():
                await state.checkpoint()

    return candles


async def on_tick(state: CandleAgentState, emit: CandleEmitter) -> None:
    """Called every second: close the windows of quiet streams on time, and checkpoint."""
    async with state.lock:
        now = state.clock()
        for key, slot in state.slots.items():
            emitted = slot.state.on_idle(now)
            for candle in emitted:
                await emit(candle)
            if emitted:
                state.dirty.add(key)
        if state.due():
            await state.checkpoint()


def dead_letter_for(raw: Any, source: str, exc: Exception | str, venue: str = "unknown",
                    symbol: str | None = None) -> DeadLetter:
    data = raw if isinstance(raw, bytes) else repr(raw).encode()
    return DeadLetter(venue=venue, symbol=symbol, source=source, error=str(exc)[:1000], raw_hex=data.hex(),
                      recv_ts_ns=time.time_ns())
