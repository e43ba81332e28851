"""The decode stage of an agent: each message counted, each value decoded, the undecodable
counted and passed over (whoever should report them does: one report per message)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Counted(Protocol):
    messages: int
    malformed: int


async def decoded(stream: Any, decode: Callable[[bytes], T], errors: type[Exception] | tuple[type[Exception], ...],
                  counts: Counted) -> AsyncIterator[tuple[Any, T]]:
    """(Faust event, decoded value) for every message of `stream` that `decode` accepts."""
    async for event in stream.events():
        counts.messages += 1
        try:
            value = decode(event.value)
        except errors:
            counts.malformed += 1
            continue
        yield event, value
