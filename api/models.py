"""Response models of the REST API.

Values are `Decimal` and `datetime` inside and serialise as the contract's strings:
decimals in plain notation at 8 places (`"65432.10000000"`, never a float or an
exponent), timestamps ISO 8601 UTC with `Z` and millisecond precision."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from infra.store.repository import CandleRow

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_SCALE = Decimal("0.00000001")
# Explicit and wide: the default context keeps 28 significant digits, a stored Decimal(38, 8) needs up to
# 38 at 8 places (and computed money, e.g. a PnL, can have more). Bounded, so that a wild value raises
# instead of asking for millions of digits.
_FORMAT = Context(prec=100, rounding=ROUND_HALF_EVEN)


def format_decimal(value: Decimal) -> str:
    """Plain notation at the store's fixed scale of 8 places (`"2683.80000000"`): the same
    width for every value of a column, and exactly Binance's own spelling of spot prices."""
    return format(value.quantize(_SCALE, context=_FORMAT), "f")


def format_timestamp(value: datetime) -> str:
    """`2024-08-09T00:00:01.174Z`: UTC, milliseconds truncated (the event happened in that ms)."""
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def ns_to_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def datetime_to_ns(value: datetime) -> int:
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return (utc - _EPOCH) // timedelta(microseconds=1) * 1000


DecimalString = Annotated[
    Decimal,
    PlainSerializer(format_decimal, return_type=str, when_used="always"),
    WithJsonSchema({"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}, mode="serialization"),
]
UtcTimestamp = Annotated[
    datetime,
    PlainSerializer(format_timestamp, return_type=str, when_used="always"),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"},
        mode="serialization",
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class PriceResponse(_Model):
    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "symbol": "BTC-USDT",
                    "price": "65432.10000000",
                    "timestamp": "2024-03-21T09:30:00.123Z",
                    "volume": "123.45",
                    "exchange": "binance",
                }
            ]
        },
    )

    symbol: str = Field(description="`BASE-QUOTE`, upper case.", examples=["BTC-USDT"])
    price: DecimalString = Field(
        description="Price of the latest trade, a decimal string.", examples=["65432.10000000"]
    )
    timestamp: UtcTimestamp = Field(
        description="Exchange event time of the latest trade (UTC, milliseconds).",
        examples=["2024-03-21T09:30:00.123Z"],
    )
    volume: DecimalString = Field(
        description="Base-asset volume traded on `exchange` in the 24 h ending at `timestamp`.", examples=["123.45"]
    )
    exchange: str = Field(description="Venue the price comes from.", examples=["binance"])


class Candle(_Model):
    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "timestamp": "2024-03-21T09:00:00.000Z",
                    "open": "65000",
                    "high": "65100",
                    "low": "64900",
                    "close": "65050",
                    "volume": "234.56",
                }
            ]
        },
    )

    timestamp: UtcTimestamp = Field(description="Open time of the candle's bucket (UTC).")
    open: DecimalString
    high: DecimalString
    low: DecimalString
    close: DecimalString
    volume: DecimalString = Field(description="Base-asset volume traded in the bucket.")
    # Only with `?fields=` (absent otherwise); null when the store does not hold exactly the
    # candle's trades (api/market_service.py `candle_extras`). Rendered by `candle_fields_json`.
    trades: int | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        ge=0,
        description="With `fields=trades`: the number of trades in the bucket; null when the store does not hold "
        "exactly the candle's trades (imported history, a trade that came after the candle was final).",
    )
    vwap: DecimalString | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="With `fields=vwap`: volume-weighted average price of the bucket's trades, sum(price x size) / "
        "sum(size), rounded half-even to 8 places; null when `trades` is null or the volume is zero.",
    )


def candle_json(row: CandleRow) -> bytes:
    """One candle of a history response as JSON, byte for byte what `Candle(...).model_dump_json()`
    writes (a test holds them equal), without building the model: the read model keeps these so a
    history request joins bytes (api/read_model.py `candle_fragments`)."""
    return (
        f'{{"timestamp":"{format_timestamp(ns_to_datetime(row.open_ns))}","open":"{format_decimal(row.open)}",'
        f'"high":"{format_decimal(row.high)}","low":"{format_decimal(row.low)}",'
        f'"close":"{format_decimal(row.close)}","volume":"{format_decimal(row.volume)}"}}'
    ).encode()


