"""The fast lane for the hottest reads: `GET /market/price/{symbol}`, `/market/history/{symbol}`
and `/market/trades/{symbol}` answered from the read model, `/market/orderbook/{symbol}` from the
WebSocket hub's live books, without FastAPI's routing.

Why by hand: on this 2-core machine FastAPI's route matching and dependency solving cost more
than the answer itself (about 100 us against 15 us for a price from memory), which kept the
price route at a third of FastAPI's own hello world. This lane sits innermost, after the
security gate (the caller is authenticated and counted), and only ever answers a plain success
that the FastAPI route would give byte for byte (both call the same service function,
`market_service`, `records_service` or `orderbook_service`, on the same memory view;
tests/api/test_market_lane.py holds them equal). Everything else falls
through to FastAPI untouched: a parameter it does not know (`fields` among them), a repeated one,
an `Accept` that does not ask for JSON (a CSV or Parquet export), a missing scope, a read memory
does not cover, any error (so every error keeps its one code path and envelope).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from api import export, market_service, records_service
from api.errors import ApiError
from api.market_memory import MemoryMarket
from api.orderbook_service import DEFAULT_DEPTH, BookNotSeen, orderbook_body
from api.params import parse_exchange, parse_symbol, parse_time
from api.principal import MARKET_READ, Principal
from api.read_model import NotCovered
from api.ws.hub import MarketHub
from api.ws.protocol import MAX_DEPTH, MIN_DEPTH
from schemas.events import Interval

_PREFIXES = ("/api/v1/market/", "/v1/market/")  # api/app.py API_PREFIX and its alias
_JSON_HEADERS = [(b"content-type", b"application/json")]


class Sources(NamedTuple):
    """What the lane answers from: the read model alone (NotCovered where it would ask the
    store) and the hub's live books; None when the app has no such thing."""

    memory: Any  # MemoryOnly | None
    hub: MarketHub | None


def _price(sources: Sources, symbol: str, query: dict[str, str]) -> bytes | None:
    if query.keys() - {"exchange"} or sources.memory is None:
        return None
    return market_service.price_body(sources.memory, parse_symbol(symbol), parse_exchange(query.get("exchange")))


_INT = re.compile(r"[1-9][0-9]{0,3}")  # what both parsers read alike; anything else: FastAPI decides


def _int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int | None:
    text = query.get(name)
    if text is None:
        return default
    if not _INT.fullmatch(text) or not low <= int(text) <= high:
        return None
    return int(text)


def _trades(sources: Sources, symbol: str, query: dict[str, str]) -> bytes | None:
    limit = _int(query, "limit", records_service.DEFAULT_PAGE, 1, records_service.MAX_PAGE)
    if query.keys() - {"exchange", "start", "end", "limit", "cursor"} or limit is None or sources.memory is None:
        return None
    return records_service.trades_body(
        sources.memory,
        parse_symbol(symbol),
        parse_exchange(query.get("exchange")),
        parse_time("start", query.get("start")),
        parse_time("end", query.get("end")),
        limit,
        query.get("cursor"),
    )


def _orderbook(sources: Sources, symbol: str, query: dict[str, str]) -> bytes | None:
    depth = _int(query, "depth", DEFAULT_DEPTH, MIN_DEPTH, MAX_DEPTH)
    if query.keys() - {"exchange", "depth"} or depth is None or sources.hub is None:
        return None
    try:
        return orderbook_body(sources.hub, parse_symbol(symbol), parse_exchange(query.get("exchange")), depth)
    except BookNotSeen:
        return None  # the route asks the store whether the symbol is served at all


def _history(sources: Sources, symbol: str, query: dict[str, str]) -> bytes | None:
    if query.keys() - {"exchange", "interval", "start", "end"} or sources.memory is None:
        return None  # `fill` and anything unknown: FastAPI's parsing decides
    try:
        interval = Interval(query.get("interval", Interval.M1.value))
    except ValueError:
        return None
    return market_service.history_body(
        sources.memory,
        parse_symbol(symbol),
        interval,
        parse_time("start", query.get("start")),
        parse_time("end", query.get("end")),
        parse_exchange(query.get("exchange")),
        fill=False,
    )


def _accepts_json(scope: Scope) -> bool:
    accept = [value for name, value in scope["headers"] if name == b"accept"]
    return not accept or export.wants_json(b", ".join(accept).decode("latin-1"))


_ROUTES: dict[str, Callable[[Sources, str, dict[str, str]], bytes | None]] = {
    "price": _price,
    "history": _history,
    "trades": _trades,
    "orderbook": _orderbook,
}


class RouteTemplate(NamedTuple):
    """Stands in for FastAPI's route in `scope["route"]` (its `path` is router-relative, as
    FastAPI's is), so the metrics label a lane answer like the route's (api/metrics.py)."""

    path: str


_TEMPLATES = {name: RouteTemplate(f"/market/{name}/{{symbol}}") for name in _ROUTES}


class MarketFastLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._answer(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _answer(scope: Scope) -> bytes | None:
        path: str = scope["path"]
        rest = next((path[len(p) :] for p in _PREFIXES if path.startswith(p)), None)
        if rest is None:
            return None
        route, _, symbol = rest.partition("/")
        read = _ROUTES.get(route)
        if read is None or not symbol or "/" in symbol:
            return None
        if not _accepts_json(scope):
            return None  # CSV, Parquet or a 406: the route negotiates (api/export.py)
        principal = scope.get("state", {}).get("principal")
        if not isinstance(principal, Principal) or not principal.allows(MARKET_READ):
            return None
        state = scope["app"].state
        memory = getattr(getattr(state, "repository", None), "memory", None)
        hub = getattr(state, "market_hub", None)
        sources = Sources(memory.only if isinstance(memory, MemoryMarket) else None,
                          hub if isinstance(hub, MarketHub) else None)  # fmt: skip
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):
            return None  # a repeated parameter
        try:
            body = read(sources, symbol, query)
        except (NotCovered, ApiError):
            return None
        if body is not None:
            scope["route"] = _TEMPLATES[route]
        return body
