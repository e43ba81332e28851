"""ccxt's unified trade and order-book structures in, Entasis events out. Pure.

ccxt parses prices and sizes to floats. The exchanges sent decimal strings with far fewer than
15 significant digits, and `repr` of a float is the shortest string that reads back as the
same float, so `Decimal(repr(x))` gives back the exchange's number (without its trailing
zeros: `2683.80000000` arrives as `2683.8`, the same value)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.events import BookSnapshot, PriceLevel, Side, Trade
from schemas.limits import level_problem, trade_problem

_SIDES = {"buy": Side.BUY, "sell": Side.SELL}
_NS_PER_MS = 1_000_000


class CcxtParseError(ValueError):
    """A ccxt structure that cannot become an event (missing id or time, non-positive price...)."""


def to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise CcxtParseError(f"not a number: {value!r}")
    if isinstance(value, float):
        return Decimal(repr(value))
    try:
        return Decimal(str(value))
    except ArithmeticError as exc:
        raise CcxtParseError(f"not a number: {value!r}") from exc


def trade_id(t: Mapping[str, Any]) -> str:
    """The venue's trade id; a trade without one (Kraken's v1 feed) is named by what it is,
    which is what a re-sent copy of it repeats."""
    if t.get("id") is not None:
        return str(t["id"])
    return f"{t.get('timestamp')}-{t.get('price')}-{t.get('amount')}-{t.get('side')}"


def trade_from_ccxt(venue: str, symbol: str, t: Mapping[str, Any], recv_ts_ns: int) -> Trade:
    timestamp = t.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp <= 0:
        raise CcxtParseError(f"trade without a timestamp: {dict(t)!r}")
    try:
        trade = Trade(
            venue=venue,
            symbol=symbol,
            trade_id=trade_id(t),
            price=to_decimal(t.get("price")),
            size=to_decimal(t.get("amount")),
            side=_SIDES.get(str(t.get("side")), Side.UNKNOWN),
            event_ts_ns=timestamp * _NS_PER_MS,
            recv_ts_ns=recv_ts_ns,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise CcxtParseError(f"invalid trade {dict(t)!r}: {exc}") from exc
    # what the trades topic carries (schemas.limits): refused here, alone, rather than by the
    # decoder once published, with the batch of good trades around it
    if problem := trade_problem(trade.price, trade.size, trade.event_ts_ns, trade.recv_ts_ns):
        raise CcxtParseError(f"invalid trade {dict(t)!r}: {problem}")
    return trade


def _levels(side: Sequence[Sequence[Any]], depth: int) -> tuple[PriceLevel, ...]:
    return tuple((to_decimal(level[0]), to_decimal(level[1])) for level in side[:depth])


def book_from_ccxt(venue: str, symbol: str, book: Mapping[str, Any], depth: int, update_id: int,
                   recv_ts_ns: int) -> BookSnapshot:
    """The top `depth` levels of a ccxt order book (bids and asks best first, as ccxt keeps
    them) as a snapshot with the given update id."""
    timestamp = book.get("timestamp")
    event_ts_ns = timestamp * _NS_PER_MS if isinstance(timestamp, int) and timestamp > 0 else recv_ts_ns
    try:
        snapshot = BookSnapshot(
            venue=venue,
            symbol=symbol,
            event_ts_ns=event_ts_ns,
            recv_ts_ns=recv_ts_ns,
            last_update_id=update_id,
            bids=_levels(book["bids"], depth),
            asks=_levels(book["asks"], depth),
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise CcxtParseError(f"invalid order book of {venue}:{symbol}: {exc}") from exc
    for price, size in (*snapshot.bids, *snapshot.asks):
        if problem := level_problem(price, size):
            raise CcxtParseError(f"invalid order book of {venue}:{symbol}: {problem}")
    return snapshot


def iso8601_ms(text: Any) -> int | None:
    """Milliseconds since the epoch of an ISO 8601 UTC time, the fraction truncated to ms, as
    ccxt's `parse8601` reads it: a recording replayed through our parsers then gets the very
    times the live connector (through ccxt) published. None for anything else."""
    if not isinstance(text, str):
        return None
    match = _ISO8601.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
    except ValueError:
        return None
    return int(moment.timestamp()) * 1000 + int(((fraction or "") + "000")[:3])


_ISO8601 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:Z|\+00:?00)")
