"""Parsing of request parameters into the values the service works with; every failure is an
`ApiError` with the contract's code, raised before any database work."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from api.errors import ApiError, ErrorCode
from api.models import datetime_to_ns
from schemas.symbols import InvalidSymbol, normalize_symbol

_VENUE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
# The ISO 8601 shapes we accept: calendar date, optional time (extended or basic), optional
# fraction (any number of digits; beyond nanoseconds truncated), optional offset. Checked
# before fromisoformat, which also takes oddities such as `00:00:00.+00:00`.
_ISO_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2}|\d{8})"
    r"(?:(?P<time>[T ]\d{2}(?::?\d{2}(?::?\d{2})?)?)(?:[.,](?P<fraction>\d+))?"
    r"(?P<offset>Z|[+-]\d{2}(?::?\d{2})?)?)?$",
    re.IGNORECASE,
)
# DateTime64(9) holds 1900..2262; before the epoch nothing was traded and the bucket
# arithmetic assumes non-negative nanoseconds.
_MIN_NS = 0
MAX_NS = 9_000_000_000 * 10**9  # 2255-03-14: comfortably inside Int64 nanoseconds
_ECHO_LIMIT = 64  # never echo more than this much of a client's input back


def _echo(text: str) -> str:
    return text if len(text) <= _ECHO_LIMIT else text[:_ECHO_LIMIT] + "..."


def parse_symbol(text: str) -> str:
    """`btc-usdt` -> `BTC-USDT`; anything not BASE-QUOTE is 400 MARKET_001."""
    try:
        return normalize_symbol(text)
    except InvalidSymbol:
        raise ApiError(
            ErrorCode.MARKET_001,
            {"symbol": _echo(text), "reason": "expected BASE-QUOTE, e.g. BTC-USDT"},
            status=400,
        ) from None


def parse_exchange(text: str | None) -> str | None:
    """Venues are lower case ids (`binance`); input is case-insensitive."""
    if text is None:
        return None
    venue = text.strip().lower()
    if not _VENUE_RE.match(venue):
        raise ApiError(
            ErrorCode.BAD_REQUEST,
            {"errors": [{"field": "query.exchange", "reason": "expected a venue id such as binance"}]},
        )
    return venue


def parse_time(field: str, text: str | None) -> int | None:
    """ISO 8601 to integer UTC nanoseconds; no offset means UTC; a bare date is its midnight."""
    if text is None:
        return None
    match = _ISO_RE.match(text.strip())
    parsed: datetime | None = None
    extra_ns = 0
    if match:
        offset = match["offset"] or ""
        fraction = match["fraction"] or ""
        extra_ns = int(fraction[:9].ljust(9, "0")) if fraction else 0
        try:
            parsed = datetime.fromisoformat(
                match["date"] + (match["time"] or "") + ("+00:00" if offset.upper() == "Z" else offset)
            )
        except ValueError:
            parsed = None
    if parsed is None:
        raise ApiError(
            ErrorCode.BAD_REQUEST,
            {"errors": [{"field": f"query.{field}", "reason": "expected an ISO 8601 time, e.g. 2024-03-21T09:30:00Z"}]},
        )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    ns = datetime_to_ns(parsed) + extra_ns
    if not _MIN_NS <= ns < MAX_NS:
        raise ApiError(
            ErrorCode.BAD_REQUEST,
            {"errors": [{"field": f"query.{field}", "reason": "time out of range (1970 to 2255)"}]},
        )
    return ns
