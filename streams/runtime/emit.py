"""Events to a Faust topic, as their JSON (`schemas.wire.encode_event`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from schemas.symbols import stream_key
from schemas.wire import encode_event

E = TypeVar("E")
Emitter = Callable[[E], Awaitable[None]]


def by_stream(event: Any) -> str:
    """The key of market-data topics: `venue:symbol` (one stream stays in one partition)."""
    return str(stream_key(event.venue, event.symbol))


def topic_emitter(topic: Any, key: Callable[[Any], str] = by_stream, *, wait: bool = True) -> Emitter[Any]:
    """`await emit(event)` sends it to `topic`. With `wait`, it returns once the broker has it,
    so the input behind it can be acknowledged; without, a crash may lose it (for events the
    next one supersedes, such as top-of-book snapshots)."""

    async def emit(event: Any) -> None:
        fut = await topic.send(key=key(event).encode(), value=encode_event(event))
        if wait:
            await fut

    return emit
