"""The `/ws/market` message contract, pure: parse and validate what a client sends, shape what the
server sends. No I/O, so every rule here is unit-tested without a socket.

Client -> server (`exchange` optional everywhere: a venue id such as `binance`):
    {"action": "subscribe"|"unsubscribe", "channel": "market", "symbols": ["BTC-USDT", ...], "exchange": "binance"}
    {"action": "subscribe", "channel": "orderbook", "symbol": "BTC-USDT", "depth": 10, "exchange": ...}
    {"action": "unsubscribe", "channel": "orderbook", "symbol": "BTC-USDT"}   (depth ignored)
    {"action": "subscribe"|"unsubscribe", "channel": "candles", "symbol": "BTC-USDT", "interval": "1m"}
    {"action": "ping"} (or {"type": "ping"})   answered {"type": "pong"}: keeps an idle socket open
Server -> client: data messages with the specification's fields plus `exchange` (and, for
candles, `interval` and `is_final`) and the subscription's `seq` last (spliced in per subscriber by
`with_seq`, so the rest is rendered once for everyone), acknowledgements `{"type":
"subscribed"|"unsubscribed", "channel", ...}` and errors `{"type": "error", "code", "message"}`
(the message is the error table's text, in the socket's language)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

import orjson

from api.errors import ERRORS, ErrorCode, Language
from api.models import format_decimal, format_timestamp, ns_to_datetime
from schemas.symbols import InvalidSymbol, normalize_symbol

MARKET: Final = "market"
ORDERBOOK: Final = "orderbook"
CANDLES: Final = "candles"
CHANNELS = (MARKET, ORDERBOOK, CANDLES)
INTERVALS = ("1m", "5m", "1h", "1d")
MIN_DEPTH = 1
MAX_DEPTH = 100
# One message may name at most this many symbols: the per-socket cap bounds them anyway, and a
# bound here keeps a single frame from costing unbounded validation work.
MAX_SYMBOLS_PER_MESSAGE = 100
# Client frames are a few hundred bytes; anything far larger is a mistake or an attack.
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024

Action = Literal["subscribe", "unsubscribe"]
Channel = Literal["market", "orderbook", "candles"]
# The REST routes' venue ids (api/params.py): lower case, case-insensitive on input.
_VENUE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class ProtocolError(Exception):
    """A client message the server refuses: answered with an error message, the socket stays open."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason  # for logs only: the wire carries the table's text, nothing else


@dataclass(frozen=True, slots=True)
class Command:
    """A validated client request. `symbols` are normalised (upper case), deduplicated, in the
    order given; `depth` is set for an orderbook subscribe only; `exchange` (lower case) when the
    client named a venue; `interval` for the candles channel only."""

    action: Action
    channel: Channel
    symbols: tuple[str, ...]
    depth: int | None = None
    exchange: str | None = None
    interval: str | None = None


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, reason)


def _symbol(value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.MARKET_001, "symbol must be a string")
    try:
        return normalize_symbol(value)
    except InvalidSymbol:
        raise ProtocolError(ErrorCode.MARKET_001, f"malformed symbol {value[:40]!r}") from None


def _exchange(msg: dict[str, Any]) -> str | None:
    value = msg.get("exchange")
    if value is None:
        return None
    if not isinstance(value, str) or not _VENUE_RE.match(value.strip().lower()):
        raise _bad("exchange must be a venue id such as binance")
    return value.strip().lower()


@dataclass(frozen=True, slots=True)
class Ping:
    """A client's application-level keep-alive (browsers cannot send protocol pings)."""


PING: Final = Ping()
PONG_MESSAGE: Final = '{"type":"pong"}'


def _load(raw: str | bytes) -> dict[str, Any]:
    if len(raw) > MAX_CLIENT_MESSAGE_BYTES:
        raise _bad("message too large")
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("invalid JSON") from None
    if not isinstance(msg, dict):
        raise _bad("message must be a JSON object")
    return msg


def parse_message(raw: str | bytes) -> Command | Ping:
    """Parse one client frame: a Command, or PING for `{"action": "ping"}` / `{"type": "ping"}`;
    raises ProtocolError as `parse_command` does."""
    msg = _load(raw)
    if msg.get("action") == "ping" or (msg.get("type") == "ping" and "action" not in msg):
        return PING
    return _command(msg)


def parse_command(raw: str | bytes) -> Command:
    """Parse one client frame; raises ProtocolError (BAD_REQUEST or MARKET_001 for a malformed
    symbol). Whether a well-formed symbol is served is the caller's check (it needs the store)."""
    return _command(_load(raw))


