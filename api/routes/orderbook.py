"""`GET /market/orderbook/{symbol}`: the live order book's top levels, served from the WebSocket
hub's latest book of the venue (api/ws/hub.py; the process's market feed keeps it current from
`md.book.top.v1`, which carries the top `ENTASIS_BOOK_TOP_DEPTH` levels, 100 by default). No
store query on the hot path: the store is asked only about a symbol or venue the feed has not
carried, to tell "not served" (404) from "no live book" (503)."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api import market_service
from api.deps import MARKET_READER, ExchangeQuery, SymbolPath
from api.errors import ApiError, ErrorCode, openapi_error_responses
from api.models import OrderBookResponse, format_timestamp, ns_to_datetime
from api.params import parse_exchange, parse_symbol
from api.routes.market import JsonBody
from api.security import SECURITY_ERRORS
from api.ws.hub import BOOK_STALE_AFTER_NS, MarketHub
from api.ws.protocol import MAX_DEPTH, MIN_DEPTH, ORDERBOOK

router = APIRouter(prefix="/market", tags=["market"], dependencies=[MARKET_READER])

DEFAULT_DEPTH = 20

ORDERBOOK_DESCRIPTION = f"""
The live order book of `symbol` on one venue: the top `depth` levels a side ({MIN_DEPTH} to
{MAX_DEPTH}, default {DEFAULT_DEPTH}; fewer when the book holds fewer), `[price, size]` decimal
strings, best first, and the exchange event time of the book's last update. The same book the
WebSocket `orderbook` channel sends.

Without `exchange`, the venue with the most recent trade of the symbol (ties: alphabetically first
venue); when this process has seen no trade of it yet, the venue whose book arrived last (the
WebSocket `orderbook` channel's rule too).

`MARKET_002` (503) when that venue's book is not live: **invalid** (a `book_gap` quality event, or
the feed marked stale or disconnected, at or after the book's last update: the book agent drops a
book on a gap until the next snapshot), **stale** (the venue's latest trade of the symbol is more
than {BOOK_STALE_AFTER_NS // 10**9} s of event time newer than the book's last update: trading
goes on and the book stopped) or **no book** received yet. `MARKET_001` (404) for a symbol, or a
venue of it, that is not served.

Requires scope `market:read` (JWT `scope` claim or the API key's scopes).
"""


async def _stored(request: Request, symbol: str, exchange: str | None) -> bool:
    """Whether the store holds trades of `symbol` (on `exchange`): served, but no live book."""
    repository = getattr(request.app.state, "repository", None)
    if repository is None:
        return False

    def read() -> bool:
        if exchange is None:
            return bool(repository.knows(symbol))
        return repository.last_price(symbol, exchange) is not None

    return await anyio.to_thread.run_sync(read)


@router.get(
    "/orderbook/{symbol}",
    response_model=OrderBookResponse,
    summary="Live order book (top N levels)",
    description=ORDERBOOK_DESCRIPTION,
    responses=openapi_error_responses(
        {
            400: [ErrorCode.MARKET_001, ErrorCode.BAD_REQUEST],
            404: [ErrorCode.MARKET_001],
            500: [ErrorCode.INTERNAL],
            503: [ErrorCode.MARKET_002, ErrorCode.UNAVAILABLE],
            **SECURITY_ERRORS,
        }
    ),
)
async def get_orderbook(
    request: Request,
    symbol: SymbolPath,
    depth: Annotated[
        int, Query(ge=MIN_DEPTH, le=MAX_DEPTH, description="Levels per side (best first).")
    ] = DEFAULT_DEPTH,
    exchange: ExchangeQuery = None,
) -> Response:
    name, asked = parse_symbol(symbol), parse_exchange(exchange)
    hub: MarketHub | None = getattr(request.app.state, "market_hub", None)
    if hub is None:
        raise ApiError(ErrorCode.UNAVAILABLE, {"reason": "market feed not ready"})
    venue = asked if asked is not None else hub.venue_for(ORDERBOOK, name)
    if venue is None or not hub.seen(name, venue):
        if not await _stored(request, name, asked):
            raise market_service.unknown_symbol(name, asked)
        details = {"symbol": name, "state": "no_book", "reason": "no book received from the feed yet"}
        if venue is not None:
            details["exchange"] = venue
        raise ApiError(ErrorCode.MARKET_002, details)
    book = hub.books.get((venue, name))
    if book is None:
        raise ApiError(
            ErrorCode.MARKET_002,
            {"symbol": name, "exchange": venue, "state": "no_book", "reason": "no book received from the feed yet"},
        )
    health = hub.book_health(venue, name)
    if health is not None:
        raise ApiError(
            ErrorCode.MARKET_002,
            {
                "symbol": name,
                "exchange": venue,
                "state": health.state,
                "reason": health.reason,
                "since": format_timestamp(ns_to_datetime(health.since_ns)),
            },
        )
    body = {
        "symbol": name,
        "exchange": venue,
        "bids": [list(level) for level in book.bids[:depth]],
        "asks": [list(level) for level in book.asks[:depth]],
        "timestamp": format_timestamp(ns_to_datetime(book.event_ts_ns)),
    }
    return JsonBody(orjson.dumps(body))
