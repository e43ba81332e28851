"""Candles agent: raw trade batches -> candles of every interval on the derived topics, with
late and duplicate trades reported as data-quality events.

Restart safety: each stream's state (open windows of every interval, recent trade ids) is
checkpointed with the offset of the last raw message folded into it, and a raw message is
acknowledged only after a checkpoint covering it is stored. After a crash the worker loads
the checkpoint, skips re-delivered messages at or before its offset and folds the rest
again; candles emitted after the checkpoint are emitted again identically (same revision),
which the idempotent sink absorbs. One lock serialises message processing, idle closes and
checkpoints, so a checkpoint never holds half a message or a candle not yet delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.events import Candle, DeadLetter, QualityEvent, QualityKind
from schemas.symbols import stream_key
from schemas.wire import TradeRow, WireError, decode_trade_batch
from streams.core.candle_stream import INTERVALS, CandleStream
from streams.core.checkpoint import Checkpoint, CheckpointStore

CandleEmitter = Callable[[Candle], Awaitable[None]]
QualityEmitter = Callable[[QualityEvent], Awaitable[None]]
DeadLetterEmitter = Callable[[DeadLetter], Awaitable[None]]


@dataclass(frozen=True)
class CandleConfig:
    intervals: tuple[str, ...] = INTERVALS
    lateness_ns: int = 0
    grace_ns: int = 0
    idle_timeout_s: float = 10.0  # a quiet stream's windows close this long after its last trade
    checkpoint_every_s: float = 1.0


@dataclass
class _Stream:
    candles: CandleStream
    partition: Any  # Faust TP
    folded_offset: int = -1
    last_trade_wall: float = 0.0
    unacked: list[Any] = field(default_factory=list)


@dataclass
class CandleAgentState:
    config: CandleConfig
    store: CheckpointStore
    topic: str
    clock: Callable[[], float] = time.monotonic
    streams: dict[str, _Stream] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    last_checkpoint: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stream_ref: Any = None  # the Faust stream, to acknowledge from the timer
    messages: int = 0
    late_trades: int = 0
    duplicate_trades: int = 0
    dead_letters: int = 0

    async def stream_for(self, venue: str, symbol: str, partition: Any) -> _Stream:
        key = stream_key(venue, symbol)
        s = self.streams.get(key)
        if s is None:
            cfg = self.config
            candles = CandleStream(venue, symbol, cfg.intervals, cfg.lateness_ns, cfg.grace_ns)
            s = _Stream(candles, partition, last_trade_wall=self.clock())
            saved = await self.store.load(self.topic, key)
            if saved is not None:
                candles.restore(saved.state)
                s.folded_offset = saved.offset
            self.streams[key] = s
        return s

    def forget(self, partitions: set[Any]) -> None:
        """Drop the streams of revoked partitions: their unacknowledged messages will be
        delivered again (here or to another worker), on top of the stored checkpoint."""
        for key in [k for k, s in self.streams.items() if s.partition in partitions]:
            del self.streams[key]
            self.dirty.discard(key)

    async def checkpoint(self) -> None:
        """Store the state of every changed stream, then acknowledge what it covers."""
        if not self.dirty:
            return
        keys = sorted(self.dirty)
        await self.store.save([
            Checkpoint(self.topic, k, self.streams[k].partition.partition, self.streams[k].folded_offset,
                       self.streams[k].candles.to_state())
            for k in keys
        ])
        self.dirty.clear()
        self.last_checkpoint = self.clock()
        for k in keys:
            s = self.streams[k]
            for event in s.unacked:
                await self.stream_ref.ack(event)
            s.unacked.clear()


def _quality(kind: QualityKind, venue: str, symbol: str, trades: list[TradeRow], interval: str) -> QualityEvent:
    return QualityEvent(
        venue=venue, symbol=symbol, kind=kind,
        event_ts_ns=max(t.event_ts_ns for t in trades), recv_ts_ns=max(t.recv_ts_ns for t in trades),
        detail={"count": len(trades), "trade_ids": [t.trade_id for t in trades[:20]], "interval": interval},
    )


def make_candle_agent(
    state: CandleAgentState, emit: CandleEmitter, emit_quality: QualityEmitter, dead_letter: DeadLetterEmitter
) -> Callable[[Any], AsyncIterator[Candle]]:
    finest = min(state.config.intervals, key=INTERVALS.index)

    async def candles(stream: Any) -> AsyncIterator[Candle]:
        stream = stream.noack()
        state.stream_ref = stream
        async for event in stream.events():
            state.messages += 1
            try:
                venue, symbol, rows = decode_trade_batch(event.value)
            except WireError as exc:
                state.dead_letters += 1
                await dead_letter(dead_letter_for(event.value, state.topic, exc))
                await stream.ack(event)
                continue
            async with state.lock:
                s = await state.stream_for(venue, symbol, event.message.tp)
                if event.message.offset <= s.folded_offset or not rows:
                    await stream.ack(event)  # already in the checkpoint (a re-delivery), or empty
                    continue
                update = s.candles.update(rows)
                s.folded_offset = event.message.offset
                s.last_trade_wall = state.clock()
                s.unacked.append(event)
                state.dirty.add(stream_key(venue, symbol))
                for candle in update.candles:
                    await emit(candle)
                    yield candle
                if update.late:
                    state.late_trades += len(update.late)
                    await emit_quality(_quality(QualityKind.LATE_TRADE, venue, symbol, update.late, finest))
                if update.duplicates:
                    state.duplicate_trades += len(update.duplicates)
                    await emit_quality(_quality(QualityKind.DUPLICATE_TRADE, venue, symbol, update.duplicates, finest))
                if state.clock() - state.last_checkpoint >= state.config.checkpoint_every_s:
                    await state.checkpoint()

    return candles


async def on_tick(state: CandleAgentState, emit: CandleEmitter) -> None:
    """Called every second: close the windows of quiet streams on time, and checkpoint."""
    async with state.lock:
        now = state.clock()
        for key, s in state.streams.items():
            idle = now - s.last_trade_wall
            last = s.candles.max_event_ts_ns
            if idle < state.config.idle_timeout_s or last is None:
                continue
            # event time has moved on by about the wall time since the last trade
            estimate = last + int(idle * 1e9) - state.config.lateness_ns
            emitted = s.candles.advance_to(estimate)
            for candle in emitted:
                await emit(candle)
            if emitted:
                state.dirty.add(key)
        if state.dirty and now - state.last_checkpoint >= state.config.checkpoint_every_s:
            await state.checkpoint()


def dead_letter_for(raw: Any, source: str, exc: Exception) -> DeadLetter:
    data = raw if isinstance(raw, bytes) else repr(raw).encode()
    return DeadLetter(venue="unknown", symbol=None, source=source, error=str(exc)[:1000], raw_hex=data.hex(),
                      recv_ts_ns=time.time_ns())
