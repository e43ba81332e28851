"""Candles agent: raw trade batches -> 1m candles on the derived topic.

Restart safety without a state store: a raw message is acknowledged only once every window
its trades touched is final. Faust commits the highest contiguous acknowledged offset, so
after a crash the worker re-reads exactly the trades of the windows that could still
change, rebuilds them deterministically and re-emits the same candles with the same
revisions; the idempotent sink turns those re-emissions into no new rows.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.events import Candle, DeadLetter
from schemas.symbols import stream_key
from schemas.wire import WireError, decode_trade_batch
from streams.core.candles import CandleBuilder

CandleEmitter = Callable[[Candle], Awaitable[None]]
DeadLetterEmitter = Callable[[DeadLetter], Awaitable[None]]


@dataclass
class CandleAgentState:
    """Per stream: the builder and the raw messages not yet safe to acknowledge."""

    interval: str
    lateness_ns: int
    grace_ns: int
    builders: dict[str, CandleBuilder] = field(default_factory=dict)
    unacked: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    partition_of: dict[str, Any] = field(default_factory=dict)
    messages: int = 0
    late_trades: int = 0
    dead_letters: int = 0

    def builder(self, venue: str, symbol: str) -> CandleBuilder:
        key = stream_key(venue, symbol)
        b = self.builders.get(key)
        if b is None:
            b = self.builders[key] = CandleBuilder(venue, symbol, self.interval, self.lateness_ns, self.grace_ns)
        return b

    def forget(self, partitions: set[Any]) -> None:
        """Drop the streams of revoked partitions: their unacknowledged messages will be
        delivered again (here or to another worker), which rebuilds them from scratch."""
        for key in [k for k, tp in self.partition_of.items() if tp in partitions]:
            self.builders.pop(key, None)
            self.unacked.pop(key, None)
            self.partition_of.pop(key, None)


def make_candle_agent(
    state: CandleAgentState, emit: CandleEmitter, dead_letter: DeadLetterEmitter, source: str
) -> Callable[[Any], AsyncIterator[Candle]]:
    async def candles(stream: Any) -> AsyncIterator[Candle]:
        stream = stream.noack()
        async for event in stream.events():
            state.messages += 1
            try:
                venue, symbol, rows = decode_trade_batch(event.value)
            except WireError as exc:
                state.dead_letters += 1
                await dead_letter(dead_letter_for(event.value, source, exc))
                await stream.ack(event)
                continue
            if not rows:
                await stream.ack(event)
                continue
            builder = state.builder(venue, symbol)
            update = builder.update(rows)
            state.late_trades += len(update.late)
            for candle in update.candles:
                await emit(candle)  # delivered before any input offset that produced it is acked
                yield candle
            key = stream_key(venue, symbol)
            state.partition_of[key] = event.message.tp
            waiting = state.unacked.setdefault(key, [])
            waiting.append((max(builder.bucket(r.event_ts_ns) for r in rows), event))
            since = builder.pending_since_ns()
            still = []
            for newest_bucket, ev in waiting:
                if since is None or newest_bucket < since:
                    await stream.ack(ev)
                else:
                    still.append((newest_bucket, ev))
            state.unacked[key] = still

    return candles


def dead_letter_for(raw: Any, source: str, exc: Exception) -> DeadLetter:
    data = raw if isinstance(raw, bytes) else repr(raw).encode()
    return DeadLetter(venue="unknown", symbol=None, source=source, error=str(exc)[:1000], raw_hex=data.hex(),
                      recv_ts_ns=time.time_ns())
