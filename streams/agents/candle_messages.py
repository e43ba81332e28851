"""candle.v1 messages as the agents that consume candles read them: each keeps only the fields it
needs, and anything that is not a well-formed candle.v1 is one error type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson

View = TypeVar("View")


class CandleMessageError(ValueError):
    """Not a candle.v1 message."""


def read_candle(raw: bytes, view: Callable[[dict[str, Any]], View]) -> View:
    """`view` of the decoded candle.v1 message; CandleMessageError for anything else, including
    a message `view` cannot read."""
    try:
        c = orjson.loads(raw)
        if c.get("schema_version") != "candle.v1":
            raise CandleMessageError(f"expected candle.v1, got {c.get('schema_version')!r}")
        return view(c)
    except CandleMessageError:
        raise
    except Exception as exc:  # orjson, KeyError, decimal.InvalidOperation, AttributeError...
        raise CandleMessageError(f"malformed candle.v1: {exc!r}") from exc
