"""What `GET /market/orderbook/{symbol}` answers from the WebSocket hub's live books: no HTTP,
no store. The route (api/routes/orderbook.py) and the fast lane (api/market_lane.py) both call
`orderbook_body`, so a book reaches a client as the same bytes either way."""

from __future__ import annotations

import orjson

from api.errors import ApiError, ErrorCode
from api.models import format_timestamp, ns_to_datetime
from api.ws.hub import MarketHub
from api.ws.protocol import ORDERBOOK

DEFAULT_DEPTH = 20  # levels a side when the request does not say
_NO_BOOK = "no book received from the feed yet"


class BookNotSeen(Exception):
    """The feed has carried no book of the symbol (on the venue asked): only the store can tell
    a symbol not served (404) from one without a live book (503)."""

    def __init__(self, symbol: str, venue: str | None) -> None:
        super().__init__(f"{venue}:{symbol}: no book seen")
        self.details: dict[str, str] = {"symbol": symbol, "state": "no_book", "reason": _NO_BOOK}
        if venue is not None:
            self.details["exchange"] = venue


def orderbook_body(hub: MarketHub, symbol: str, exchange: str | None, depth: int) -> bytes:
    """The top `depth` levels a side of the live book of `symbol` on `exchange` (default: the
    WebSocket `orderbook` channel's venue rule) as the response's JSON. `MARKET_002` when that
    book is invalid, stale or absent; `BookNotSeen` when the feed never carried the symbol there."""
    venue = exchange if exchange is not None else hub.venue_for(ORDERBOOK, symbol)
    if venue is None or not hub.seen(symbol, venue):
        raise BookNotSeen(symbol, venue)
    book = hub.books.get((venue, symbol))
    if book is None:
        raise ApiError(
            ErrorCode.MARKET_002, {"symbol": symbol, "exchange": venue, "state": "no_book", "reason": _NO_BOOK}
        )
    health = hub.book_health(venue, symbol)
    if health is not None:
        raise ApiError(
            ErrorCode.MARKET_002,
            {
                "symbol": symbol,
                "exchange": venue,
                "state": health.state,
                "reason": health.reason,
                "since": format_timestamp(ns_to_datetime(health.since_ns)),
            },
        )
    return orjson.dumps(
        {
            "symbol": symbol,
            "exchange": venue,
            "bids": [list(level) for level in book.bids[:depth]],
            "asks": [list(level) for level in book.asks[:depth]],
            "timestamp": format_timestamp(ns_to_datetime(book.event_ts_ns)),
        }
    )
