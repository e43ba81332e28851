"""Versioned, immutable event models: the payloads of every topic.

Rules every event follows (docs/architecture.md):
- it names its schema and version (`schema_version`), so a consumer can refuse what it
  does not understand;
- it carries `venue`, `symbol` (`BASE-QUOTE`), the exchange's event time and our receive
  time, both in integer nanoseconds since the Unix epoch;
- prices, sizes and money are `Decimal` inside and decimal strings on the wire.

Each topic's codec (`schemas.codecs`) encodes and decodes these models; hot paths (agents
decoding thousands of trades per message) read compact rows instead (`schemas.codecs.trades`),
and these models are the contract, used at the edges and in tests to validate what the hot
paths produce.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints

from schemas.symbols import SYMBOL_PATTERN

# Decimal on the inside, decimal string on the wire, never a float.
DecimalStr = Annotated[
    Decimal,
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="always"),
]
Symbol = Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)]
Venue = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
# Nanoseconds since the epoch within int64: what Arrow's timestamp[ns] and ClickHouse's DateTime64(9)
# hold (schemas.limits.MAX_TIME_NS), so no decoded time can fail a sink's insert.
NanoTime = Annotated[int, Field(ge=0, le=2**63 - 1)]


class Event(BaseModel):
    """Base of every event: immutable, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    venue: Venue
    symbol: Symbol
    event_ts_ns: NanoTime  # exchange event time
    recv_ts_ns: NanoTime  # when our ingest received it


class Side(StrEnum):
    BUY = "buy"  # the taker bought (the maker was the seller)
    SELL = "sell"
    UNKNOWN = "unknown"


class Trade(Event):
    schema_version: Literal["trade.v1"] = "trade.v1"
    trade_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    price: DecimalStr = Field(gt=0)
    size: DecimalStr = Field(gt=0)
    side: Side


PriceLevel = tuple[DecimalStr, DecimalStr]  # (price, size); size 0 deletes the level


class BookDelta(Event):
    """One exchange diff: absolute sizes per level, with the venue's sequence numbers.

    `first_update_id`/`last_update_id` are Binance's `U`/`u`; `prev_update_id` is the
    futures `pu` (None on spot)."""

    schema_version: Literal["book_delta.v1"] = "book_delta.v1"
    first_update_id: int
    last_update_id: int
    prev_update_id: int | None = None
    bids: tuple[PriceLevel, ...]
    asks: tuple[PriceLevel, ...]


class BookSnapshot(Event):
    """A full (or top-N) book at `last_update_id`; bids best first, asks best first."""

    schema_version: Literal["book_snapshot.v1"] = "book_snapshot.v1"
    last_update_id: int
    bids: tuple[PriceLevel, ...]
    asks: tuple[PriceLevel, ...]


class Interval(StrEnum):
    M1 = "1m"
    M5 = "5m"
    H1 = "1h"
    D1 = "1d"

    @property
    def ns(self) -> int:
        return INTERVAL_NS[self.value]


INTERVAL_NS: dict[str, int] = {
    "1m": 60 * 10**9,
    "5m": 5 * 60 * 10**9,
    "1h": 3600 * 10**9,
    "1d": 86400 * 10**9,
}


class Candle(Event):
    """OHLCV of the trades whose event time falls in [open_ts_ns, open_ts_ns + interval).

    `event_ts_ns` is the event time of the last trade in the candle. A candle is emitted
    when its window closes (revision 0); a late trade inside the grace period emits the
    same candle again with `revision` + 1; `is_final` says no later revision will come.
    """

    schema_version: Literal["candle.v1"] = "candle.v1"
    interval: Interval
    open_ts_ns: NanoTime
    open: DecimalStr
    high: DecimalStr
    low: DecimalStr
    close: DecimalStr
    volume: DecimalStr
    trades: int = Field(ge=1)
    first_trade_id: str
    last_trade_id: str
    revision: int = Field(ge=0)
    is_final: bool


class QualityKind(StrEnum):
    BOOK_GAP = "book_gap"
    BOOK_RESYNC = "book_resync"
    LATE_TRADE = "late_trade"
    STALE_FEED = "stale_feed"
    MALFORMED = "malformed"
    DUPLICATE_TRADE = "duplicate_trade"
    FEED_CONNECTED = "feed_connected"
    FEED_DISCONNECTED = "feed_disconnected"
    FEED_STALE = "feed_stale"  # a connector's socket went silent (stale_feed: no trade reached the worker)
    TRADE_GAP = "trade_gap"  # trade ids the venue numbers consecutively went missing and no backfill found them


class QualityEvent(Event):
    schema_version: Literal["quality.v1"] = "quality.v1"
    kind: QualityKind
    detail: dict[str, Any] = Field(default_factory=dict)


class DeadLetter(BaseModel):
    """A message we could not decode, kept with its raw bytes (hex) so nothing is lost.

    Venue and symbol are what the source claimed, when it claimed anything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal["dead_letter.v1"] = "dead_letter.v1"
    venue: str
    symbol: str | None
    source: str  # topic or file the bytes came from
    error: str
    raw_hex: str
    recv_ts_ns: NanoTime
