"""Values already read and checked, remembered by the text they were read from: the codecs and the
venue parsers meet the same price and size texts over and over (a tick grid, a book's levels), and a
dict hit costs a fraction of `Decimal()` and its checks. Only checked values are remembered, so a hit
is valid. Each memo holds at most `MAX_TEXTS` texts and is emptied when full, so a long or hostile
stream of distinct texts cannot grow it."""

from __future__ import annotations

from typing import Final, TypeVar

MAX_TEXTS: Final = 1 << 16
V = TypeVar("V")


def remember(known: dict[str, V], text: str, value: V) -> V:
    """`value`, now remembered in `known` under `text`."""
    if len(known) >= MAX_TEXTS:
        known.clear()
    known[text] = value
    return value
