"""Bulk export of the market history and the stored trades: content negotiation on `Accept`, and
the CSV or Parquet body streamed page by page.

JSON stays the default: no `Accept`, `*/*`, `application/*` and `application/json` all get it.
`text/csv` gets CSV (RFC 4180: a header row, CRLF line ends, UTF-8) and
`application/vnd.apache.parquet` Parquet; anything else that names none of the three is 406 with
the error envelope (`BAD_REQUEST`: the contract's code table has no 406 code, and an `Accept` the
API cannot honour is a request it cannot serve as asked, as a 408 is for the body; see README).

An export reads the store one page at a time (the same keyset order as the JSON pages) and writes
each page as soon as it is read: CSV rows, or one Parquet row group per page through
`pyarrow.parquet.ParquetWriter` on a write-only stream. So a whole range leaves without a page cap
and without ever being held in memory; the route reads the first page before it answers, so a bad
request or an unreachable store is still a proper error status. An error after the first byte can
no longer change the status: the transfer then ends without its last chunk, which an HTTP client
reports as an incomplete body (a short file is never passed off as a whole one).

Values are the JSON's, column for column: in CSV the same strings (decimals at 8 places, ISO 8601
UTC timestamps with milliseconds, an empty cell for null); in Parquet typed and exact:
`decimal128(38, 8)` (the store's own `Decimal(38, 8)`), `timestamp[ms, UTC]` (the JSON's millisecond
truncation), `int64` and `string`, with the symbol, venue and range in the file's key-value
metadata."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from starlette.requests import Request
from starlette.responses import StreamingResponse

from api.errors import ApiError, ErrorCode
from api.market_service import NO_TRADES, candle_extras, history_range, iter_filled, store_of
from api.models import format_decimal, format_timestamp, ns_to_datetime
from infra.store.records_repository import BucketTrades, RecordsRepository
from infra.store.repository import CandleRow, MarketRepository
from schemas.events import INTERVAL_NS, Interval

EXPORT_PAGE = 5000  # rows a store read and a Parquet row group hold


class Format(StrEnum):
    JSON = "application/json"
    CSV = "text/csv"
    PARQUET = "application/vnd.apache.parquet"


_OFFERED = (Format.JSON, Format.CSV, Format.PARQUET)  # on equal preference, the earlier wins
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_RANGE_RE = re.compile(rf"^({_TOKEN})/({_TOKEN})$")
_QVALUE_RE = re.compile(r"^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$")
_ECHO_LIMIT = 64


def negotiate(accept: str | None) -> Format:
    """RFC 9110 proactive negotiation over the three formats: each format takes the q of the most
    specific media range that matches it (`type/subtype` over `type/*` over `*/*`), the highest q
    wins, ties go to JSON, then CSV. `q=0` refuses a format; a range that does not parse is
    ignored. No header, or an empty one, is JSON; a header that leaves no format is 406."""
    if accept is None or not accept.strip():
        return Format.JSON
    if accept in ("*/*", "application/json"):  # what nearly every client sends: no parsing
        return Format.JSON
    best: dict[Format, tuple[int, float]] = {}  # format -> (specificity, q) of its best-matching range
    for part in accept.split(","):
        params = [p.strip() for p in part.split(";")]
        match = _RANGE_RE.match(params[0])
        if match is None:
            continue
        kind, sub = match.group(1).lower(), match.group(2).lower()
        if kind == "*" and sub != "*":
            continue
        q = 1.0
        for param in params[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                q = float(value.strip()) if _QVALUE_RE.match(value.strip()) else -1.0
        if q < 0:
            continue
        specificity = 0 if kind == "*" else 1 if sub == "*" else 2
        for offered in _OFFERED:
            offered_kind, offered_sub = offered.value.split("/")
            if kind in ("*", offered_kind) and sub in ("*", offered_sub):
                held = best.get(offered)
                if held is None or specificity > held[0]:
                    best[offered] = (specificity, q)
    chosen = max(((q, -_OFFERED.index(offered), offered) for offered, (_, q) in best.items() if q > 0), default=None)
    if chosen is None:
        raise not_acceptable(accept)
    return chosen[2]


def accept_of(request: Request) -> str | None:
    """The request's `Accept`, its repeated headers joined (RFC 9110: the same as one list)."""
    values = request.headers.getlist("accept")
    return ", ".join(values) if values else None


