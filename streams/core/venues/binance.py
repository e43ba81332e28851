"""Binance spot, USD-M and COIN-M market data: one raw message in, typed events out. Pure.

Input is either a recorded line `b"<recv_ns> <json>"` (`parse_line`, the format of
the recorded captures) or a live message with the time we received it (`parse_message`).
Handled shapes:
- combined-stream envelope `{"stream": "<sym>@<channel>", "data": {...}}` with channel
  `trade`, `depth` / `depth@<speed>` (diffs) or `bookTicker`;
- the same payloads without the envelope (a raw single stream), recognised by `e`;
- a REST depth snapshot body, recognised by `lastUpdateId`.

Times: trades take the trade time `T`, diffs and futures tickers/snapshots the event time
`E` (ms -> ns). Spot tickers and spot snapshots carry no exchange time at all, so their event
time is our receive time (which on the recordings runs ~1.27 s behind the exchange clock).
Prices and sizes are `Decimal`s of the exchange's strings, unchanged.

Every check the event models would make is made here, so events are built without pydantic
validation (`schemas.trusted`: ~0.5 µs an event instead of ~2.5 µs); anything malformed
raises `ParseError`, never a KeyError or TypeError.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final, Literal

import orjson

from schemas.book_ticker import BookTicker
from schemas.codecs import book, trades
from schemas.events import BookDelta, BookSnapshot, PriceLevel, Side, Trade
from schemas.level_keys import attach, price_key
from schemas.limits import MAX_PRICE, MAX_SIZE, MAX_TIME_NS, MAX_UPDATE_ID
from schemas.symbols import InvalidSymbol, normalize_symbol
from schemas.text_memo import remember
from schemas.trusted import trusted
from streams.core.venues.contract import BookRules

Market = Literal["spot", "usdm", "cm"]
MARKETS: Final[tuple[Market, ...]] = ("spot", "usdm", "cm")
VENUES: Final[dict[str, str]] = {"spot": "binance", "usdm": "binance-usdm", "cm": "binance-coinm"}

# Depth sequencing as Binance documents it ("How to manage a local order book correctly"), the
# same on the three markets' wire format; the venue modules (binance_spot, binance_usdm, binance_coinm)
# each name theirs:
# | rule | spot (`U`, `u`) | futures USD-M / COIN-M (`U`, `u`, `pu`) |
# | stale diff after a snapshot `L`, dropped | `u <= L` | `u < L` |
# | first diff applied | `U <= L + 1 <= u` | `U <= L <= u` |
# | every later diff | `U == previous u + 1` | `pu == previous u` |
SPOT_RULES: Final = BookRules("spot", chained_by_previous_id=False, first_diff_holds_snapshot_id=False)
FUTURES_RULES: Final = BookRules("futures", chained_by_previous_id=True, first_diff_holds_snapshot_id=True)

# ccxt spreads Binance subscriptions over up to 50 sockets; one socket per venue carries a
# symbol's trades and depth together (Binance allows 1024 streams on one), so a silent socket
# means a stalled feed, not a quiet market
ONE_SOCKET: Final = dict.fromkeys(("spot", "margin", "linear", "inverse", "stock", "option", "optionMarket"), 1)

BinanceEvent = Trade | BookDelta | BookSnapshot | BookTicker

_MS: Final = 1_000_000
_ZERO: Final = Decimal(0)
# What the topics carry (schemas.limits): prices under 1e30, sizes under 1e20, at most 8 places,
# times within int64 ns, update ids within UInt64. A frame beyond them is refused here, alone: once
# published, the wire decoder would refuse the whole batch of good trades around it. `0 < x < bound`
# also refuses NaN (the comparison raises).
_MAX_PRICE: Final = MAX_PRICE
_MAX_SIZE: Final = MAX_SIZE
_MAX_MS: Final = MAX_TIME_NS // 1_000_000
_fit = Context(prec=38, traps=[InvalidOperation]).quantize  # unchanged by 8 places: it has at most 8
_QUANT: Final = Decimal(1).scaleb(-8)
_MAX_DIGITS: Final = 19  # of a receive time: int64 ns (and Python refuses to read a 4300-digit number)

# What `_classify` returns: which builder a payload needs.
_TRADE: Final = "trade"
_DEPTH: Final = "depthUpdate"
_TICKER: Final = "bookTicker"
_SNAPSHOT: Final = "snapshot"

_BUY: Final = Side.BUY  # enum attribute lookups cost ~100 ns each on 3.11
_SELL: Final = Side.SELL


class ParseError(ValueError):
    """The message is not a well-formed Binance market-data message."""


# Binance quote assets, longest first so that `ETHUSDT` splits as ETH + USDT, not ETHUSD + T.
_BINANCE_QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "USD", "BTC", "ETH", "BNB", "EUR", "TRY")


def from_binance(raw: str) -> str:
    """`ETHUSDT` -> `ETH-USDT`; COIN-M `ETHUSD_PERP` -> `ETH-USD` (the venue says it is a perp)."""
    base_quote = raw.upper().split("_", 1)[0]
    for quote in _BINANCE_QUOTES:
        if base_quote.endswith(quote) and len(base_quote) > len(quote):
            return f"{base_quote[: -len(quote)]}-{quote}"
    raise InvalidSymbol(raw)



def venue_of(market: str) -> str:
    """`spot` -> `binance`, `usdm` -> `binance-usdm`, `cm` -> `binance-coinm`."""
    venue = VENUES.get(market)
    if venue is None:
        raise _unknown_market(market)
    return venue


def _unknown_market(market: object) -> ParseError:
    return ParseError(f"unknown Binance market {market!r}; expected one of {', '.join(MARKETS)}")


def split_line(line: bytes) -> tuple[int, bytes]:
    """`b"<recv_ns> <json>"` -> (recv_ns, json bytes)."""
    head, sep, body = line.partition(b" ")
    if not sep or not head.isdigit() or len(head) > _MAX_DIGITS:
        raise _bad_prefix(line)
    return int(head), body


def parse_line(line: bytes, market: Market, symbol: str | None = None) -> list[BinanceEvent]:
    """One recorded line. `symbol` (Binance spelling, e.g. `ETHUSDT`) names the instrument of
    REST snapshots, whose spot and USD-M bodies do not say which symbol they are for."""
    # split_line and parse_message inlined: two calls are ~5 % of a trade's cost.
    head, sep, body = line.partition(b" ")
    if not sep or not head.isdigit() or len(head) > _MAX_DIGITS:
        raise _bad_prefix(line)
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad_json(exc) from exc
    return parse_payload(msg, market, int(head), symbol)


def parse_message(raw: bytes | str, market: Market, recv_ns: int, symbol: str | None = None) -> list[BinanceEvent]:
    """One live WebSocket or REST message received at `recv_ns` (Unix ns)."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad_json(exc) from exc
    return parse_payload(msg, market, recv_ns, symbol)


