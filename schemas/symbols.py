"""Symbols are `BASE-QUOTE`, upper case. Venue spellings are mapped by the venue modules of
`streams/core/venues/` (ccxt's unified spelling: `streams.core.venues.contract`)."""

from __future__ import annotations

import re

SYMBOL_PATTERN = r"^[A-Z0-9]{1,15}-[A-Z0-9]{1,15}$"
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)

class InvalidSymbol(ValueError):
    """The text is not a well-formed `BASE-QUOTE` symbol."""


def normalize_symbol(text: str) -> str:
    """`eth-usdt` -> `ETH-USDT`; raises InvalidSymbol for anything not BASE-QUOTE."""
    candidate = text.strip().upper()
    if not _SYMBOL_RE.match(candidate):
        raise InvalidSymbol(text)
    return candidate


def stream_key(venue: str, symbol: str) -> str:
    """Kafka key of every market-data topic: one symbol's events stay in one partition."""
    return f"{venue}:{symbol}"
