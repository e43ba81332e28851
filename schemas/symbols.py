"""Symbols are `BASE-QUOTE`, upper case. Every venue spelling is mapped here and only here."""

from __future__ import annotations

import re

SYMBOL_PATTERN = r"^[A-Z0-9]{1,15}-[A-Z0-9]{1,15}$"
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)

# Binance quote assets, longest first so that `ETHUSDT` splits as ETH + USDT, not ETHUSD + T.
_BINANCE_QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "USD", "BTC", "ETH", "BNB", "EUR", "TRY")


class InvalidSymbol(ValueError):
    """The text is not a well-formed `BASE-QUOTE` symbol."""


def normalize_symbol(text: str) -> str:
    """`eth-usdt` -> `ETH-USDT`; raises InvalidSymbol for anything not BASE-QUOTE."""
    candidate = text.strip().upper()
    if not _SYMBOL_RE.match(candidate):
        raise InvalidSymbol(text)
    return candidate


def from_binance(raw: str) -> str:
    """`ETHUSDT` -> `ETH-USDT`; COIN-M `ETHUSD_PERP` -> `ETH-USD` (the venue says it is a perp)."""
    base_quote = raw.upper().split("_", 1)[0]
    for quote in _BINANCE_QUOTES:
        if base_quote.endswith(quote) and len(base_quote) > len(quote):
            return f"{base_quote[: -len(quote)]}-{quote}"
    raise InvalidSymbol(raw)


def to_binance(symbol: str) -> str:
    """`ETH-USDT` -> `ETHUSDT`."""
    return normalize_symbol(symbol).replace("-", "")


def to_ccxt(symbol: str) -> str:
    """`ETH-USDT` -> ccxt's unified `ETH/USDT`."""
    return normalize_symbol(symbol).replace("-", "/")


def stream_key(venue: str, symbol: str) -> str:
    """Kafka key of every market-data topic: one symbol's events stay in one partition."""
    return f"{venue}:{symbol}"