def _command(msg: dict[str, Any]) -> Command:
    action = msg.get("action")
    if action not in ("subscribe", "unsubscribe"):
        raise _bad("unknown action")
    channel = msg.get("channel")
    if channel not in CHANNELS:
        raise _bad("unknown channel")
    exchange = _exchange(msg)
    if channel == MARKET:
        symbols = msg.get("symbols")
        if not isinstance(symbols, list) or not symbols:
            raise _bad("`symbols` must be a non-empty list")
        if len(symbols) > MAX_SYMBOLS_PER_MESSAGE:
            raise _bad("too many symbols in one message")
        names = tuple(dict.fromkeys(_symbol(s) for s in symbols))
        return Command(action, MARKET, names, exchange=exchange)
    symbol = _symbol(msg.get("symbol"))
    if channel == CANDLES:
        interval = msg.get("interval")
        if interval not in INTERVALS:
            raise _bad(f"interval must be one of {', '.join(INTERVALS)}")
        return Command(action, CANDLES, (symbol,), exchange=exchange, interval=interval)
    if action == "unsubscribe":
        return Command(action, ORDERBOOK, (symbol,), exchange=exchange)
    depth = msg.get("depth")
    # bool is an int in Python; `"depth": true` is not a depth.
    if not isinstance(depth, int) or isinstance(depth, bool) or not MIN_DEPTH <= depth <= MAX_DEPTH:
        raise _bad(f"depth must be an integer from {MIN_DEPTH} to {MAX_DEPTH}")
    return Command(action, ORDERBOOK, (symbol,), depth, exchange=exchange)


def _dumps(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


def ack_message(command: Command, venues: dict[str, str | None] | None = None) -> str:
    """The acknowledgement. A subscribe names the venue each subscription is bound to: `venues`,
    symbol -> venue, or None while no venue of the symbol is known yet (the subscription then binds
    to the first venue that publishes on the channel). Market: `"exchanges": {symbol: venue}`;
    orderbook and candles: `"exchange"`. An unsubscribe echoes `exchange` when one was given."""
    kind = "subscribed" if command.action == "subscribe" else "unsubscribed"
    body: dict[str, Any] = {"type": kind, "channel": command.channel}
    if command.channel == MARKET:
        body["symbols"] = list(command.symbols)
    else:
        body["symbol"] = command.symbols[0]
    if command.interval is not None:
        body["interval"] = command.interval
    if command.depth is not None:
        body["depth"] = command.depth
    if venues is not None:
        if command.channel == MARKET:
            body["exchanges"] = {s: venues.get(s) for s in command.symbols}
        else:
            body["exchange"] = venues.get(command.symbols[0])
    elif command.exchange is not None:
        body["exchange"] = command.exchange
    return _dumps(body)


def error_message(code: ErrorCode, language: Language = "en") -> str:
    return _dumps({"type": "error", "code": code.value, "message": ERRORS[code].message(language)})


def with_seq(text: str, seq: int) -> str:
    """A rendered data message (a JSON object) with the subscription's `seq` as its last field:
    the shared rendering stays shared, each subscriber pays one string splice."""
    return f'{text[:-1]},"seq":{seq}}}'


def market_message(venue: str, symbol: str, price: Decimal, event_ts_ns: int, volume: Decimal) -> str:
    """`{symbol, exchange, price, timestamp, volume}`; volume = the size traded in this update."""
    return _dumps(
        {
            "symbol": symbol,
            "exchange": venue,
            "price": format_decimal(price),
            "timestamp": format_timestamp(ns_to_datetime(event_ts_ns)),
            "volume": format_decimal(volume),
        }
    )


Level = tuple[str, str]  # (price, size), already in the wire's 8-place spelling


def format_levels(levels: Sequence[Sequence[Any]]) -> list[Level]:
    """Levels from the book-top JSON (decimal strings) in the wire's spelling, order kept."""
    return [(format_decimal(Decimal(str(p))), format_decimal(Decimal(str(s)))) for p, s in levels]


def orderbook_message(
    venue: str, symbol: str, bids: Sequence[Level], asks: Sequence[Level], event_ts_ns: int, depth: int
) -> str:
    """`{symbol, exchange, bids, asks, timestamp}`: `[price, size]` string pairs, best first, at
    most `depth` levels a side (fewer when the book, or the published top, holds fewer)."""
    return _dumps(
        {
            "symbol": symbol,
            "exchange": venue,
            "bids": [list(level) for level in bids[:depth]],
            "asks": [list(level) for level in asks[:depth]],
            "timestamp": format_timestamp(ns_to_datetime(event_ts_ns)),
        }
    )


@dataclass(frozen=True, slots=True)
class CandleBar:
    """One revision of a candle as the feed consumed it."""

    open_ts_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    is_final: bool


def candle_message(venue: str, symbol: str, interval: str, bar: CandleBar) -> str:
    """`{symbol, exchange, interval, timestamp, open, high, low, close, volume, is_final}`;
    `timestamp` is the bucket's open time, as in the REST history."""
    return _dumps(
        {
            "symbol": symbol,
            "exchange": venue,
            "interval": interval,
            "timestamp": format_timestamp(ns_to_datetime(bar.open_ts_ns)),
            "open": format_decimal(bar.open),
            "high": format_decimal(bar.high),
            "low": format_decimal(bar.low),
            "close": format_decimal(bar.close),
            "volume": format_decimal(bar.volume),
            "is_final": bar.is_final,
        }
    )
