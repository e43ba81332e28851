"""candle.v1 messages as the agents that consume candles read them: each keeps only the fields it
needs (its view), anything that is not a well-formed candle.v1 is one error type, and the
counters every such agent keeps of what it did with its input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from schemas.codecs import candles
from schemas.codecs.envelope import WireError
from streams.core.candle_admission import Verdict

View = TypeVar("View")


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


class CandleCounters:
    def __init__(self) -> None:
        self.messages = 0  # read from the topic
        self.malformed = 0  # not a candle.v1, or values no state can take
        self.skipped = 0  # not final, or an interval the agent does not follow
        self.folded = 0
        self.redelivered = 0  # at or before what the stream holds already
        self.published = 0

    def admitted(self, verdict: Verdict) -> bool:
        """True for a candle to fold; counts the others."""
        if verdict is Verdict.SKIP:
            self.skipped += 1
        elif verdict is Verdict.MALFORMED:
            self.malformed += 1
        return verdict is Verdict.FOLD
