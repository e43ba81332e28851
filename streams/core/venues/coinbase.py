"""Coinbase Advanced Trade (`coinbase`): live through ccxt.pro's `coinbase`.

Trades are numbered consecutively per product; the trades endpoint wants an end time with a
start time. The WebSocket numbers every message of a connection (`sequence_num`), which ccxt
does not check: a hole means a lost message, so the books of that socket cannot be trusted.
The connector publishes whole books (ccxt's): the book agent takes each newer snapshot."""

from __future__ import annotations

from typing import Any, Final

from schemas.events import Trade
from schemas.symbols import InvalidSymbol, normalize_symbol
from streams.core.venues.ccxt_events import CcxtParseError, iso8601_ms, trade_from_ccxt
from streams.core.venues.contract import WHOLE_BOOKS, Backfill, MessageSequence, Venue


def recorded_trades(msg: Any, recv_ns: int) -> list[Trade]:
    """The trades of one recorded Advanced Trade frame (`channel: market_trades`; other
    channels: none), oldest first, read as ccxt.pro reads them live (every event, snapshots
    too; Coinbase sends each event's trades newest first), so that a replayed recording
    publishes what the connector published. Raises CcxtParseError for a malformed trade."""
    if not isinstance(msg, dict) or msg.get("channel") != "market_trades":
        return []
    out: list[Trade] = []
    events = msg.get("events") or ()
    if not isinstance(events, list):
        raise CcxtParseError(f"events is not a list: {events!r:.80}")
    for event in events:
        if not isinstance(event, dict):
            continue
        wires = event.get("trades") or ()
        if not isinstance(wires, list | tuple):
            raise CcxtParseError(f"trades is not a list: {wires!r:.80}")
        for wire in reversed(wires):
            if not isinstance(wire, dict):
                raise CcxtParseError(f"not a trade: {wire!r}")
            try:
                symbol = normalize_symbol(str(wire.get("product_id")))
            except InvalidSymbol as exc:
                raise CcxtParseError(f"trade of an unknown product: {wire!r}") from exc
            side = wire.get("side")
            unified = {
                "id": wire.get("trade_id"),
                "timestamp": iso8601_ms(wire.get("time")),
                "price": wire.get("price"),
                "amount": wire.get("size"),
                "side": side.lower() if isinstance(side, str) else None,
            }
            out.append(trade_from_ccxt(VENUE.name, symbol, unified, recv_ns))
    return out


class Coinbase(Venue):
    def message_sequence(self) -> MessageSequence:
        return MessageSequence("sequence_num")


VENUE: Final = Coinbase(
    name="coinbase",
    ccxt_id="coinbase",
    kind="spot",
    book_rules=WHOLE_BOOKS,
    consecutive_trade_ids=True,
    backfill=Backfill(until=True),
)
