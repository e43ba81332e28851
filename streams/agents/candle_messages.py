"""The loop of the agents that consume candles (decode, fold, publish); reading a candle.v1
message and the counters those agents keep: `streams.core.candle_input`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from streams.core.candle_input import CandleMessageError, read_candle
from streams.runtime.decoded import decoded
from streams.runtime.emit import emit_all

__all__ = ["CandleFolder", "CandleMessageError", "candle_agent", "read_candle"]

View = TypeVar("View")
Out = TypeVar("Out")
ViewIn = TypeVar("ViewIn", contravariant=True)


class CandleFolder(Protocol[ViewIn, Out]):
    """An agent state that folds candle views into the events they produce."""

    messages: int
    malformed: int
    published: int

    async def fold(self, view: ViewIn, partition: Any = None) -> list[Out]: ...


def candle_agent(state: CandleFolder[View, Out], decode: Callable[[bytes], View],
                 emit: Callable[[Out], Awaitable[None]],
                 after: Callable[[View], Awaitable[None]] | None = None) -> Callable[[Any], AsyncIterator[Out]]:
    """The body of an agent on candle topics: decode, fold, publish what the fold produced and,
    when it produced something, call `after` (a checkpoint, say: a crash before it re-folds the
    same candles into the same events)."""

    async def agent(stream: Any) -> AsyncIterator[Out]:
        # a malformed candle is counted and passed over: the candle sink dead-letters it
        async for event, view in decoded(stream, decode, CandleMessageError, state):
            produced = await state.fold(view, event.message.tp)
            # all of a candle's events in one produce batch, acknowledged before the next candle
            await emit_all(emit, produced)
            for item in produced:
                state.published += 1
                yield item
            if produced and after is not None:
                await after(view)

    return agent
