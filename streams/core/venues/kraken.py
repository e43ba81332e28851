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

from schemas.events import Trade
from streams.core.venues.ccxt_events import CcxtParseError, iso8601_ms, trade_from_ccxt
from streams.core.venues.contract import WHOLE_BOOKS, Venue, from_ccxt_symbol

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


def recorded_trades(msg: Any, recv_ns: int) -> list[Trade]:
    """The trades of one recorded v2 frame (`channel: trade`; other channels: none), in the
    frame's order, read as ccxt.pro reads them live, so that a replayed recording publishes
    what the connector published. Raises CcxtParseError for a malformed trade."""
    if not isinstance(msg, dict) or msg.get("channel") != "trade" or not isinstance(msg.get("data"), list):
        return []
    out: list[Trade] = []
    for wire in msg["data"]:
        if not isinstance(wire, dict):
            raise CcxtParseError(f"not a trade: {wire!r}")
        try:
            symbol = from_ccxt_symbol(str(wire.get("symbol")))
        except ValueError as exc:  # InvalidSymbol is one
            raise CcxtParseError(f"trade of an unknown pair: {wire!r}") from exc
        trade_id = wire.get("trade_id")
        unified = {"id": None if trade_id is None else str(trade_id), "timestamp": iso8601_ms(wire.get("timestamp")),
                   "price": wire.get("price"), "amount": wire.get("qty"), "side": wire.get("side")}
        out.append(trade_from_ccxt(VENUE.name, symbol, unified, recv_ns))
    return out


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
