"""Candles agent: raw trade batches (`md.trades.v1`) -> candles of every interval on the derived
topics, late and duplicate trades as data-quality events, undecodable messages as dead letters.

Decisions: `streams.core.candle_processor` (a `CandleProcessor` per stream, `CandleTally` over
them). Restart safety: the
checkpoint protocol of `streams.runtime.checkpointed` (inputs acknowledged only once a stored
checkpoint covers them; candles emitted after the checkpoint are emitted again identically,
same revision, which the idempotent sink absorbs)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from schemas.events import Candle, DeadLetter, QualityEvent
from streams.core.candle_processor import CandleConfig, CandleProcessor, CandleTally
from streams.core.checkpoint import CheckpointStore
from streams.core.dead_letters import dead_letter_for
from streams.runtime.checkpointed import CheckpointedStreams

__all__ = ["CandleAgentState", "CandleConfig", "CheckpointStore", "dead_letter_for", "make_candle_agent", "on_tick"]

CandleEmitter = Callable[[Candle], Awaitable[None]]
QualityEmitter = Callable[[QualityEvent], Awaitable[None]]
DeadLetterEmitter = Callable[[DeadLetter], Awaitable[None]]


class CandleAgentState(CheckpointedStreams[CandleProcessor], CandleTally):
    def __init__(self, config: CandleConfig, store: CheckpointStore, topic: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        CheckpointedStreams.__init__(self, store, topic, lambda key: CandleProcessor.for_key(key, config, clock()),
                                     config.checkpoint_every_s, clock)
        CandleTally.__init__(self)
        self.config = config


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
        read = state.read(event.value, state.topic)
        if isinstance(read, DeadLetter):
            await dead_letter(read)
            await stream.ack(event)
            return
        key, rows = read
        async with state.lock:
            slot = await state.slot(key, event.message.tp)
            if event.message.offset <= slot.folded_offset or not rows:
                await stream.ack(event)  # already in the checkpoint (a re-delivery), or empty
                return
            actions = state.counted(slot.state.handle(rows, state.clock()))
            state.folded(key, slot, event.message.offset, event)
            for candle in actions.candles:
                await state.deliver(emit, candle)
                yield candle
            for quality in actions.quality:
                await state.deliver(emit_quality, quality)
            await state.checkpoint_if_due()

    return candles


async def on_tick(state: CandleAgentState, emit: CandleEmitter) -> None:
    """Called every second: close the windows of quiet streams on time, and checkpoint."""
    await state.on_idle(CandleProcessor.on_idle, emit)
