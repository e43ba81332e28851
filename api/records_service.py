"""What `/market/symbols`, `/market/trades/{symbol}` and `/market/quality/{symbol}` mean:
defaults of their ranges, the default venue, keyset cursors and page sizes. No SQL, no HTTP.

A cursor is the key of the last row of a page, `<event time ns>:<id>`: clients pass it back
unchanged; the next page starts strictly after that key, so it is stable across inserts (see
infra/store/records_repository.py). Any string of that shape is a valid place to start."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import orjson
from starlette.responses import StreamingResponse

from api import export
from api.errors import ApiError, ErrorCode
from api.market_service import MarketReads, last_trade, reads
from api.models import (
    FeedStateModel,
    QualityItem,
    QualityResponse,
    SymbolInfo,
    SymbolsResponse,
    ns_to_datetime,
    trade_json,
)
from api.params import MAX_NS
from infra.store.records_repository import START_KEY, RecordsRepository, TradeRecord
from infra.store.repository import MarketRepository
from schemas.events import QualityKind

MAX_PAGE = 1000
DEFAULT_PAGE = 100
HOUR_NS = 3600 * 10**9


def _bad(field: str, reason: str) -> ApiError:
    return ApiError(ErrorCode.BAD_REQUEST, {"errors": [{"field": field, "reason": reason}]})


CURSOR_PATTERN = r"^(\d{1,18}|[0-8]\d{18}):.*$"  # every match is a key this API can start after
_CURSOR_RE = re.compile(CURSOR_PATTERN, re.DOTALL)


def encode_cursor(event_ns: int, row_id: str) -> str:
    return f"{event_ns}:{row_id}"


def decode_cursor(cursor: str | None) -> tuple[int, str]:
    if cursor is None:
        return START_KEY
    if not _CURSOR_RE.match(cursor):
        raise _bad("query.cursor", "not a cursor this API returned")
    event_ns, _, row_id = cursor.partition(":")
    return int(event_ns), row_id


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise _bad("query.limit", f"between 1 and {MAX_PAGE}")
    return limit


def _check_order(start_ns: int, end_ns: int) -> None:
    if start_ns >= end_ns:
        raise _bad("query", "start must be before end")


def symbols(repository: MarketRepository) -> SymbolsResponse:
    return SymbolsResponse(
        data=[
            SymbolInfo(
                symbol=row.symbol,
                exchange=row.venue,
                first_trade=ns_to_datetime(row.first_trade_ns),
                last_trade=ns_to_datetime(row.last_trade_ns),
                trades=row.trades,
                feed=None
                if row.feed_state is None or row.feed_state_ns is None
                else FeedStateModel(state=row.feed_state, since=ns_to_datetime(row.feed_state_ns)),
            )
            for row in RecordsRepository(repository).series()
        ]
    )


class TradesQuery(NamedTuple):
    """A trades request resolved: venue, [start, end) and the key to start after."""

    symbol: str
    venue: str
    start_ns: int
    end_ns: int
    after: tuple[int, str]


def trades_query(
    repository: MarketRepository | MarketReads,
    symbol: str,
    exchange: str | None,
    start_ns: int | None,
    end_ns: int | None,
    cursor: str | None,
) -> TradesQuery:
    """Defaults: `end` just after the venue's latest trade, `start` one hour before `end`. The
    venue: `exchange`, or the default venue rule of /market/price (the one that traded last)."""
    after = decode_cursor(cursor)
    latest = last_trade(reads(repository), symbol, exchange)
    end = end_ns if end_ns is not None else latest.event_ns + 1
    start = start_ns if start_ns is not None else end - HOUR_NS
    _check_order(start, end)
    return TradesQuery(symbol, latest.venue, start, end, after)


TradePages = Callable[[str, str, int, int, tuple[int, str], int], list[TradeRecord]]


def _pages(repository: MarketRepository | MarketReads) -> TradePages:
    """Where pages come from: the read model when the app has one (it answers the last 24 h and
    asks the store for older pages; `MemoryOnly` raises NotCovered instead), else the store."""
    source = reads(repository)
    page: TradePages | None = getattr(source, "trades_page", None)
    return page if page is not None else RecordsRepository(repository).trades  # type: ignore[arg-type]


def _trade_page(
    repository: MarketRepository | MarketReads, query: TradesQuery, limit: int
) -> tuple[list[TradeRecord], str | None]:
    """Up to `limit` trades after the query's key, and the cursor after them when more follow."""
    rows = _pages(repository)(query.symbol, query.venue, query.start_ns, query.end_ns, query.after, limit + 1)
    page = rows[:limit]
    return page, encode_cursor(page[-1].event_ns, page[-1].trade_id) if len(rows) > limit else None


