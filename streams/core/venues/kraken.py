"""Kraken spot (`kraken`, WebSocket v2): live through ccxt.pro's `kraken`.

Trade ids are not consecutive (and v1 frames had none), so a hole cannot be told; missed trades
are fetched by start time. Kraken sends a fixed-depth book view (10 levels by default; 10, 25,
100, 500 or 1000): we subscribe to 100.

With every book message Kraken sends a CRC32 of the top 10 asks (best first) then the top 10
bids (best first), each level written as price then quantity at the pair's precision, with the
decimal point and leading zeros removed. ccxt 4.5.90 does not check it by default, and its own
check cannot run (it hands floats to a formatter that wants strings), so the connector checks
it with `book_checksum`: a mismatch means the book ccxt keeps has drifted from Kraken's.

As for Coinbase, the connector publishes whole books: the book agent takes each newer snapshot."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

from streams.core.venues.contract import WHOLE_BOOKS, Venue

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


class Kraken(Venue):
    def book_checksums(self, message: Any) -> Sequence[tuple[str, int | None]]:
        """Kraken v2 book messages: `{"channel": "book", "data": [{"symbol", "checksum", ...}]}`;
        the symbol is ccxt's unified one (`BTC/USD`)."""
        if not isinstance(message, dict) or message.get("channel") != "book":
            return ()
        data = message.get("data")
        if not isinstance(data, list):
            return ()
        return tuple((str(item.get("symbol")), item.get("checksum") if type(item.get("checksum")) is int else None)
                     for item in data if isinstance(item, dict))

    def book_checksum(self, asks: Sequence[Sequence[Any]], bids: Sequence[Sequence[Any]],
                      price_tick: Any, amount_tick: Any) -> int:
        return book_checksum(asks, bids, digits(price_tick), digits(amount_tick))


VENUE: Final = Kraken(name="kraken", ccxt_id="kraken", kind="spot", book_rules=WHOLE_BOOKS, book_limit=100)