def not_acceptable(accept: str) -> ApiError:
    shown = accept if len(accept) <= _ECHO_LIMIT else accept[:_ECHO_LIMIT] + "..."
    return ApiError(
        ErrorCode.BAD_REQUEST,
        {"reason": "not acceptable", "accept": shown, "supported": [f.value for f in _OFFERED]},
        status=406,
    )


def wants_json(accept: str | None) -> bool:
    """Whether a request with this `Accept` gets JSON (the fast lane answers only those)."""
    try:
        return negotiate(accept) is Format.JSON
    except ApiError:
        return False


# --- columns and their encodings -----------------------------------------------------------

Kind = Literal["decimal", "timestamp", "string", "int"]


class Column(NamedTuple):
    name: str
    kind: Kind


_ARROW: dict[Kind, pa.DataType] = {
    "decimal": pa.decimal128(38, 8),  # the store's Decimal(38, 8): every value exact
    "timestamp": pa.timestamp("ms", tz="UTC"),  # the JSON's millisecond truncation
    "string": pa.string(),
    "int": pa.int64(),
}
_SCALE = Decimal("0.00000001")


def _csv_cell(kind: Kind, value: Any) -> str:
    if value is None:
        return ""
    if kind == "decimal":
        return format_decimal(value)
    if kind == "timestamp":
        return format_timestamp(ns_to_datetime(value))
    return str(value)