def _bad_prefix(line: bytes) -> ParseError:
    return ParseError(f"a recorded line starts with '<recv_ns> ', got {line[:40]!r}")


def _bad_json(exc: orjson.JSONDecodeError) -> ParseError:
    return ParseError(f"invalid JSON: {exc}")


def parse_payload(msg: Any, market: Market, recv_ns: int, symbol: str | None = None) -> list[BinanceEvent]:
    """One decoded message (see `parse_message`)."""
    venue = VENUES.get(market)
    if venue is None:
        raise _unknown_market(market)
    if type(recv_ns) is not int or not 0 <= recv_ns <= MAX_TIME_NS:
        raise ParseError(f"receive time must be a non-negative integer of ns, got {recv_ns!r}")
    kind, data = _classify(msg)
    try:
        return [_BUILDERS[kind](data, market, venue, recv_ns, symbol)]
    except ParseError:
        raise
    except KeyError as exc:
        raise ParseError(f"{kind}: missing field {exc.args[0]!r}") from exc
    except (TypeError, ValueError, ArithmeticError, IndexError, AttributeError) as exc:
        raise ParseError(f"{kind}: malformed field: {exc!r}") from exc


def _classify(msg: Any) -> tuple[str, dict[str, Any]]:
    if type(msg) is not dict:
        raise ParseError(f"expected a JSON object, got {type(msg).__name__}")
    stream = msg.get("stream")
    if stream is not None:
        data = msg.get("data")
        if type(stream) is not str or type(data) is not dict:
            raise ParseError("an envelope needs a 'stream' string and a 'data' object")
        return _stream_kind(stream), data
    if "lastUpdateId" in msg:
        return _SNAPSHOT, msg
    event_type = msg.get("e")
    if event_type in (_TRADE, _DEPTH, _TICKER):
        return event_type, msg
    # A raw (unwrapped) spot bookTicker is the one payload without `e`.
    if event_type is None and "u" in msg and "b" in msg and "a" in msg:
        return _TICKER, msg
    raise ParseError(f"unknown message: no stream, lastUpdateId or known event type (e={event_type!r})")