def trade_json(trade_id: str, price: Decimal, size: Decimal, side: str, event_ns: int) -> bytes:
    """One trade of a `/market/trades` page as JSON, byte for byte what `TradeItem(...)
    .model_dump_json()` writes (a test holds them equal). A stored trade never changes and the
    same recent trades are paged again and again, so each is rendered once and kept (formatting
    its decimals and time costs ~10 us, most of a page's time); a zero (never a stored trade's,
    but a cache key would not tell -0 from 0) is rendered each time."""
    if price > 0 and size > 0:
        return _cached_trade_json(trade_id, price, size, side, event_ns)
    return _trade_json(trade_id, price, size, side, event_ns)


def _trade_json(trade_id: str, price: Decimal, size: Decimal, side: str, event_ns: int) -> bytes:
    return orjson.dumps(
        {
            "trade_id": trade_id,
            "price": format_decimal(price),
            "size": format_decimal(size),
            "side": side,
            "timestamp": format_timestamp(ns_to_datetime(event_ns)),
        }
    )


_cached_trade_json = functools.lru_cache(maxsize=65_536)(_trade_json)


def candle_fields_json(row: CandleRow, fields: tuple[str, ...], trades: int | None, vwap: Decimal | None) -> bytes:
    """`candle_json` with the `?fields=` asked for (`trades`, `vwap`, in that order), each a
    value or null."""
    extra = b""
    if "trades" in fields:
        extra += b',"trades":' + (b"null" if trades is None else str(trades).encode())
    if "vwap" in fields:
        extra += b',"vwap":' + (b"null" if vwap is None else f'"{format_decimal(vwap)}"'.encode())
    return candle_json(row)[:-1] + extra + b"}"


# Remembered by its arguments: between two trades every price request renders the same body, and
# rendering it (two decimals and a timestamp, ~6.5 us) cost more than reading the read model
# (~5 us) in a price answer from memory. Equal Decimals render alike (fixed 8 places), so a hit on
# an equal but differently spelled value is the same bytes. Bounded: the newest 4,096 bodies.
@functools.lru_cache(maxsize=4096)
def price_json(symbol: str, price: Decimal, event_ns: int, volume: Decimal, exchange: str) -> bytes:
    """A PriceResponse's JSON, byte for byte what its `model_dump_json()` writes (tested), without
    building and validating the model on the hot path (api/market_service.py `price_body`)."""
    return (
        b'{"symbol":'
        + orjson.dumps(symbol)
        + f',"price":"{format_decimal(price)}","timestamp":'
        f'"{format_timestamp(ns_to_datetime(event_ns))}","volume":"{format_decimal(volume)}","exchange":'.encode()
        + orjson.dumps(exchange)
        + b"}"
    )


def history_json(symbol: str, fragments: list[bytes]) -> bytes:
    """A HistoryResponse's JSON from rendered candles (`candle_json`)."""
    return b'{"symbol":' + orjson.dumps(symbol) + b',"data":[' + b",".join(fragments) + b"]}"


class HistoryResponse(_Model):
    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "symbol": "BTC-USDT",
                    "data": [
                        {
                            "timestamp": "2024-03-21T09:00:00.000Z",
                            "open": "65000",
                            "high": "65100",
                            "low": "64900",
                            "close": "65050",
                            "volume": "234.56",
                        }
                    ],
                }
            ]
        },
    )

    symbol: str = Field(examples=["BTC-USDT"])
    data: list[Candle] = Field(description="Ordered by time; the still-open candle, if in range, is last.")


class FeedStateModel(_Model):
    state: str = Field(description="`feed_connected`, `feed_disconnected`, `feed_stale` or `stale_feed`.")
    since: UtcTimestamp = Field(description="Event time of the quality event that set it.")


