"""What the market endpoints mean, between parsed parameters and the repository: symbol and
venue resolution, the feed-staleness rule, history ranges and gap filling. No SQL, no HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple, Protocol, TypeVar

import anyio.to_thread

from api.errors import ApiError, ErrorCode
from api.market_memory import MemoryMarket, MemoryOnly
from api.models import (
    Candle,
    HistoryResponse,
    PriceResponse,
    candle_fields_json,
    candle_json,
    format_timestamp,
    history_json,
    ns_to_datetime,
    price_json,
)
from api.read_model import NotCovered
from infra.store.records_repository import BucketTrades, RecordsRepository
from infra.store.repository import FEED_DOWN_KINDS, CandleRow, FeedState, LastTrade, MarketRepository
from schemas.events import INTERVAL_NS, Interval


class MarketReads(Protocol):
    """What the market endpoints read: the store (`MarketRepository`) or memory in front of it
    (`api.market_memory.MemoryMarket`), the same answers either way."""

    def knows(self, symbol: str) -> bool: ...
    def last_price(self, symbol: str, venue: str | None = None) -> LastTrade | None: ...
    def volume_24h(self, symbol: str, venue: str, until_ns: int) -> Decimal: ...
    def feed_state(self, symbol: str, venue: str) -> FeedState | None: ...
    def candles(
        self, symbol: str, interval: Interval | str, start_ns: int, end_ns: int, venue: str | None = None
    ) -> list[CandleRow]: ...


def reads(repository: MarketRepository | MarketReads) -> MarketReads:
    """The served app attaches its read model to the repository it hands the routes
    (`repository.memory`, see api/app.py); tests and tools without one read the store."""
    memory: MarketReads | None = getattr(repository, "memory", None)
    return memory if memory is not None else repository


_R = TypeVar("_R")

MAX_CANDLES = 5000  # per call, counted over the requested range (SPEC, "History")
DEFAULT_CANDLES = 500  # a missing bound is this many intervals away from the other


def unknown_symbol(symbol: str, exchange: str | None) -> ApiError:
    if exchange is None:
        return ApiError(ErrorCode.MARKET_001, {"symbol": symbol, "reason": "symbol not served"}, status=404)
    return ApiError(
        ErrorCode.MARKET_001,
        {"symbol": symbol, "exchange": exchange, "reason": "symbol not served on this exchange"},
        status=404,
    )


def _bad_range(reason: str, **extra: object) -> ApiError:
    return ApiError(ErrorCode.BAD_REQUEST, {"errors": [{"field": "query", "reason": reason}], **extra})


# A symbol's first trades reach the store within a few sink batches (about a second); a client
# told to come back after this finds it served.
WARMING_RETRY_AFTER_S = 2


def _warming_up(symbol: str, exchange: str | None) -> ApiError:
    details = {"symbol": symbol, "reason": "warming up"}
    if exchange is not None:
        details["exchange"] = exchange
    return ApiError(ErrorCode.UNAVAILABLE, details, headers={"Retry-After": str(WARMING_RETRY_AFTER_S)})


def _seen_in_feed(repository: MarketReads, symbol: str, exchange: str | None) -> bool:
    """Whether the API's read model has consumed trades of `symbol` (on `exchange`) that the
    store does not answer for yet: the symbol is produced, so "not served" would be wrong."""
    model = getattr(repository, "model", None)
    if model is None:  # the store alone: it cannot tell "not yet" from "never"
        return False
    venues: frozenset[str] = model.venues(symbol)
    return bool(venues) if exchange is None else exchange in venues


def last_trade(repository: MarketRepository | MarketReads, symbol: str, exchange: str | None) -> LastTrade:
    """The latest trade of a served symbol (404 MARKET_001 otherwise). Without `exchange` the
    venue is the one with the most recent trade, so price and history agree on it. A symbol the
    feed has delivered but the store does not hold yet answers 503 UNAVAILABLE "warming up" with
    `Retry-After`: a client that starts the system and calls it at once must learn "not yet",
    not "never"."""
    repository = reads(repository)
    if not repository.knows(symbol):
        if _seen_in_feed(repository, symbol, exchange):
            raise _warming_up(symbol, exchange)
        raise unknown_symbol(symbol, None)
    trade = repository.last_price(symbol, exchange)
    if trade is None:
        if _seen_in_feed(repository, symbol, exchange):
            raise _warming_up(symbol, exchange)
        raise unknown_symbol(symbol, exchange)
    return trade


def live_trade(repository: MarketRepository | MarketReads, symbol: str, exchange: str | None) -> LastTrade:
    """`last_trade`, refused with 503 MARKET_002 while the venue's feed is marked stale or
    disconnected and no trade has arrived since. A mark only counts until the next trade: a trade
    after it proves the feed is back even before the quality agent says so. Event time on both
    sides, so the rule holds for replays of old data too. GET /market/price and the portfolio's
    order prices both use it, so no order fills at a price the market data API would refuse to show."""
    repository = reads(repository)
    trade = last_trade(repository, symbol, exchange)
    state = repository.feed_state(symbol, trade.venue)
    if state is not None and state.kind in FEED_DOWN_KINDS and state.event_ns >= trade.event_ns:
        raise ApiError(
            ErrorCode.MARKET_002,
            {
                "symbol": symbol,
                "exchange": trade.venue,
                "state": state.kind,
                "since": format_timestamp(ns_to_datetime(state.event_ns)),
            },
        )
    return trade


def price(repository: MarketRepository | MarketReads, symbol: str, exchange: str | None) -> PriceResponse:
    repository = reads(repository)
    trade = live_trade(repository, symbol, exchange)
    volume = repository.volume_24h(symbol, trade.venue, trade.event_ns)
    return PriceResponse(
        symbol=symbol,
        price=trade.price,
        timestamp=ns_to_datetime(trade.event_ns),
        volume=volume,
        exchange=trade.venue,
    )


def check_range(interval: Interval, start_ns: int | None, end_ns: int | None, *, capped: bool = True) -> None:
    """The checks that need no data: order and, unless not `capped` (a bulk export, which pages
    through the store), the 5000-candle limit of an explicit range."""
    if start_ns is not None and end_ns is not None:
        if start_ns >= end_ns:
            raise _bad_range("start must be before end")
        if capped and end_ns - start_ns > MAX_CANDLES * INTERVAL_NS[interval.value]:
            raise _bad_range(f"at most {MAX_CANDLES} candles per call", max_candles=MAX_CANDLES)


def resolve_range(interval: Interval, start_ns: int | None, end_ns: int | None, latest_ns: int) -> tuple[int, int]:
    """Fill in missing bounds: with neither, the 500 candles up to and including the latest
    trade's (open) candle; with one, 500 intervals from it (so paging by `start` works)."""
    step = INTERVAL_NS[interval.value]
    if start_ns is None and end_ns is None:
        end_ns = (latest_ns // step + 1) * step
        return end_ns - DEFAULT_CANDLES * step, end_ns
    if start_ns is None:
        assert end_ns is not None
        return max(0, end_ns - DEFAULT_CANDLES * step), end_ns
    if end_ns is None:
        return start_ns, start_ns + DEFAULT_CANDLES * step
    return start_ns, end_ns


def fill_gaps(rows: list[CandleRow], step: int) -> list[CandleRow]:
    """Empty buckets between the first and last candle become flat candles at the previous
    close with zero volume."""
    return list(iter_filled(rows, step))


def iter_filled(rows: Iterable[CandleRow], step: int, previous: CandleRow | None = None) -> Iterator[CandleRow]:
    """`fill_gaps`, lazily, continuing after `previous` (the last candle of an earlier page)."""
    for row in rows:
        if previous is not None:
            close = previous.close
            for open_ns in range(previous.open_ns + step, row.open_ns, step):
                yield CandleRow(open_ns, close, close, close, close, Decimal(0))
        yield row
        previous = row


# --- `?fields=`: what a candle can carry besides OHLCV ---------------------------------------

HISTORY_FIELDS = ("trades", "vwap")  # the order they are rendered in, whatever order they are asked in
_FIELD = "(" + "|".join(HISTORY_FIELDS) + ")"
FIELDS_PATTERN = f"^{_FIELD}(,{_FIELD})*$"  # documents what parse_fields accepts (case-insensitive, spaces allowed)
NO_TRADES = BucketTrades(0, Decimal(0), Decimal(0))


def parse_fields(text: str | None) -> tuple[str, ...]:
    """`trades,vwap` -> the names asked for, in HISTORY_FIELDS order; any other name (or none) is
    400 BAD_REQUEST."""
    if text is None:
        return ()
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    if not names or names - set(HISTORY_FIELDS):
        reason = f"comma-separated names among {', '.join(HISTORY_FIELDS)}"
        raise ApiError(ErrorCode.BAD_REQUEST, {"errors": [{"field": "query.fields", "reason": reason}]})
    return tuple(name for name in HISTORY_FIELDS if name in names)


class CandleExtras(NamedTuple):
    trades: int | None
    vwap: Decimal | None


def exact_vwap(quote: Decimal, size: Decimal) -> Decimal:
    """quote / size rounded half-even to 8 places, from the exact quotient (no intermediate
    rounding at a context's precision)."""
    units = round(Fraction(quote) / Fraction(size) * 10**8)  # round() of a Fraction: half-even, exact
    return Decimal(f"{units}E-8")


def candle_extras(row: CandleRow, bucket: BucketTrades | None) -> CandleExtras:
    """A candle's trade count and VWAP from the trades the store holds in its bucket, exact or null.

    The stored candle is built by the candle agent from the trade stream; the `trades` table holds
    the same trades, except where the candle cannot show them (a trade after the candle was final is
    a `late_trade` quality event and changes no candle) or the store has no trades at all (imported
    history). So the bucket's stored trades count only when their size sum is exactly the candle's
    volume: then they are the candle's trades and count and VWAP are exact; otherwise both are null
    rather than figures of another set of trades. A filled candle (`fill=true`) has no trades: 0 and
    a null VWAP."""
    bucket = bucket if bucket is not None else NO_TRADES
    if bucket.size != row.volume:
        return CandleExtras(None, None)
    if bucket.trades == 0 or bucket.size == 0:
        return CandleExtras(bucket.trades, None)
    return CandleExtras(bucket.trades, exact_vwap(bucket.quote, bucket.size))


def store_of(repository: MarketRepository | MarketReads) -> MarketRepository:
    """The store behind `repository`: `fields` and exports read it alone (one query gives candles and
    their trades together), never memory; memory alone (`MemoryOnly`) has none, so NotCovered."""
    if isinstance(repository, MemoryOnly):
        raise NotCovered("the store is needed")
    if isinstance(repository, MemoryMarket):
        return repository.repository
    assert isinstance(repository, MarketRepository)
    return repository


def history_fields_body(
    repository: MarketRepository | MarketReads,
    symbol: str,
    interval: Interval,
    start_ns: int | None,
    end_ns: int | None,
    exchange: str | None,
    fill: bool,
    fields: tuple[str, ...],
) -> bytes:
    """`history_body` with `fields`: the venue and range as always (memory or store), the candles
    and the trades in their buckets from the store, in one query."""
    store = store_of(repository)
    venue, start_ns, end_ns = history_range(reads(repository), symbol, interval, start_ns, end_ns, exchange)
    pairs = RecordsRepository(store).candles_with_trades(symbol, venue, interval, start_ns, end_ns)
    buckets = {row.open_ns: bucket for row, bucket in pairs}
    rows = [row for row, _ in pairs]
    if fill:
        rows = fill_gaps(rows, INTERVAL_NS[interval.value])
    fragments = []
    for row in rows:
        extras = candle_extras(row, buckets.get(row.open_ns))
        fragments.append(candle_fields_json(row, fields, extras.trades, extras.vwap))
    return history_json(symbol, fragments)


def history_body(
    repository: MarketRepository | MarketReads,
    symbol: str,
    interval: Interval,
    start_ns: int | None,
    end_ns: int | None,
    exchange: str | None,
    fill: bool,
) -> bytes:
    """`history`'s JSON, byte for byte, rendered without models: from memory alone (`MemoryOnly`)
    the held candles come already rendered, so a day of 1m candles is a join of bytes."""
    repository = reads(repository)
    venue, start_ns, end_ns = history_range(repository, symbol, interval, start_ns, end_ns, exchange)
    if isinstance(repository, MemoryOnly) and not fill:
        return history_json(symbol, repository.candle_fragments(symbol, interval, start_ns, end_ns, venue))
    return history_json(symbol, [candle_json(row) for row in _history_rows(repository, symbol, interval, venue,
                                                                           start_ns, end_ns, fill)])


def history_range(
    repository: MarketRepository | MarketReads,
    symbol: str,
    interval: Interval,
    start_ns: int | None,
    end_ns: int | None,
    exchange: str | None,
    *,
    capped: bool = True,
) -> tuple[str, int, int]:
    """The venue and the [start, end) of a history request, its bounds checked and filled in."""
    check_range(interval, start_ns, end_ns, capped=capped)
    trade = last_trade(repository, symbol, exchange)
    start, end = resolve_range(interval, start_ns, end_ns, trade.event_ns)
    return trade.venue, start, end


def _history_rows(
    repository: MarketReads, symbol: str, interval: Interval, venue: str, start_ns: int, end_ns: int, fill: bool
) -> list[CandleRow]:
    rows = repository.candles(symbol, interval, start_ns, end_ns, venue)
    return fill_gaps(rows, INTERVAL_NS[interval.value]) if fill else rows


def price_body(repository: MarketRepository | MarketReads, symbol: str, exchange: str | None) -> bytes:
    """`price`'s JSON, byte for byte, rendered without the model."""
    repository = reads(repository)
    trade = live_trade(repository, symbol, exchange)
    volume = repository.volume_24h(symbol, trade.venue, trade.event_ns)
    return price_json(symbol, trade.price, trade.event_ns, volume, trade.venue)


async def answer(repository: MarketRepository, read: Callable[[MarketReads], _R]) -> _R:
    """`read` from memory alone, on the event loop, when the app has a read model that covers it
    (no I/O, microseconds: a thread hop would cost more than the answer); otherwise in the
    threadpool, where the store's blocking clients live and memory may warm from the store."""
    memory = getattr(repository, "memory", None)
    if isinstance(memory, MemoryMarket):
        try:
            return read(memory.only)
        except NotCovered:
            pass
    return await anyio.to_thread.run_sync(read, repository)


def history(
    repository: MarketRepository | MarketReads,
    symbol: str,
    interval: Interval,
    start_ns: int | None,
    end_ns: int | None,
    exchange: str | None,
    fill: bool,
) -> HistoryResponse:
    repository = reads(repository)
    venue, start_ns, end_ns = history_range(repository, symbol, interval, start_ns, end_ns, exchange)
    rows = _history_rows(repository, symbol, interval, venue, start_ns, end_ns, fill)
    return HistoryResponse(
        symbol=symbol,
        data=[
            Candle(
                timestamp=ns_to_datetime(r.open_ns), open=r.open, high=r.high, low=r.low, close=r.close, volume=r.volume
            )
            for r in rows
        ],
    )
