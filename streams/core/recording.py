"""Recordings of live feeds: which file a raw frame goes to, and how its line is written. Pure.

A recording is what `entasis connect --record DIR` writes: every WebSocket frame a live
connector received, as the venue sent it, one line each:

    <recv_ns> <frame>\\n

`recv_ns` is our receive time (Unix ns, decimal) and `frame` the frame's text unchanged (a
frame holding a newline, which no venue sends, is re-serialised as compact JSON so that one
line stays one frame). This is the line format of the Binance captures (`streams.ingest.replay`),
so one reader serves both.

Files are gzip, one per venue, symbol and UTC day of receive time:

    <venue>_<symbol>_<YYYYMMDD>.gz      binance_btc-usdt_20261203.gz, kraken_xmr-usd_20261203.gz
    <venue>_venue_<YYYYMMDD>.gz         frames of several symbols or of none (acks, heartbeats)

The symbol is ours (`BASE-QUOTE`), lower case; the venue our venue name (`binance-usdm`). The
symbol slot of a capture of the older Binance layout (`spot_ethusdt_...`) never holds a `-`, so
the two namings cannot be confused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from schemas.symbols import InvalidSymbol, normalize_symbol
from streams.core.venues.binance import from_binance
from streams.core.venues.contract import from_ccxt_symbol

VENUE_FILE: Final = "venue"  # the symbol slot of the file of frames that name no single symbol
_NS_PER_S: Final = 1_000_000_000

RECORDING_NAME: Final = re.compile(
    r"^(?P<venue>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)_(?P<symbol>[a-z0-9]+-[a-z0-9]+|venue)_(?P<date>\d{8})\.gz$"
)


@dataclass(frozen=True)
class RecordingName:
    venue: str
    symbol: str | None  # ours (`BTC-USDT`); None for the venue file
    date: str  # YYYYMMDD, UTC


def utc_day(recv_ns: int) -> str:
    """`YYYYMMDD` of a receive time: files rotate at UTC midnight."""
    return datetime.fromtimestamp(recv_ns // _NS_PER_S, UTC).strftime("%Y%m%d")


def file_name(venue: str, symbol: str | None, recv_ns: int) -> str:
    slot = VENUE_FILE if symbol is None else symbol.lower()
    return f"{venue}_{slot}_{utc_day(recv_ns)}.gz"


def parse_file_name(name: str) -> RecordingName | None:
    """The parts of a recording's file name, or None for any other name."""
    match = RECORDING_NAME.match(name)
    if match is None:
        return None
    slot = match["symbol"]
    symbol = None if slot == VENUE_FILE else slot.upper()
    return RecordingName(match["venue"], symbol, match["date"])


def line(recv_ns: int, frame: bytes | bytearray | str) -> bytes:
    """One recorded line, newline included."""
    body = frame.encode() if isinstance(frame, str) else bytes(frame)
    if b"\n" in body or b"\r" in body:
        try:
            body = orjson.dumps(orjson.loads(body))
        except orjson.JSONDecodeError:
            # not JSON (a malformed frame): still one line, the escapes say where the breaks were
            body = body.replace(b"\\", b"\\\\").replace(b"\r", b"\\r").replace(b"\n", b"\\n")
    return b"%d %s\n" % (recv_ns, body)


def frame_symbol(venue: str, frame: bytes | bytearray | str) -> str | None:
    """The one symbol (ours) a frame is about, or None when it names several or none (or
    cannot be read): such a frame goes to the venue file."""
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    found = set(_symbols(venue, msg))
    return found.pop() if len(found) == 1 else None


def _symbols(venue: str, msg: Any) -> Iterable[str]:
    if venue.startswith("binance"):
        return _binance_symbols(msg)
    if venue == "coinbase":
        return _coinbase_symbols(msg)
    if venue == "kraken":
        return _kraken_symbols(msg)
    return ()


def _ours(raw: Any, convert: Any) -> str | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return str(convert(raw))
    except (InvalidSymbol, ValueError):
        return None


def _binance_symbols(msg: Any) -> Iterable[str]:
    """Binance payloads name their symbol in `s`; a combined-stream envelope wraps one in `data`."""
    items = msg if isinstance(msg, list) else [msg]
    for item in items:
        if not isinstance(item, dict):
            continue
        data = item.get("data", item)
        if isinstance(data, dict):
            symbol = _ours(data.get("s"), from_binance)
            if symbol is None and isinstance(item.get("stream"), str):
                symbol = _ours(item["stream"].split("@", 1)[0], from_binance)
            if symbol is not None:
                yield symbol


def _coinbase_symbols(msg: Any) -> Iterable[str]:
    """Advanced Trade: `events[*]` carry `product_id`, or `trades[*]` / `updates` / `tickers[*]`
    that do."""
    if not isinstance(msg, dict) or not isinstance(msg.get("events"), list):
        return
    for event in msg["events"]:
        if not isinstance(event, dict):
            continue
        inner = [item for name in ("trades", "tickers") if isinstance(event.get(name), list) for item in event[name]]
        for holder in (event, *inner):
            if isinstance(holder, dict):
                symbol = _ours(holder.get("product_id"), normalize_symbol)
                if symbol is not None:
                    yield symbol


def _kraken_symbols(msg: Any) -> Iterable[str]:
    """WebSocket v2: `data[*].symbol` (`BTC/USD`), or `result.symbol` of a subscription ack."""
    if not isinstance(msg, dict):
        return
    data = msg.get("data")
    holders = [*data] if isinstance(data, list) else []
    if isinstance(msg.get("result"), dict):
        holders.append(msg["result"])
    for holder in holders:
        if isinstance(holder, dict):
            symbol = _ours(holder.get("symbol"), from_ccxt_symbol)
            if symbol is not None:
                yield symbol
