"""`/market/price/{symbol}` and `/market/history/{symbol}`: parse, ask the service, return its
JSON. Async routes: what the read model covers is answered on the event loop, the rest in the
threadpool where the store's per-thread clients live (`market_service.answer`). The bodies are
rendered by the service, so FastAPI neither validates nor re-serialises them; `response_model`
still documents them."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api import export, market_service
from api.deps import MARKET_READER, ExchangeQuery, MarketRepositoryDep, SymbolPath
from api.errors import ErrorCode, openapi_error_responses
from api.models import ErrorResponse, HistoryResponse, PriceResponse
from api.params import parse_exchange, parse_symbol, parse_time
from api.security import SECURITY_ERRORS
from schemas.events import Interval


class JsonBody(Response):
    media_type = "application/json"


router = APIRouter(prefix="/market", tags=["market"], dependencies=[MARKET_READER])

_SCOPE_NOTE = "Requires scope `market:read` (JWT `scope` claim or the API key's scopes)."

_DEFAULT_VENUE_NOTE = (
    "When the symbol trades on several venues and `exchange` is not given, the venue with the most recent "
    "trade is used (ties: alphabetically first venue)."
)

PRICE_DESCRIPTION = f"""
Last trade price of `symbol` with its exchange event time, and the base-asset volume traded on the
same venue in the 24 hours ending at that trade (`(t - 24h, t]`, event time, so replays of old data
report a real volume).

{_DEFAULT_VENUE_NOTE}

`MARKET_002` (503) when the venue's feed for the symbol is marked stale or disconnected by the data
quality monitor and no trade has arrived since.

{_SCOPE_NOTE}
"""

HISTORY_DESCRIPTION = f"""
OHLCV candles of `symbol`, ordered by time. A candle's `timestamp` is its bucket's open time (UTC);
`start` is inclusive and `end` exclusive, both applied to that open time. Closed candles come from
the candle store (latest revision); the still-open candle (and any not yet stored) is computed from
the trades, and comes last. Buckets without trades are absent unless `fill=true`.

Defaults: without `start` and `end`, the last 500 candles ending with the latest trade's candle;
with only one of them, 500 intervals from it. At most 5000 candles per call, counted over the
requested range: `(end - start) / interval > 5000` is 400, exactly 5000 is allowed.

{_DEFAULT_VENUE_NOTE}

**More per candle** (`fields`, comma-separated): `trades`, the number of trades in the bucket, and
`vwap`, their volume-weighted average price (sum of price x size over sum of size, rounded half-even
to 8 places), computed exactly from the stored trades of each bucket. Each is null when the store
does not hold exactly the candle's trades, i.e. when their sizes do not add up to the candle's
volume: imported history (no trades stored), a trade that came after its candle was final (a
`late_trade` quality event; the candle never changes), or, for a moment, a trade not yet stored. A
filled candle has `trades` 0 and a null `vwap`. Answered from the store. Other names: 400.

**Bulk export** (`Accept`): `text/csv` or `application/vnd.apache.parquet` streams every candle of
the range, read from the store page by page: the 5000-candle limit does not apply. Columns are the
JSON's (`timestamp, open, high, low, close, volume`, then the `fields` asked for); CSV has the JSON's
strings (decimals at 8 places, timestamps ISO 8601 UTC with milliseconds, an empty cell for null);
Parquet is typed: `decimal128(38, 8)`, `timestamp[ms, UTC]`, `int64`, one row group per 5000 rows,
with symbol, exchange, interval and range in its metadata. JSON is the default (no `Accept`, `*/*`,
`application/json`); an `Accept` that allows none of the three is 406 `BAD_REQUEST`.

