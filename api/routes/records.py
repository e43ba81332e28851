"""`/market/symbols`, `/market/trades/{symbol}` and `/market/quality/{symbol}`: the stored
records, paged by cursor. Plain `def` routes, run in the threadpool where the repository's
per-thread clients live. Trade pages of the last 24 h come from the read model (the fast lane,
api/market_lane.py, answers most of them before this router); older ones, symbols and quality
events from the store."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api import export, records_service
from api.deps import MARKET_READER, ExchangeQuery, MarketRepositoryDep, SymbolPath
from api.errors import ErrorCode, openapi_error_responses
from api.models import QualityResponse, SymbolsResponse, TradesResponse
from api.params import parse_exchange, parse_symbol, parse_time
from api.routes.market import EXPORT_RESPONSES, JsonBody
from api.security import SECURITY_ERRORS

router = APIRouter(prefix="/market", tags=["market"], dependencies=[MARKET_READER])

_SCOPE_NOTE = "Requires scope `market:read` (JWT `scope` claim or the API key's scopes)."
_PAGING_NOTE = (
    "Paged by cursor: a page holds at most `limit` rows (1 to 1000, default 100); when more rows "
    "match, `next_cursor` is set: repeat the query with `cursor=<next_cursor>` for the next page. Pages "
    "neither skip nor repeat rows, however many arrive meanwhile."
)
_PAGE_ERRORS = openapi_error_responses(
    {
        400: [ErrorCode.BAD_REQUEST, ErrorCode.MARKET_001],
        404: [ErrorCode.MARKET_001],
        500: [ErrorCode.INTERNAL],
        503: [ErrorCode.UNAVAILABLE],
        **SECURITY_ERRORS,
    }
)

StartQuery = Annotated[
    str | None,
    Query(
        description="ISO 8601; inclusive bound on event time. No offset means UTC.",
        examples=["2024-03-21T09:00:00Z"],
        json_schema_extra={"format": "date-time"},
    ),
]
EndQuery = Annotated[
    str | None,
    Query(
        description="ISO 8601; exclusive bound on event time. No offset means UTC.",
        examples=["2024-03-21T10:00:00Z"],
        json_schema_extra={"format": "date-time"},
    ),
]
LimitQuery = Annotated[int, Query(description="Rows per page.", ge=1, le=records_service.MAX_PAGE)]
CursorQuery = Annotated[
    str | None,
    Query(
        description="`next_cursor` of the previous page: the key of its last row, `<event time ns>:<id>`.",
        json_schema_extra={"pattern": records_service.CURSOR_PATTERN},
    ),
]


@router.get(
    "/symbols",
    response_model=SymbolsResponse,
    summary="Symbols and venues served",
    description=f"Every venue's symbol with a stored trade: first and last trade time, trade count and "
    f"the latest feed state recorded by the data-quality monitor.\n\n{_SCOPE_NOTE}",
    responses=openapi_error_responses({500: [ErrorCode.INTERNAL], 503: [ErrorCode.UNAVAILABLE], **SECURITY_ERRORS}),
)
def get_symbols(repository: MarketRepositoryDep) -> SymbolsResponse:
    return records_service.symbols(repository)


_EXPORT_NOTE = (
    "**Bulk export** (`Accept`): `text/csv` or `application/vnd.apache.parquet` streams every trade of "
    "the range (after `cursor`, when given), read from the store page by page: no page cap. With an explicit "
    "`limit`, just that page, and `X-Next-Cursor` names the next one when more follow. Columns are the JSON "
    "items' (`trade_id, price, size, side, timestamp`); CSV has the JSON's strings (decimals at 8 places, "
    "timestamps ISO 8601 UTC with milliseconds); Parquet is typed: `decimal128(38, 8)`, `timestamp[ms, UTC]`, "
    "`string`, one row group per 5000 trades, with symbol, exchange and range in its metadata. JSON is the "
    "default (no `Accept`, `*/*`, `application/json`); an `Accept` that allows none of the three is 406 "
    "`BAD_REQUEST`."
)


@router.get(
    "/trades/{symbol}",
    response_model=TradesResponse,
    summary="Stored trades",
    description=f"Trades of `symbol` on one venue, by (event time, trade id). Without `start`/`end`: the "
    f"hour up to and including the venue's latest trade. Without `exchange`: the venue with the most "
    f"recent trade (as `/market/price`). Pages within the last 24 h are served from memory and may "
    f"hold a trade a moment before the store does (as `/market/price` may)."
    f"\n\n{_PAGING_NOTE}\n\n{_EXPORT_NOTE}\n\n{_SCOPE_NOTE}",
    responses={
        **_PAGE_ERRORS,
        **EXPORT_RESPONSES,
        200: {
            **EXPORT_RESPONSES[200],
            "headers": {
                records_service.NEXT_CURSOR_HEADER: {
                    "description": "CSV and Parquet with an explicit `limit`: the `cursor` of the next page, "
                    "when more trades follow.",
                    "schema": {"type": "string"},
                }
            },
        },
    },
)
def get_trades(  # the fast lane (api/market_lane.py) answers recent JSON pages before this route
    request: Request,
    repository: MarketRepositoryDep,
    symbol: SymbolPath,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = records_service.DEFAULT_PAGE,
    cursor: CursorQuery = None,
    exchange: ExchangeQuery = None,
) -> TradesResponse | Response:
    fmt = export.negotiate(export.accept_of(request))
    name, venue = parse_symbol(symbol), parse_exchange(exchange)
    start_ns, end_ns = parse_time("start", start), parse_time("end", end)
    if fmt is not export.Format.JSON:
        given = limit if "limit" in request.query_params else None  # no limit: the whole range
        return records_service.trades_export(repository, fmt, name, venue, start_ns, end_ns, given, cursor)
    return JsonBody(records_service.trades_body(repository, name, venue, start_ns, end_ns, limit, cursor))


@router.get(
    "/quality/{symbol}",
    response_model=QualityResponse,
    summary="Data-quality events",
    description=f"What the data-quality monitor recorded for `symbol`: gaps (`book_gap`, `trade_gap`), "
    f"resyncs, late and duplicate trades, feed outages and recoveries, oldest first. `kind` filters "
    f"(comma-separated), `exchange` selects one venue (default: all).\n\n{_PAGING_NOTE}\n\n{_SCOPE_NOTE}",
    responses=_PAGE_ERRORS,
)
def get_quality(
    repository: MarketRepositoryDep,
    symbol: SymbolPath,
    kind: Annotated[
        str | None,
        Query(
            description="Comma-separated kinds, e.g. `book_gap,book_resync`.",
            json_schema_extra={"pattern": records_service.KINDS_PATTERN},
        ),
    ] = None,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = records_service.DEFAULT_PAGE,
    cursor: CursorQuery = None,
    exchange: ExchangeQuery = None,
) -> QualityResponse:
    return records_service.quality(
        repository,
        parse_symbol(symbol),
        parse_exchange(exchange),
        records_service.parse_kinds(kind),
        parse_time("start", start),
        parse_time("end", end),
        limit,
        cursor,
    )