def _arrow_values(kind: Kind, values: list[Any]) -> pa.Array:
    if kind == "decimal":
        # the JSON's and CSV's rounding (format_decimal), so every format carries the same number
        values = [None if v is None else Decimal(format_decimal(v)) for v in values]
    elif kind == "timestamp":
        values = [None if v is None else v // 1_000_000 for v in values]  # ns -> ms, truncated like the JSON
    return pa.array(values, type=_ARROW[kind])


def csv_chunks(columns: Sequence[Column], batches: Iterable[Sequence[tuple[Any, ...]]]) -> Iterator[bytes]:
    """The header row, then each batch's rows as one chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def take() -> bytes:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text.encode()

    writer.writerow([c.name for c in columns])
    yield take()
    for batch in batches:
        writer.writerows([_csv_cell(c.kind, v) for c, v in zip(columns, row, strict=True)] for row in batch)
        yield take()


class _Sink:
    """A write-only file for ParquetWriter: what it writes is taken out after each row group."""

    closed = False

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes | memoryview) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def arrow_schema(columns: Sequence[Column], metadata: dict[str, str]) -> pa.Schema:
    return pa.schema([pa.field(c.name, _ARROW[c.kind]) for c in columns], metadata=metadata)


def parquet_chunks(
    columns: Sequence[Column], batches: Iterable[Sequence[tuple[Any, ...]]], metadata: dict[str, str]
) -> Iterator[bytes]:
    """A Parquet file, one row group per batch, each sent as soon as it is written; the footer
    (row group index and schema) last. Sequential writes only: the sink never seeks."""
    schema = arrow_schema(columns, metadata)
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema)
    try:
        for batch in batches:
            if not batch:
                continue
            arrays = [_arrow_values(c.kind, [row[i] for row in batch]) for i, c in enumerate(columns)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=len(batch))
            chunk = sink.take()
            if chunk:
                yield chunk
    finally:
        writer.close()
    yield sink.take()


def stream(
    fmt: Format,
    columns: Sequence[Column],
    batches: Iterator[Sequence[tuple[Any, ...]]],
    filename: str,
    metadata: dict[str, str],
) -> StreamingResponse:
    """The export response: `batches` (plain iterators, read in the threadpool between chunks,
    where the store's per-thread clients live) encoded as `fmt`."""
    assert fmt is not Format.JSON
    if fmt is Format.CSV:
        body, suffix = csv_chunks(columns, batches), "csv"
    else:
        body, suffix = parquet_chunks(columns, batches, metadata), "parquet"
    headers = {"Content-Disposition": f'attachment; filename="{filename}.{suffix}"', "Vary": "Accept"}
    return StreamingResponse(body, media_type=fmt.value, headers=headers)


def batched(rows: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def started(batches: Iterator[Sequence[tuple[Any, ...]]]) -> Iterator[Sequence[tuple[Any, ...]]]:
    """`batches` with its first batch read now (the caller is still able to answer an error)."""
    first = next(batches, None)

    def chained() -> Iterator[Sequence[tuple[Any, ...]]]:
        if first is not None:
            yield first
            yield from batches

    return chained()


# --- what is exported -------------------------------------------------------------------------

TRADE_COLUMNS = (
    Column("trade_id", "string"),
    Column("price", "decimal"),
    Column("size", "decimal"),
    Column("side", "string"),
    Column("timestamp", "timestamp"),
)
CANDLE_COLUMNS = (
    Column("timestamp", "timestamp"),
    Column("open", "decimal"),
    Column("high", "decimal"),
    Column("low", "decimal"),
    Column("close", "decimal"),
    Column("volume", "decimal"),
)
FIELD_COLUMNS = {"trades": Column("trades", "int"), "vwap": Column("vwap", "decimal")}


def candle_columns(fields: tuple[str, ...]) -> tuple[Column, ...]:
    return (*CANDLE_COLUMNS, *(FIELD_COLUMNS[f] for f in fields))


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step


def history_rows(
    store: MarketRepository,
    symbol: str,
    venue: str,
    interval: Interval,
    start_ns: int,
    end_ns: int,
    fill: bool,
    fields: tuple[str, ...],
) -> Iterator[tuple[Any, ...]]:
    """Every candle of [start, end) as `history` would give it without the 5000 cap: the store's
    candle query over spans of EXPORT_PAGE buckets, one after another (so no span reads more than a
    page of candles or their trades); past a span without candles, one query finds the next candle.
    With `fill`, the gaps between candles are filled across spans too, lazily."""
    step = INTERVAL_NS[interval.value]
    records = RecordsRepository(store)
    previous: CandleRow | None = None
    cursor = start_ns
    while cursor < end_ns:
        span_end = min(end_ns, _ceil_to(cursor, step) + EXPORT_PAGE * step)
        pairs: list[tuple[CandleRow, BucketTrades | None]]
        if fields:
            pairs = list(records.candles_with_trades(symbol, venue, interval, cursor, span_end))
        else:
            pairs = [(row, None) for row in store.candles(symbol, interval, cursor, span_end, venue)]
        if not pairs:
            if span_end >= end_ns:
                return
            following = records.next_candle(symbol, venue, interval, span_end, end_ns)
            if following is None:
                return
            cursor = following
            continue
        buckets = {row.open_ns: bucket for row, bucket in pairs}
        rows: Iterable[CandleRow] = (row for row, _ in pairs)
        if fill:
            rows = iter_filled(rows, step, previous)
        for row in rows:
            yield _candle_tuple(row, fields, buckets.get(row.open_ns, NO_TRADES))
            previous = row
        cursor = span_end


def _candle_tuple(row: CandleRow, fields: tuple[str, ...], bucket: BucketTrades | None) -> tuple[Any, ...]:
    values: tuple[Any, ...] = (row.open_ns, row.open, row.high, row.low, row.close, row.volume)
    if fields:
        extras = candle_extras(row, bucket)
        values += tuple(extras.trades if f == "trades" else extras.vwap for f in fields)
    return values


def history_export(
    repository: MarketRepository,
    fmt: Format,
    symbol: str,
    interval: Interval,
    start_ns: int | None,
    end_ns: int | None,
    exchange: str | None,
    fill: bool,
    fields: tuple[str, ...],
) -> StreamingResponse:
    """`GET /market/history` as CSV or Parquet (blocking: run it in the threadpool). The range,
    venue and defaults are the JSON's; the 5000-candle cap is not applied."""
    venue, start, end = history_range(repository, symbol, interval, start_ns, end_ns, exchange, capped=False)
    rows = history_rows(store_of(repository), symbol, venue, interval, start, end, fill, fields)
    batches = started(batched(rows, EXPORT_PAGE))
    metadata = {"symbol": symbol, "exchange": venue, "interval": interval.value, **_range_metadata(start, end)}
    return stream(fmt, candle_columns(fields), batches, f"{symbol}_{venue}_candles_{interval.value}", metadata)


def _range_metadata(start_ns: int, end_ns: int) -> dict[str, str]:
    return {"start": format_timestamp(ns_to_datetime(start_ns)), "end": format_timestamp(ns_to_datetime(end_ns))}


def trades_export(
    fmt: Format,
    symbol: str,
    venue: str,
    start_ns: int,
    end_ns: int,
    pages: Iterator[Sequence[tuple[Any, ...]]],
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """`GET /market/trades` as CSV or Parquet from its pages (api/records_service.py)."""
    metadata = {"symbol": symbol, "exchange": venue, **_range_metadata(start_ns, end_ns)}
    response = stream(fmt, TRADE_COLUMNS, started(pages), f"{symbol}_{venue}_trades", metadata)
    response.headers.update(headers or {})
    return response
