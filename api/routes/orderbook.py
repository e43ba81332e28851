"""`GET /market/orderbook/{symbol}`: the live order book's top levels, served from the WebSocket
hub's latest book of the venue (api/ws/hub.py; the process's market feed keeps it current from
`md.book.top.v1`, which carries the top `ENTASIS_BOOK_TOP_DEPTH` levels, 100 by default). No
store query on the hot path: the store is asked only about a symbol or venue the feed has not
carried, to tell "not served" (404) from "no live book" (503)."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api import market_service
from api.deps import MARKET_READER, ExchangeQuery, SymbolPath
from api.errors import ApiError, ErrorCode, openapi_error_responses
from api.models import OrderBookResponse
from api.orderbook_service import DEFAULT_DEPTH, BookNotSeen, orderbook_body
from api.params import parse_exchange, parse_symbol
from api.routes.market import JsonBody
from api.security import SECURITY_ERRORS
from api.ws.hub import BOOK_STALE_AFTER_NS, MarketHub
from api.ws.protocol import MAX_DEPTH, MIN_DEPTH

router = APIRouter(prefix="/market", tags=["market"], dependencies=[MARKET_READER])

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
async def get_orderbook(  # the fast lane (api/market_lane.py) answers a live book before this route
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
    try:
        return JsonBody(orderbook_body(hub, name, asked, depth))
    except BookNotSeen as unseen:
        if not await _stored(request, name, asked):
            raise market_service.unknown_symbol(name, asked) from None
        raise ApiError(ErrorCode.MARKET_002, unseen.details) from None
