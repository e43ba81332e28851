"""candle.v1 messages as the agents that consume candles read them: each keeps only the fields it
needs, and anything that is not a well-formed candle.v1 is one error type; and the loop those
agents share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from schemas.codecs import candles
from schemas.codecs.envelope import WireError
from streams.core.candle_admission import Verdict
from streams.runtime.decoded import decoded
from streams.runtime.emit import emit_all

View = TypeVar("View")
Out = TypeVar("Out")
ViewIn = TypeVar("ViewIn", contravariant=True)


class CandleMessageError(ValueError):
    """Not a candle.v1 message."""


def read_candle(raw: bytes, view: Callable[[dict[str, Any]], View]) -> View:
    """`view` of the decoded candle.v1 message; CandleMessageError for anything else, including
    a message `view` cannot read."""
    try:
        c = candles.decode_fields(raw)
    except WireError as exc:
        raise CandleMessageError(str(exc)) from exc
    try:
        return view(c)
    except Exception as exc:  # KeyError, decimal.InvalidOperation, AttributeError...
        raise CandleMessageError(f"malformed {candles.CANDLE}: {exc!r}") from exc


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


class Admitted(Protocol):
    skipped: int
    malformed: int


def admitted(state: Admitted, verdict: Verdict) -> bool:
    """True for a candle to fold; counts the others."""
    if verdict is Verdict.SKIP:
        state.skipped += 1
    elif verdict is Verdict.MALFORMED:
        state.malformed += 1
    return verdict is Verdict.FOLD
