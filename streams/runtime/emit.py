"""Events to a Faust topic, as their JSON (`schemas.wire.encode_event`)."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from schemas.symbols import stream_key
from schemas.wire import encode_event

E = TypeVar("E")
Emitter = Callable[[E], Awaitable[None]]


def by_stream(event: Any) -> str:
    """The key of market-data topics: `venue:symbol` (one stream stays in one partition)."""
    return str(stream_key(event.venue, event.symbol))


# emitter -> its send without waiting (returns what to await for the broker's acknowledgement)
_SENDERS: weakref.WeakKeyDictionary[Any, Callable[[Any], Awaitable[Awaitable[Any]]]] = weakref.WeakKeyDictionary()


def topic_emitter(topic: Any, key: Callable[[Any], str] = by_stream, *, wait: bool = True) -> Emitter[Any]:
    """`await emit(event)` sends it to `topic`. With `wait`, it returns once the broker has it,
    so the input behind it can be acknowledged; without, a crash may lose it (for events the
    next one supersedes, such as top-of-book snapshots). `emit_all` sends several at once."""

    async def send(event: Any) -> Awaitable[Any]:
        fut: Awaitable[Any] = await topic.send(key=key(event).encode(), value=encode_event(event))
        return fut

    async def emit(event: Any) -> None:
        fut = await send(event)
        if wait:
            await fut

    _SENDERS[emit] = send
    return emit


def routed(emitters: Mapping[str, Emitter[Any]], route: Callable[[Any], str]) -> Emitter[Any]:
    """One emitter over several (a topic per candle interval): `route(event)` names the one. When
    all are topic emitters, it has their send without waiting too (`sender`)."""

    async def emit(event: Any) -> None:
        await emitters[route(event)](event)

    senders = {name: _SENDERS.get(e) for name, e in emitters.items()}
    if all(send is not None for send in senders.values()):

        async def send(event: Any) -> Awaitable[Any]:
            chosen = senders[route(event)]
            assert chosen is not None
            return await chosen(event)

        _SENDERS[emit] = send
    return emit


def sender(emit: Emitter[Any]) -> Callable[[Any], Awaitable[Awaitable[Any]]] | None:
    """A topic emitter's send without waiting: `await send(event)` hands the event to the
    producer and returns what to await for the broker's acknowledgement. None for any other
    emitter (tests' plain callables): await the emitter itself."""
    return _SENDERS.get(emit)


async def emit_all(emit: Emitter[Any], events: Sequence[Any]) -> None:
    """Every event through `emit`, in order; returns once the broker has all of them. A topic
    emitter's events are all handed to the producer before the first acknowledgement is awaited,
    so they travel in one produce batch rather than one batch each: the embedded broker's cost
    grows with the batches a partition holds (docs/embedded.md), and an agent that turns one
    candle into a dozen events would otherwise add a dozen."""
    send = _SENDERS.get(emit)
    if send is None or len(events) < 2:
        for event in events:
            await emit(event)
        return
    acks = [await send(event) for event in events]
    for ack in acks:
        await ack