@lru_cache(maxsize=4096)
def _stream_kind(stream: str) -> str:
    channel = stream.partition("@")[2]
    if channel == "trade":
        return _TRADE
    # `depth@100ms` / `depth@0ms` are diffs; `depth5`, `depth20`... are partial books, not handled.
    if channel == "depth" or channel.startswith("depth@"):
        return _DEPTH
    if channel == "bookTicker":
        return _TICKER
    raise ParseError(f"unknown stream {stream!r}")


def _trade(d: dict[str, Any], market: Market, venue: str, recv_ns: int, hint: str | None) -> Trade:
    trade_ms = d["T"]
    trade_id = d["t"]
    maker = d["m"]
    p = d["p"]
    q = d["q"]
    try:
        price = Decimal(p)
        size = Decimal(q)
        # `0 < x < inf` refuses zero, negatives and infinities; with NaN the comparison raises.
        valid = (
            type(trade_ms) is int
            and type(trade_id) is int
            and type(maker) is bool
            and type(p) is str
            and type(q) is str
            and trade_ms >= 0
            and trade_id >= 0
            and trade_ms <= _MAX_MS
            and _ZERO < price < _MAX_PRICE
            and _ZERO < size < _MAX_SIZE
            and _fit(price, _QUANT) == price
            and _fit(size, _QUANT) == size
        )
    except (InvalidOperation, TypeError, ValueError):
        valid = False
    if not valid:
        raise ParseError(f"trade: bad field in T={trade_ms!r} t={trade_id!r} m={maker!r} p={p!r} q={q!r}")
    return trusted(
        Trade,
        {
            "venue": venue,
            "symbol": _symbol(d["s"]),
            "event_ts_ns": trade_ms * _MS,
            "recv_ts_ns": recv_ns,
            "schema_version": trades.TRADE,
            "trade_id": str(trade_id),
            "price": price,
            "size": size,
            # m: the buyer was the maker, so the taker (the aggressor) sold.
            "side": _SELL if maker else _BUY,
        },
    )


def _depth(d: dict[str, Any], market: Market, venue: str, recv_ns: int, hint: str | None) -> BookDelta:
    first, last = _int(d["U"], "U"), _int(d["u"], "u")
    if first > last:
        raise ParseError(f"depthUpdate: U {first} is after u {last}")
    # Spot diffs chain by U == previous u + 1 and have no `pu`; futures diffs chain by pu.
    prev = None if market == "spot" else _int(d["pu"], "pu")
    bids, bid_keys = _levels(d["b"], "b")
    asks, ask_keys = _levels(d["a"], "a")
    delta = trusted(
        BookDelta,
        {
            "venue": venue,
            "symbol": _symbol(d["s"]),
            "event_ts_ns": _int(d["E"], "E", _MAX_MS) * _MS,
            "recv_ts_ns": recv_ns,
            "schema_version": book.BOOK_DELTA,
            "first_update_id": first,
            "last_update_id": last,
            "prev_update_id": prev,
            "bids": bids,
            "asks": asks,
        },
    )
    attach(delta, bid_keys, ask_keys)
    return delta


