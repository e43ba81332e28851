"""Order-book price keys: a level's price in units of 10**-8 (`price * 10**8`), an exact integer for
every price the book topic and the venue parsers admit (at most 8 decimal places,
`schemas.limits`). The book core keys its levels by these integers (`streams.core.orderbook`).

Why parsers hand them over: turning a freshly read `Decimal` into its key (a multiply and `int()`,
each allocating) was about half of the book's time per level. The parsers that read level texts
already remember each text's checked value (a book's diffs name the same prices over and over), so
they remember its key beside it, and a diff's keys cost a dict hit each. They travel with the event
(`attach`), outside its fields: equality, `model_dump`, JSON and `repr` ignore them (pydantic
ignores instance attributes that are not fields, as it does for `functools.cached_property`).

Keys are only ever read back for the very level tuples they were made for (`attached` checks
identity): an event copied with other levels (`model_copy(update=...)`) has none, and its reader
computes them from the prices.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final, NamedTuple

from schemas.events import BookDelta, BookSnapshot, PriceLevel
from schemas.limits import MAX_DECIMAL_PLACES

KEY_PLACES: Final = MAX_DECIMAL_PLACES
# 1E8 rather than 100000000: multiplying by a one-digit coefficient is the cheaper way from a
# Decimal to its key (measured: ~160 ns, `scaleb` ~215 ns)
KEY_SCALE: Final = Decimal(f"1E{KEY_PLACES}")
_ATTRIBUTE: Final = "level_keys"


class LevelKeys(NamedTuple):
    """The keys of an event's levels, in level order, with the level tuples they belong to."""

    bids: tuple[PriceLevel, ...]
    asks: tuple[PriceLevel, ...]
    bid_keys: list[int]
    ask_keys: list[int]


def price_key(price: Decimal) -> int:
    """The key of a price with at most `KEY_PLACES` places (checked by the caller)."""
    return int(price * KEY_SCALE)


def attach(event: BookDelta | BookSnapshot, bid_keys: list[int], ask_keys: list[int]) -> None:
    """Give `event` the keys of its levels (one per level, in order; the caller computed them with
    `price_key` from prices it checked)."""
    event.__dict__[_ATTRIBUTE] = LevelKeys(event.bids, event.asks, bid_keys, ask_keys)


def attached(event: BookDelta | BookSnapshot) -> LevelKeys | None:
    """The keys given with `event`'s levels, or None (none given, or the levels are not those)."""
    held: LevelKeys | None = event.__dict__.get(_ATTRIBUTE)
    if held is None or held.bids is not event.bids or held.asks is not event.asks:
        return None
    return held
