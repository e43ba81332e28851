"""The one registry of venues: every module of `streams.core.venues` that defines a `VENUE`
(see `streams.core.venues.contract` for what a venue module provides), by name.

A configured live feed is `venue:SYMBOL` (`binance:ETH-USDT`, `kraken:BTC-USD`): `parse_feed`
checks the spelling (`schemas.venues.split_feed`) and that the venue is one we reach live."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Final

from schemas.venues import Feed, InvalidFeed, split_feed
from schemas.venues import parse_feeds as schema_feeds
from streams.core.venues import binance_coinm, binance_spot, binance_usdm, coinbase, kraken, simulated
from streams.core.venues.contract import BookRules, Venue

MODULES: Final[tuple[ModuleType, ...]] = (binance_spot, binance_usdm, binance_coinm, coinbase, kraken, simulated)

VENUES: Final[dict[str, Venue]] = {m.VENUE.name: m.VENUE for m in MODULES}
LIVE_VENUES: Final[dict[str, Venue]] = {name: v for name, v in VENUES.items() if v.live}


def book_rules(name: str) -> BookRules | None:
    """The sequencing rules of a venue's book stream, or None for a venue we do not know."""
    v = VENUES.get(name)
    return v.book_rules if v is not None else None


def parse_feed(text: str) -> Feed:
    """`binance:eth-usdt` -> Feed("binance", "ETH-USDT"); InvalidFeed says what is wrong."""
    return _known(split_feed(text))


def parse_feeds(items: Sequence[str] | str) -> tuple[Feed, ...]:
    """A comma-separated string or a list of `venue:SYMBOL`, deduplicated, in the given order."""
    return tuple(_known(feed) for feed in schema_feeds(items))


def _known(feed: Feed) -> Feed:
    if feed.venue not in LIVE_VENUES:
        raise InvalidFeed(f"{feed.key!r}: unknown venue {feed.venue!r}; known venues: {', '.join(sorted(LIVE_VENUES))}")
    return feed


def ccxt_symbol(feed: Feed) -> str:
    """The feed's symbol in ccxt's unified spelling for its venue's market."""
    return VENUES[feed.venue].ccxt_symbol(feed.symbol)
