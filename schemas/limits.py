"""Bounds a market-data value must respect before an agent or the store sees it.

One malformed message must cost one dead letter, never a stopped agent or a lost batch. The
sign and the decimal places are not enough: a price of 1e30 or a time outside int64 makes the
sink's Arrow insert raise, so the whole batch of good trades around it is never stored; a
lower-case symbol or a negative time makes `Candle(...)` raise inside the candles agent. So
each codec asks these pure functions about every value it decodes, and refuses the message
when one answers with a problem (docs/topics.md, dead letters).

The bounds come from where the values go:
- decimals: the store's Decimal(38, 8), so at most 8 places and under 1e30; sizes under 1e20,
  so that a candle's volume (a sum of sizes) of up to 1e10 trades still fits;
- symbols: `schemas.symbols.SYMBOL_PATTERN` (`BASE-QUOTE`, upper case); venues: the `Venue`
  pattern of `schemas.events`;
- times: integer nanoseconds since the epoch, 0 to 2**63 - 1 (Arrow's timestamp[ns] and
  ClickHouse's DateTime64(9) are int64; `NanoTime` refuses negative times).

Each `*_problem` function returns None for a good value, else a short reason for the dead
letter: a hot path checks thousands of values per message, and an exception per check would
cost more than the check.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, InvalidOperation

from schemas.symbols import SYMBOL_PATTERN

MAX_DECIMAL_PLACES = 8
MAX_PRICE = Decimal("1e30")  # exclusive: Decimal(38, 8) holds 30 integer digits
MAX_SIZE = Decimal("1e20")  # exclusive
MIN_TIME_NS = 0
MAX_TIME_NS = 2**63 - 1
MAX_COUNT = 2**32 - 1  # the store's UInt32 counters (trades in a candle, revisions, windows)
MAX_UPDATE_ID = 2**64 - 1  # UInt64 update ids
VENUE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"

_SYMBOL = re.compile(SYMBOL_PATTERN)
_VENUE = re.compile(VENUE_PATTERN)
_QUANT = Decimal(1).scaleb(-MAX_DECIMAL_PLACES)
# Quantizing to 8 places leaves a value below 1e30 unchanged exactly when it has at most 8 places;
# 38 digits of precision hold every such value, so this never raises for the values it is asked about.
_FIT = Context(prec=38, traps=[InvalidOperation])


def decimal_problem(value: object, what: str, bound: Decimal, *, allow_zero: bool = False) -> str | None:
    """None when `value` is a finite Decimal in (0, bound) ([0, bound) with `allow_zero`) with at
    most 8 decimal places."""
    if not isinstance(value, Decimal) or not value.is_finite():
        return f"{what} must be a finite decimal, got {value!r}"
    if value < 0 or (value == 0 and not allow_zero):
        return f"{what} must be {'zero or ' if allow_zero else ''}positive, got {value}"
    if value >= bound:
        return f"{what} must be below {bound}, got {value:.3e}"
    if _FIT.quantize(value, _QUANT) != value:
        return f"{what} has more than {MAX_DECIMAL_PLACES} decimal places: {value}"
    return None


def price_problem(value: object) -> str | None:
    return decimal_problem(value, "price", MAX_PRICE)


def size_problem(value: object, *, allow_zero: bool = False) -> str | None:
    """`allow_zero` for order-book levels, where size 0 deletes the level."""
    return decimal_problem(value, "size", MAX_SIZE, allow_zero=allow_zero)


def symbol_problem(value: object) -> str | None:
    if not isinstance(value, str) or not _SYMBOL.fullmatch(value):  # match() takes a trailing newline
        return f"symbol must be BASE-QUOTE in upper case (e.g. BTC-USDT), got {value!r:.40}"
    return None


def venue_problem(value: object) -> str | None:
    if not isinstance(value, str) or not _VENUE.fullmatch(value):
        return f"venue must match {VENUE_PATTERN}, got {value!r:.40}"
    return None


def amount_problem(value: object, what: str) -> str | None:
    """A computed amount the store rounds to 8 places (risk, predictions): finite, not negative,
    under 1e30 (any number of places: it is rounded, never refused for them)."""
    if not isinstance(value, Decimal) or not value.is_finite():
        return f"{what} must be a finite decimal, got {value!r}"
    if value < 0 or value >= MAX_PRICE:
        return f"{what} must be within 0..{MAX_PRICE}, got {value:.3e}"
    return None


def count_problem(value: object, what: str, bound: int = MAX_COUNT) -> str | None:
    """A counter the store keeps unsigned (`bound` its largest value)."""
    if type(value) is not int or not 0 <= value <= bound:
        return f"{what} must be an integer within 0..{bound}, got {value!r:.40}"
    return None


def time_problem(value: object, what: str = "time") -> str | None:
    """None for integer nanoseconds since the epoch within int64 (bool is not an integer here)."""
    if type(value) is not int:
        return f"{what} must be integer nanoseconds, got {value!r:.40}"
    if not MIN_TIME_NS <= value <= MAX_TIME_NS:
        return f"{what} must be within {MIN_TIME_NS}..{MAX_TIME_NS} ns, got {value}"
    return None


def stream_problem(venue: object, symbol: object) -> str | None:
    """The envelope of a message of one stream: its venue and symbol."""
    return venue_problem(venue) or symbol_problem(symbol)


def trade_problem(price: object, size: object, event_ts_ns: object, recv_ts_ns: object) -> str | None:
    """One trade row of a batch (its stream checked once with `stream_problem`)."""
    return (
        price_problem(price)
        or size_problem(size)
        or time_problem(event_ts_ns, "event time")
        or time_problem(recv_ts_ns, "receive time")
    )


def level_problem(price: object, size: object) -> str | None:
    """One order-book level: size 0 deletes it."""
    return price_problem(price) or size_problem(size, allow_zero=True)
