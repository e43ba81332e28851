"""The oracle of the book keys a parser attaches to its events (`schemas.level_keys`): each level's
price text read as an exact fraction, times 10**8, must be that integer."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from schemas.events import BookDelta, BookSnapshot
from schemas.level_keys import attached


def keys_of_texts(levels: list[list[str]]) -> list[int]:
    keys = []
    for price_text, _ in levels:
        scaled = Fraction(price_text) * 10**8
        assert scaled.denominator == 1, price_text
        keys.append(int(scaled))
    return keys


def assert_keys_of_texts(event: BookDelta | BookSnapshot, bids: list[list[str]], asks: list[list[str]]) -> None:
    """`event` carries, for its very levels, the keys of the price texts it was read from."""
    keys: Any = attached(event)
    assert keys is not None, event
    assert keys.bids is event.bids and keys.asks is event.asks
    assert (keys.bid_keys, keys.ask_keys) == (keys_of_texts(bids), keys_of_texts(asks))