def _ticker(d: dict[str, Any], market: Market, venue: str, recv_ns: int, hint: str | None) -> BookTicker:
    return trusted(
        BookTicker,
        {
            "venue": venue,
            "symbol": _symbol(d["s"]),
            "event_ts_ns": _exchange_time(d, market, recv_ns),
            "recv_ts_ns": recv_ns,
            "schema_version": book.BOOK_TICKER,
            "update_id": _int(d["u"], "u"),
            "bid_price": _non_negative(d["b"], "b", _MAX_PRICE),
            "bid_size": _non_negative(d["B"], "B", _MAX_SIZE),
            "ask_price": _non_negative(d["a"], "a", _MAX_PRICE),
            "ask_size": _non_negative(d["A"], "A", _MAX_SIZE),
        },
    )


def _snapshot(d: dict[str, Any], market: Market, venue: str, recv_ns: int, hint: str | None) -> BookSnapshot:
    # Only COIN-M snapshots name their symbol; the others are known from the request.
    raw_symbol = d.get("symbol", hint)
    if raw_symbol is None:
        raise ParseError("snapshot: the body names no symbol and none was given (symbol=...)")
    bids, bid_keys = _levels(d["bids"], "bids")
    asks, ask_keys = _levels(d["asks"], "asks")
    snapshot = trusted(
        BookSnapshot,
        {
            "venue": venue,
            "symbol": _symbol(raw_symbol),
            "event_ts_ns": _exchange_time(d, market, recv_ns),
            "recv_ts_ns": recv_ns,
            "schema_version": book.BOOK_SNAPSHOT,
            "last_update_id": _int(d["lastUpdateId"], "lastUpdateId"),
            "bids": bids,
            "asks": asks,
        },
    )
    attach(snapshot, bid_keys, ask_keys)
    return snapshot


def _exchange_time(d: dict[str, Any], market: Market, recv_ns: int) -> int:
    """`E` in ns; spot tickers and snapshots have none, so they get the receive time."""
    event_ms = d.get("E")
    if event_ms is None:
        if market == "spot":
            return recv_ns
        raise KeyError("E")
    return _int(event_ms, "E", _MAX_MS) * _MS


# Level values already read and checked, by their text. A book's diffs name the same few thousand
# prices over and over (97 % of the recorded spot levels' prices had been seen before, 77 % of the
# sizes: "0.00000000" removes a level), and a dict lookup costs a fraction of Decimal() and its
# checks. Only strings that passed the checks are kept, so a hit is a valid value; bounded by
# clearing when full. A price is kept with its book key (`schemas.level_keys`): the event carries
# its levels' keys, so the book does not compute them.
_LEVEL_PRICES: dict[str, tuple[Decimal, int]] = {}
_LEVEL_SIZES: dict[str, Decimal] = {}


def forget_level_values() -> None:
    """Empty the remembered level values: the next levels are read as fresh `Decimal`s (a
    benchmark that measures a book on fresh keys, whose hashes are not computed yet)."""
    _LEVEL_PRICES.clear()
    _LEVEL_SIZES.clear()


