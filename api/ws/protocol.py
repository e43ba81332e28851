"""The `/ws/market` message contract, pure: parse and validate what a client sends, shape what the
server sends. No I/O, so every rule here is unit-tested without a socket.

Client -> server:
    {"action": "subscribe"|"unsubscribe", "channel": "market", "symbols": ["BTC-USDT", ...]}
    {"action": "subscribe", "channel": "orderbook", "symbol": "BTC-USDT", "depth": 10}
    {"action": "unsubscribe", "channel": "orderbook", "symbol": "BTC-USDT"}   (depth ignored)
    {"action": "ping"} (or {"type": "ping"})   answered {"type": "pong"}: keeps an idle socket open
Server -> client: data messages with exactly the specification's fields, acknowledgements
`{"type": "subscribed"|"unsubscribed", "channel", ...}` and errors `{"type": "error", "code",
"message"}` (the message is the error table's text, in the socket's language)."""

from __future__ import annotations

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
CHANNELS = (MARKET, ORDERBOOK)
MIN_DEPTH = 1
MAX_DEPTH = 100
# One message may name at most this many symbols: the per-socket cap bounds them anyway, and a
# bound here keeps a single frame from costing unbounded validation work.
MAX_SYMBOLS_PER_MESSAGE = 100
# Client frames are a few hundred bytes; anything far larger is a mistake or an attack.
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024

Action = Literal["subscribe", "unsubscribe"]
Channel = Literal["market", "orderbook"]


class ProtocolError(Exception):
    """A client message the server refuses: answered with an error message, the socket stays open."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason  # for logs only: the wire carries the table's text, nothing else


@dataclass(frozen=True, slots=True)
class Command:
    """A validated client request. `symbols` are normalised (upper case), deduplicated, in the
    order given; `depth` is set for an orderbook subscribe only."""

    action: Action
    channel: Channel
    symbols: tuple[str, ...]
    depth: int | None = None


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, reason)


def _symbol(value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.MARKET_001, "symbol must be a string")
    try:
        return normalize_symbol(value)
    except InvalidSymbol:
        raise ProtocolError(ErrorCode.MARKET_001, f"malformed symbol {value[:40]!r}") from None


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
    if channel == MARKET:
        symbols = msg.get("symbols")
        if not isinstance(symbols, list) or not symbols:
            raise _bad("`symbols` must be a non-empty list")
        if len(symbols) > MAX_SYMBOLS_PER_MESSAGE:
            raise _bad("too many symbols in one message")
        names = tuple(dict.fromkeys(_symbol(s) for s in symbols))
        return Command(action, MARKET, names)
    if channel == ORDERBOOK:
        symbol = _symbol(msg.get("symbol"))
        if action == "unsubscribe":
            return Command(action, ORDERBOOK, (symbol,))
        depth = msg.get("depth")
        # bool is an int in Python; `"depth": true` is not a depth.
        if not isinstance(depth, int) or isinstance(depth, bool) or not MIN_DEPTH <= depth <= MAX_DEPTH:
            raise _bad(f"depth must be an integer from {MIN_DEPTH} to {MAX_DEPTH}")
        return Command(action, ORDERBOOK, (symbol,), depth)
    raise _bad("unknown channel")


def _dumps(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


def ack_message(command: Command) -> str:
    kind = "subscribed" if command.action == "subscribe" else "unsubscribed"
    if command.channel == MARKET:
        return _dumps({"type": kind, "channel": MARKET, "symbols": list(command.symbols)})
    body: dict[str, Any] = {"type": kind, "channel": ORDERBOOK, "symbol": command.symbols[0]}
    if command.depth is not None:
        body["depth"] = command.depth
    return _dumps(body)


def error_message(code: ErrorCode, language: Language = "en") -> str:
    return _dumps({"type": "error", "code": code.value, "message": ERRORS[code].message(language)})


def market_message(symbol: str, price: Decimal, event_ts_ns: int, volume: Decimal) -> str:
    """`{symbol, price, timestamp, volume}`; volume = the size traded in this update."""
    return _dumps(
        {
            "symbol": symbol,
            "price": format_decimal(price),
            "timestamp": format_timestamp(ns_to_datetime(event_ts_ns)),
            "volume": format_decimal(volume),
        }
    )


Level = tuple[str, str]  # (price, size), already in the wire's 8-place spelling


def format_levels(levels: Sequence[Sequence[Any]]) -> list[Level]:
    """Levels from the book-top JSON (decimal strings) in the wire's spelling, order kept."""
    return [(format_decimal(Decimal(str(p))), format_decimal(Decimal(str(s)))) for p, s in levels]


def orderbook_message(symbol: str, bids: Sequence[Level], asks: Sequence[Level], event_ts_ns: int, depth: int) -> str:
    """`{symbol, bids, asks, timestamp}`: `[price, size]` string pairs, best first, at most `depth`
    levels a side (fewer when the book, or the published top, holds fewer)."""
    return _dumps(
        {
            "symbol": symbol,
            "bids": [list(level) for level in bids[:depth]],
            "asks": [list(level) for level in asks[:depth]],
            "timestamp": format_timestamp(ns_to_datetime(event_ts_ns)),
        }
    )
