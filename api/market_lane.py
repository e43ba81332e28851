"""The fast lane for the two hottest reads: `GET /market/price/{symbol}` and
`GET /market/history/{symbol}`, answered from the read model without FastAPI's routing.

Why by hand: on this 2-core machine FastAPI's route matching and dependency solving cost more
than the answer itself (about 100 us against 15 us for a price from memory), which kept the
price route at a third of FastAPI's own hello world. This lane sits innermost, after the
security gate (the caller is authenticated and counted), and only ever answers a plain success
that the FastAPI route would give byte for byte (both call the same `market_service` function on
the same memory view; tests/api/test_market_lane.py holds them equal). Everything else falls
through to FastAPI untouched: a parameter it does not know (`fields` among them), a repeated one,
an `Accept` that does not ask for JSON (a CSV or Parquet export), a missing scope, a read memory
does not cover, any error (so every error keeps its one code path and envelope).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from api import export, market_service
from api.errors import ApiError
from api.market_memory import MemoryMarket, MemoryOnly
from api.params import parse_exchange, parse_symbol, parse_time
from api.principal import MARKET_READ, Principal
from api.read_model import NotCovered
from schemas.events import Interval

_PREFIXES = ("/api/v1/market/", "/v1/market/")  # api/app.py API_PREFIX and its alias
_JSON_HEADERS = [(b"content-type", b"application/json")]


def _price(memory: MemoryOnly, symbol: str, query: dict[str, str]) -> bytes | None:
    if query.keys() - {"exchange"}:
        return None
    return market_service.price_body(memory, parse_symbol(symbol), parse_exchange(query.get("exchange")))


def _history(memory: MemoryOnly, symbol: str, query: dict[str, str]) -> bytes | None:
    if query.keys() - {"exchange", "interval", "start", "end"}:
        return None  # `fill` and anything unknown: FastAPI's parsing decides
    try:
        interval = Interval(query.get("interval", Interval.M1.value))
    except ValueError:
        return None
    return market_service.history_body(
        memory,
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


_ROUTES: dict[str, Callable[[MemoryOnly, str, dict[str, str]], bytes | None]] = {
    "price": _price,
    "history": _history,
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
        memory = getattr(getattr(scope["app"].state, "repository", None), "memory", None)
        if not isinstance(memory, MemoryMarket):
            return None
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):
            return None  # a repeated parameter
        try:
            body = read(memory.only, symbol, query)
        except (NotCovered, ApiError):
            return None
        if body is not None:
            scope["route"] = _TEMPLATES[route]
        return body