def _levels(raw: Any, name: str) -> tuple[tuple[PriceLevel, ...], list[int]]:
    """(the levels, their prices' book keys)."""
    if type(raw) is not list:
        raise ParseError(f"{name} must be a list of [price, size], got {type(raw).__name__}")
    levels: list[PriceLevel] = []
    keys: list[int] = []
    append, add_key = levels.append, keys.append
    known_price, known_size = _LEVEL_PRICES.get, _LEVEL_SIZES.get
    # Inlined (no helper call per value on a hit): a snapshot holds 2000 levels, a diff dozens.
    try:
        for level in raw:
            if type(level) is not list or len(level) != 2:
                raise ParseError(f"{name}: a level is [price, size], got {level!r}")
            price_text, size_text = level
            # a str key only ever equals a str; an unhashable value raises TypeError (a bad level)
            price = known_price(price_text)
            if price is None:
                price = _level_price(price_text)
            size = known_size(size_text)
            if size is None:
                size = _level_size(size_text)
            if price is None or size is None:
                raise _bad_level(name, level)
            append((price[0], size))
            add_key(price[1])
    except ParseError:
        raise
    except (InvalidOperation, TypeError, ValueError) as exc:  # Decimal() of a non-number, NaN compared
        raise _bad_level(name, level) from exc
    return tuple(levels), keys


def _level_price(text: Any) -> tuple[Decimal, int] | None:
    """A level's price (above zero, below 1e30) and its book key, remembered; None if it is not one."""
    value = _decimal(text, _MAX_PRICE, zero_ok=False)
    return None if value is None else remember(_LEVEL_PRICES, text, (value, price_key(value)))


def _level_size(text: Any) -> Decimal | None:
    """A level's size (zero or more, below 1e20), remembered; None if it is not one."""
    value = _decimal(text, _MAX_SIZE, zero_ok=True)
    return None if value is None else remember(_LEVEL_SIZES, text, value)


def _bad_level(name: str, level: Any) -> ParseError:
    return ParseError(f"{name}: a level is [positive price, non-negative size] as decimal strings, got {level!r}")


def _decimal(text: Any, bound: Decimal, zero_ok: bool) -> Decimal | None:
    """`text` read as a Decimal if it is a decimal string above zero (or zero, `zero_ok`), below
    `bound`, with at most 8 places; else None."""
    if type(text) is str:
        try:
            value = Decimal(text)
            if (value >= _ZERO if zero_ok else value > _ZERO) and value < bound and _fit(value, _QUANT) == value:
                return value
        except InvalidOperation:  # not a number, or NaN compared
            pass
    return None


def _positive(text: Any, name: str) -> Decimal:
    value = _decimal(text, _MAX_PRICE, zero_ok=False)
    if value is None:
        raise ParseError(f"{name} must be a positive decimal string, got {text!r}")
    return value


def _non_negative(text: Any, name: str, bound: Decimal) -> Decimal:
    value = _decimal(text, bound, zero_ok=True)
    if value is None:
        raise ParseError(f"{name} must be a non-negative decimal string, got {text!r}")
    return value


def _int(value: Any, name: str, bound: int = MAX_UPDATE_ID) -> int:
    if type(value) is not int or not 0 <= value <= bound:
        raise ParseError(f"{name} must be an integer within 0..{bound}, got {value!r}")
    return value


def _symbol(raw: Any) -> str:
    symbol = _SYMBOLS.get(raw) if type(raw) is str else None
    if symbol is None:
        symbol = _new_symbol(raw)
    return symbol


def _new_symbol(raw: Any) -> str:
    if type(raw) is not str:
        raise ParseError(f"symbol must be a string, got {raw!r}")
    try:
        # normalize_symbol refuses what from_binance lets through (e.g. `E$USDT` -> `E$-USDT`).
        symbol = normalize_symbol(from_binance(raw))
    except InvalidSymbol:
        raise ParseError(f"not a Binance symbol: {raw!r}") from None
    if len(_SYMBOLS) < _MAX_CACHED:  # bounded: symbols come from the network
        _SYMBOLS[raw] = symbol
    return symbol


_SYMBOLS: dict[str, str] = {}
_MAX_CACHED: Final = 4096


_Builder = Callable[[dict[str, Any], Market, str, int, "str | None"], BinanceEvent]
_BUILDERS: Final[dict[str, _Builder]] = {_TRADE: _trade, _DEPTH: _depth, _TICKER: _ticker, _SNAPSHOT: _snapshot}
