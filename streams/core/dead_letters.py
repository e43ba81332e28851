"""A message no agent can use, as the dead letter that keeps its raw bytes for the operator."""

from __future__ import annotations

import time
from typing import Any

from schemas.events import DeadLetter


def dead_letter_for(raw: Any, source: str, exc: Exception | str, venue: str = "unknown",
                    symbol: str | None = None) -> DeadLetter:
    data = raw if isinstance(raw, bytes) else repr(raw).encode()
    return DeadLetter(venue=venue, symbol=symbol, source=source, error=str(exc)[:1000], raw_hex=data.hex(),
                      recv_ts_ns=time.time_ns())
