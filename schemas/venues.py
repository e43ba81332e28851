"""A configured live feed, `venue:SYMBOL` (`binance:ETH-USDT`, `kraken:BTC-USD`), as a value.

Only the spelling is here. What we know of each venue (its ccxt class, symbol mapping,
sequencing, checks) is in one module per venue under `streams/core/venues/`, and
`streams.core.venues.registry` is the one registry of them: its `parse_feed` also checks that
the venue is known. This module stays in `schemas` because the command line's types name it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.symbols import InvalidSymbol, normalize_symbol


class InvalidFeed(ValueError):
    """A configured `venue:SYMBOL` that cannot be used; the message says why."""


@dataclass(frozen=True, order=True)
class Feed:
    venue: str
    symbol: str  # BASE-QUOTE

    @property
    def key(self) -> str:
        return f"{self.venue}:{self.symbol}"

    def __str__(self) -> str:
        return self.key


def split_feed(text: str) -> Feed:
    """`Binance:eth-usdt` -> Feed("binance", "ETH-USDT"), whatever the venue; InvalidFeed says
    what is wrong with the spelling."""
    venue, sep, symbol = text.strip().partition(":")
    venue = venue.strip().lower()
    if not sep or not venue or not symbol.strip():
        raise InvalidFeed(f"{text!r}: expected venue:SYMBOL, e.g. binance:ETH-USDT")
    try:
        return Feed(venue, normalize_symbol(symbol))
    except InvalidSymbol:
        raise InvalidFeed(f"{text!r}: the symbol must be BASE-QUOTE, e.g. ETH-USDT") from None


def parse_feeds(items: Sequence[str] | str) -> tuple[Feed, ...]:
    """A comma-separated string or a list of `venue:SYMBOL`, spelling checked only,
    deduplicated, in the given order (`streams.core.venues.registry.parse_feeds` also checks
    the venues)."""
    if isinstance(items, str):
        items = [part for part in items.split(",") if part.strip()]
    feeds: list[Feed] = []
    for item in items:
        feed = split_feed(item)
        if feed not in feeds:
            feeds.append(feed)
    return tuple(feeds)