{_SCOPE_NOTE}
"""

_EXPORT_CONTENT = {
    export.Format.CSV.value: {"schema": {"type": "string"}},
    export.Format.PARQUET.value: {"schema": {"type": "string", "format": "binary"}},
}
# The error table has no 406 code: BAD_REQUEST with 406, as a request body not received in time is 408.
NOT_ACCEPTABLE_RESPONSE = {
    "model": ErrorResponse,
    "description": "`BAD_REQUEST`: the `Accept` header allows none of JSON, CSV and Parquet.",
    "content": {
        "application/json": {
            "examples": {
                "BAD_REQUEST": {
                    "summary": "BAD_REQUEST: Bad request (not acceptable)",
                    "value": {
                        "error": {
                            "code": "BAD_REQUEST",
                            "message": "Bad request",
                            "details": {
                                "reason": "not acceptable",
                                "accept": "application/xml",
                                "supported": [f.value for f in export.Format],
                            },
                            "request_id": "5f0c6a3e9b2d4c81a7e4f3d2c1b0a998",
                        }
                    },
                }
            }
        }
    },
}
EXPORT_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": _EXPORT_CONTENT, "description": "JSON by default; CSV or Parquet by `Accept`, streamed."},
    406: NOT_ACCEPTABLE_RESPONSE,
}


@router.get(
    "/price/{symbol}",
    response_model=PriceResponse,
    summary="Latest price and 24 h volume",
    description=PRICE_DESCRIPTION,
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
async def get_price(repository: MarketRepositoryDep, symbol: SymbolPath, exchange: ExchangeQuery = None) -> Response:
    name, venue = parse_symbol(symbol), parse_exchange(exchange)
    body = await market_service.answer(repository, lambda reads: market_service.price_body(reads, name, venue))
    return JsonBody(body)


@router.get(
    "/history/{symbol}",
    response_model=HistoryResponse,
    summary="OHLCV candles",
    description=HISTORY_DESCRIPTION,
    responses={
        **openapi_error_responses(
            {
                400: [ErrorCode.BAD_REQUEST, ErrorCode.MARKET_001],
                404: [ErrorCode.MARKET_001],
                500: [ErrorCode.INTERNAL],
                503: [ErrorCode.UNAVAILABLE],
                **SECURITY_ERRORS,
            }
        ),
        **EXPORT_RESPONSES,
    },
)
async def get_history(
    request: Request,
    repository: MarketRepositoryDep,
    symbol: SymbolPath,
    interval: Annotated[Interval, Query(description="Candle interval.")] = Interval.M1,
    start: Annotated[
        str | None,
        Query(
            description="ISO 8601 (1970 to 2255); inclusive bound on candle open time. No offset means UTC.",
            examples=["2024-03-21T09:00:00Z"],
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    end: Annotated[
        str | None,
        Query(
            description="ISO 8601 (1970 to 2255); exclusive bound on candle open time. No offset means UTC.",
            examples=["2024-03-21T10:00:00Z"],
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    fill: Annotated[
        bool, Query(description="Fill empty buckets between the first and last candle with the previous close.")
    ] = False,
    exchange: ExchangeQuery = None,
    fields: Annotated[
        str | None,
        Query(
            description="Comma-separated extra values per candle: `trades`, `vwap`.",
            examples=["trades,vwap"],
            json_schema_extra={"pattern": market_service.FIELDS_PATTERN},
        ),
    ] = None,
) -> Response:
    fmt = export.negotiate(export.accept_of(request))
    name, venue = parse_symbol(symbol), parse_exchange(exchange)
    start_ns, end_ns = parse_time("start", start), parse_time("end", end)
    extra = market_service.parse_fields(fields)
    if fmt is not export.Format.JSON:
        return await anyio.to_thread.run_sync(
            lambda: export.history_export(repository, fmt, name, interval, start_ns, end_ns, venue, fill, extra)
        )
    if extra:  # from the store: one query gives the candles and the trades in them
        body = await anyio.to_thread.run_sync(
            lambda: market_service.history_fields_body(repository, name, interval, start_ns, end_ns, venue, fill, extra)
        )
        return JsonBody(body)
    body = await market_service.answer(
        repository,
        lambda reads: market_service.history_body(reads, name, interval, start_ns, end_ns, venue, fill),
    )
    return JsonBody(body)