class SymbolInfo(_Model):
    symbol: str = Field(examples=["BTC-USDT"])
    exchange: str = Field(examples=["binance"])
    first_trade: UtcTimestamp = Field(description="Event time of the oldest stored trade.")
    last_trade: UtcTimestamp = Field(description="Event time of the newest stored trade.")
    trades: int = Field(description="Stored trades (a re-delivered trade may count twice until merged).")
    feed: FeedStateModel | None = Field(description="The latest feed state, null when none was recorded.")


class SymbolsResponse(_Model):
    data: list[SymbolInfo] = Field(description="Every venue's symbol with a stored trade, by symbol then venue.")


class TradeItem(_Model):
    trade_id: str
    price: DecimalString
    size: DecimalString
    side: str = Field(description="`buy`, `sell` (the taker's side) or `unknown`.")
    timestamp: UtcTimestamp = Field(description="Exchange event time.")


class TradesResponse(_Model):
    symbol: str = Field(examples=["BTC-USDT"])
    exchange: str = Field(examples=["binance"])
    data: list[TradeItem] = Field(description="Ordered by (event time, trade id).")
    next_cursor: str | None = Field(
        description="Pass as `cursor` with the same query for the next page; null on the last page."
    )


class QualityItem(_Model):
    exchange: str
    kind: str = Field(description="`book_gap`, `book_resync`, `late_trade`, `trade_gap`, `feed_*`, ...")
    timestamp: UtcTimestamp = Field(description="Event time.")
    detail: dict[str, Any] = Field(description="What the quality monitor recorded with it.")


class QualityResponse(_Model):
    symbol: str = Field(examples=["BTC-USDT"])
    data: list[QualityItem] = Field(description="Ordered by (event time, event id).")
    next_cursor: str | None = Field(
        description="Pass as `cursor` with the same query for the next page; null on the last page."
    )


class ErrorBody(_Model):
    code: str = Field(description="Stable machine-readable code from the error table.", examples=["MARKET_001"])
    message: str = Field(
        description="The code's text, English or Korean by `Accept-Language`.", examples=["Invalid symbol"]
    )
    details: dict[str, Any] | None = Field(description="Specifics of this occurrence, or null.")
    request_id: str = Field(
        description="Unique per request; also the `X-Request-ID` response header.",
        examples=["5f0c6a3e9b2d4c81a7e4f3d2c1b0a998"],
    )


class ErrorResponse(_Model):
    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "MARKET_001",
                        "message": "Invalid symbol",
                        "details": {"symbol": "XYZQ-USDT", "reason": "symbol not served"},
                        "request_id": "5f0c6a3e9b2d4c81a7e4f3d2c1b0a998",
                    }
                }
            ]
        },
    )

    error: ErrorBody


# `[price, size]`: a list of two rather than a tuple, whose JSON Schema (`prefixItems`) FastAPI
# renders as an `items` array that OpenAPI 3.1 does not allow.
PriceSizePair = Annotated[list[DecimalString], Field(min_length=2, max_length=2)]


class OrderBookResponse(_Model):
    """`GET /market/orderbook/{symbol}`: the live book's top levels of one venue."""

    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "symbol": "BTC-USDT",
                    "exchange": "binance",
                    "bids": [["65432.10000000", "0.50000000"], ["65432.00000000", "1.20000000"]],
                    "asks": [["65432.20000000", "0.30000000"], ["65432.50000000", "2.00000000"]],
                    "timestamp": "2024-03-21T09:30:00.123Z",
                }
            ]
        },
    )

    symbol: str = Field(description="`BASE-QUOTE`, upper case.", examples=["BTC-USDT"])
    exchange: str = Field(description="Venue of the book.", examples=["binance"])
    bids: list[PriceSizePair] = Field(
        description="`[price, size]` decimal strings, best (highest) first, at most `depth` levels."
    )
    asks: list[PriceSizePair] = Field(
        description="`[price, size]` decimal strings, best (lowest) first, at most `depth` levels."
    )
    timestamp: UtcTimestamp = Field(description="Exchange event time of the book's last update (UTC, milliseconds).")
