"""Kraken WebSocket v2 book checksums. Pure.

Kraken sends, with every book message, a CRC32 of the top 10 asks (best first) then the top
10 bids (best first), each level written as price then quantity at the pair's precision, with
the decimal point and leading zeros removed. ccxt 4.5.90 does not check it by default, and its
own check cannot run (it hands floats to a formatter that wants strings), so the connector
checks it here: a mismatch means the book ccxt keeps has drifted from Kraken's."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

CHECKSUM_LEVELS = 10


def digits(tick: float | str | None) -> int:
    """Decimal places of a ccxt precision given as a tick size (0.01 -> 2)."""
    if tick is None:
        return 8
    return max(0, -int(Decimal(str(tick)).normalize().as_tuple().exponent))


def _field(value: float, places: int) -> str:
    return f"{value:.{places}f}".replace(".", "").lstrip("0")


def book_checksum(asks: Sequence[Sequence[Any]], bids: Sequence[Sequence[Any]], price_places: int,
                  qty_places: int) -> int:
    text = "".join(
        _field(float(level[0]), price_places) + _field(float(level[1]), qty_places)
        for side in (asks, bids)
        for level in side[:CHECKSUM_LEVELS]
    )
    return zlib.crc32(text.encode())
