"""Coinbase Advanced Trade (`coinbase`): live through ccxt.pro's `coinbase`.

Trades are numbered consecutively per product; the trades endpoint wants an end time with a
start time. The WebSocket numbers every message of a connection (`sequence_num`), which ccxt
does not check: a hole means a lost message, so the books of that socket cannot be trusted.
The connector publishes whole books (ccxt's): the book agent takes each newer snapshot."""

from __future__ import annotations

from typing import Final

from streams.core.venues.contract import WHOLE_BOOKS, Backfill, MessageSequence, Venue


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