def trades_body(
    repository: MarketRepository | MarketReads,
    symbol: str,
    exchange: str | None,
    start_ns: int | None,
    end_ns: int | None,
    limit: int,
    cursor: str | None,
) -> bytes:
    """`TradesResponse`'s JSON for trades in [start, end) by (event time, trade id), rendered
    without the model (see `trades_query` for the defaults). The fast lane (api/market_lane.py)
    calls it on the read model alone, the route on the repository: the same bytes."""
    check_limit(limit)
    query = trades_query(repository, symbol, exchange, start_ns, end_ns, cursor)
    page, next_cursor = _trade_page(repository, query, limit)
    head = orjson.dumps({"symbol": symbol, "exchange": query.venue})[:-1]  # the object, left open
    data = b",".join(trade_json(r.trade_id, r.price, r.size, r.side, r.event_ns) for r in page)
    return head + b',"data":[' + data + b'],"next_cursor":' + orjson.dumps(next_cursor) + b"}"


NEXT_CURSOR_HEADER = "X-Next-Cursor"


def trades_export(
    repository: MarketRepository,
    fmt: export.Format,
    symbol: str,
    exchange: str | None,
    start_ns: int | None,
    end_ns: int | None,
    limit: int | None,
    cursor: str | None,
) -> StreamingResponse:
    """The trades of the range (after `cursor`) as CSV or Parquet, streamed: every one of them,
    read from the store EXPORT_PAGE at a time by the same keyset as the JSON pages. With `limit`,
    just the JSON's page in that format, and the next page's cursor in `X-Next-Cursor` when more
    follow. Blocking: run it in the threadpool (a plain `def` route)."""
    if limit is not None:
        check_limit(limit)
    query = trades_query(repository, symbol, exchange, start_ns, end_ns, cursor)
    headers = {}
    if limit is not None:
        page, next_cursor = _trade_page(repository, query, limit)
        pages: Iterator[list[tuple[Any, ...]]] = iter([[_trade_tuple(r) for r in page]])
        if next_cursor is not None:
            headers[NEXT_CURSOR_HEADER] = next_cursor
    else:
        pages = _all_trades(repository, query)
    return export.trades_export(fmt, symbol, query.venue, query.start_ns, query.end_ns, pages, headers)


def _trade_tuple(r: TradeRecord) -> tuple[Any, ...]:
    return (r.trade_id, r.price, r.size, r.side, r.event_ns)  # export.TRADE_COLUMNS


def _all_trades(repository: MarketRepository, query: TradesQuery) -> Iterator[list[tuple[Any, ...]]]:
    """Page after page until a short one: each starts strictly after the last row of the one before."""
    records = RecordsRepository(repository)
    after = query.after
    while True:
        rows = records.trades(query.symbol, query.venue, query.start_ns, query.end_ns, after, export.EXPORT_PAGE)
        if rows:
            yield [_trade_tuple(r) for r in rows]
        if len(rows) < export.EXPORT_PAGE:
            return
        after = (rows[-1].event_ns, rows[-1].trade_id)


_KIND = "(" + "|".join(k.value for k in QualityKind) + ")"
KINDS_PATTERN = f"^{_KIND}(,{_KIND})*$"  # documents what parse_kinds accepts (case-insensitive, spaces allowed)


def parse_kinds(text: str | None) -> list[str]:
    if text is None:
        return []
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    known = {k.value for k in QualityKind}
    unknown = [k for k in kinds if k not in known]
    if unknown or not kinds:
        raise _bad("query.kind", f"comma-separated kinds among {', '.join(sorted(known))}")
    return kinds


def quality(
    repository: MarketRepository,
    symbol: str,
    exchange: str | None,
    kinds: list[str],
    start_ns: int | None,
    end_ns: int | None,
    limit: int,
    cursor: str | None,
) -> QualityResponse:
    """Quality events of `symbol` in [start, end) by (event time, event id), on `exchange` or on
    every venue. Defaults: the whole stored history, oldest first."""
    check_limit(limit)
    after = decode_cursor(cursor)
    if not reads(repository).knows(symbol):
        last_trade(repository, symbol, None)  # the usual 404 for a symbol never traded
    start = start_ns if start_ns is not None else 0
    end = end_ns if end_ns is not None else MAX_NS
    _check_order(start, end)
    venues = [exchange] if exchange is not None else []
    rows = RecordsRepository(repository).quality(symbol, venues, kinds, start, end, after, limit + 1)
    page = rows[:limit]
    return QualityResponse(
        symbol=symbol,
        data=[
            QualityItem(exchange=r.venue, kind=r.kind, timestamp=ns_to_datetime(r.event_ns), detail=_detail(r.detail))
            for r in page
        ],
        next_cursor=encode_cursor(page[-1].event_ns, page[-1].event_id) if len(rows) > limit else None,
    )


def _detail(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}
