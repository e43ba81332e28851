"""Kraken in the exchange double: the public WebSocket API **v2** (`wss://ws.kraken.com/v2`, the one
ccxt.pro's `kraken` uses for `watch_trades`, `watch_order_book` and `watch_ticker`) and the public REST
API (`https://api.kraken.com/0/public/...`), played from cryptofeed's 2021 captures of the WebSocket
**v1** API (`KRAKEN.ws.48.0` trade, `.49.0` ticker, `.50.0` book-1000) and its REST `AssetPairs` body
(`KRAKEN.0`).

What is translated from v1 to v2:
- pair names: v1 `XBT/CHF` becomes v2 `BTC/CHF` (and `XDG` becomes `DOGE`), as ccxt's markets spell them;
- trades: `[price, volume, time, side, type, misc]` rows become `trade` channel updates; v1 trades have
  no id, so each recorded trade gets `trade_id` 1, 2, 3... per pair in recording order, the same id
  that REST `Trades` carries as the 7th element of its row;
- book: the v1 book is kept at its recorded depth (1000) and every subscription gets its own depth view
  (10 by default): a v2 snapshot of the top levels, then updates that keep exactly that view, as
  Kraken does (levels entering the view after a delete are sent; levels pushed out by an insert are
  not, the client truncates). Prices and quantities carry the pair's precision on the wire
  (`pair_decimals`, `lot_decimals`), and `checksum` is Kraken's v2 CRC32 of the top 10 levels;
- ticker: v1 24h fields become the v2 `ticker` fields;
- heartbeats: the book connection's v1 heartbeats become `{"channel": "heartbeat"}`.

REST serves `AssetPairs` (recorded; `status: online` added where the 2021 body has none, as the
current API has it, so ccxt marks the markets active), `Assets` (derived from the pairs, for
`load_markets`), `Trades` (the trades played so far, honouring `since` and `count`), `Depth`, `Time`,
`SystemStatus` and `OHLC` (the candle history of `ohlcv.py`, at most the latest 720 bars as Kraken).
"""

from __future__ import annotations

import logging
import re
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from sortedcontainers import SortedDict

from infra.dev.exchange_double.ohlcv import Print
from infra.dev.exchange_double.server import Connection, Recorded, VenueDouble

log = logging.getLogger(__name__)

ASSET_PAIRS_FILE = "KRAKEN.0"
TRADE_FILE = "KRAKEN.ws.48.0"
TICKER_FILE = "KRAKEN.ws.49.0"
BOOK_FILE = "KRAKEN.ws.50.0"

RECORDED_BOOK_DEPTH = 1000  # the captures subscribed `book` with depth 1000
BOOK_DEPTHS = (10, 25, 100, 500, 1000)  # what v2 accepts; 10 when the client names none
DEFAULT_BOOK_DEPTH = 10
CHECKSUM_LEVELS = 10  # Kraken's checksum covers the top 10 levels whatever the depth
TRADE_SNAPSHOT_SIZE = 50
REST_TRADES_MAX = 1000
REST_DEPTH_DEFAULT = 100
OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)  # minutes
OHLC_MAX_BARS = 720  # OHLC serves the latest 720 bars at most, whatever `since` asks for
NS_SINCE_THRESHOLD = 10**12  # REST `since` this large is a `last` cursor in ns, smaller is seconds

# v1 (and REST wsname) asset names that v2 spells differently
V2_ASSET_NAMES = {"XBT": "BTC", "XDG": "DOGE"}

_TIMESTAMP = re.compile(r"^\d+(\.\d+)?$")


# ---- the recording ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One tradable pair under all the names Kraken gives it."""

    key: str  # REST result key, `XXMRZUSD`
    altname: str  # `XMRUSD`
    wsname: str  # WebSocket v1 name, `XBT/CHF`
    symbol: str  # WebSocket v2 name, `BTC/CHF` (ccxt's unified symbol)
    price_decimals: int
    qty_decimals: int

    def price(self, value: Decimal) -> str:
        return f"{value:.{self.price_decimals}f}"

    def qty(self, value: Decimal) -> str:
        return f"{value:.{self.qty_decimals}f}"


@dataclass(frozen=True)
class TradeRow:
    """One recorded trade; `price`, `qty` and `time` are the v1 strings, kept exact for REST."""

    trade_id: int
    price: str
    qty: str
    time: str  # epoch seconds, `1618678142.557535`
    side: str  # `b` or `s`
    order_type: str  # `l` or `m`
    misc: str

    @property
    def time_ns(self) -> int:
        return int(Decimal(self.time) * 1_000_000_000)


@dataclass(frozen=True)
class TradeBatch:
    symbol: str
    rows: tuple[TradeRow, ...]


@dataclass(frozen=True)
class BookLevel:
    price: Decimal
    qty: Decimal  # 0 deletes the level
    time: str  # epoch seconds of the level's last change


@dataclass(frozen=True)
class BookChange:
    """A v1 book message: the full recorded book (`as`/`bs`) or changed levels (`a`/`b`)."""

    symbol: str
    snapshot: bool
    asks: tuple[BookLevel, ...]
    bids: tuple[BookLevel, ...]


@dataclass(frozen=True)
class TickerUpdate:
    symbol: str
    fields: dict[str, Any]  # v1 ticker payload


@dataclass(frozen=True)
class Heartbeat:
    pass


Event = TradeBatch | BookChange | TickerUpdate | Heartbeat


@dataclass
class KrakenRecorded(Recorded):
    """A recorded v1 frame (`message`, as Kraken sent it) with what it means, parsed once at load."""

    event: Event | None = None


def read_capture(path: Path) -> Iterator[tuple[int, Any]]:
    """The messages a cryptofeed capture received, with their receive time in ns. Lines for what the
    client sent, connection openings and the configuration have no bare timestamp before `: `."""
    with path.open() as f:
        for line in f:
            head, sep, body = line.partition(": ")
            if sep and _TIMESTAMP.match(head):
                yield epoch_ns(head), orjson.loads(body)


def read_asset_pairs(path: Path) -> dict[str, Any]:
    """The recorded `GET /0/public/AssetPairs` body."""
    with path.open() as f:
        for line in f:
            url, sep, rest = line.partition(" -> ")
            if sep and url.endswith("/0/public/AssetPairs"):
                return dict(orjson.loads(rest.partition(": ")[2]))
    raise ValueError(f"{path}: no AssetPairs response recorded")


def pairs_from_asset_pairs(result: dict[str, Any]) -> dict[str, Pair]:
    """Pairs by v2 symbol; pairs without a `wsname` are not on the WebSocket API and are left out."""
    pairs: dict[str, Pair] = {}
    for key, info in result.items():
        wsname = info.get("wsname")
        if not wsname:
            continue
        pair = Pair(
            key=key,
            altname=info["altname"],
            wsname=wsname,
            symbol=v2_symbol(wsname),
            price_decimals=int(info["pair_decimals"]),
            qty_decimals=int(info["lot_decimals"]),
        )
        pairs[pair.symbol] = pair
    return pairs


def v2_symbol(wsname: str) -> str:
    return "/".join(V2_ASSET_NAMES.get(part, part) for part in wsname.split("/"))


def epoch_ns(seconds: str) -> int:
    return int(Decimal(seconds) * 1_000_000_000)


def rfc3339(seconds: Decimal) -> str:
    """Epoch seconds as v2 writes times, `2021-04-17T16:49:02.557535Z`, without float rounding."""
    micros = int(seconds * 1_000_000)
    moment = datetime.fromtimestamp(micros // 1_000_000, tz=UTC).replace(microsecond=micros % 1_000_000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_trades(message: list[Any], symbol: str, next_id: int) -> TradeBatch:
    rows = tuple(
        TradeRow(next_id + i, price, qty, time, side, order_type, misc)
        for i, (price, qty, time, side, order_type, misc, *_) in enumerate(message[1])
    )
    return TradeBatch(symbol, rows)


def parse_book(message: list[Any], symbol: str) -> BookChange:
    """v1 book payloads sit between the channel id and the channel name, one or two objects."""
    snapshot = any("as" in part or "bs" in part for part in message[1:-2])
    asks: list[BookLevel] = []
    bids: list[BookLevel] = []
    for part in message[1:-2]:
        for key, side in (("as", asks), ("bs", bids), ("a", asks), ("b", bids)):
            side.extend(BookLevel(Decimal(lvl[0]), Decimal(lvl[1]), lvl[2]) for lvl in part.get(key, ()))
    return BookChange(symbol, snapshot, tuple(asks), tuple(bids))


# ---- the exchange's book ----------------------------------------------------------------------


class BookSide:
    """One side of a pair's book, best level first."""

    def __init__(self, descending: bool) -> None:
        self._levels: SortedDict = SortedDict(_negate) if descending else SortedDict()

    def __len__(self) -> int:
        return len(self._levels)

    def __contains__(self, price: Decimal) -> bool:
        return price in self._levels

    def clear(self) -> None:
        self._levels.clear()

    def set(self, level: BookLevel) -> None:
        if level.qty == 0:
            self._levels.pop(level.price, None)
        else:
            self._levels[level.price] = level

    def top(self, n: int) -> dict[Decimal, BookLevel]:
        return dict(islice(self._levels.items(), n))

    def truncate(self, n: int) -> None:
        # the client of a depth-n feed must drop what falls out of it: Kraken sends no delete for those
        while len(self._levels) > n:
            self._levels.popitem(-1)


def _negate(price: Decimal) -> Decimal:
    return -price


class PairBook:
    """The exchange's book of one pair, at the recorded depth. `seq` counts the recorded messages
    applied, so a subscription knows which updates its snapshot already holds."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.asks = BookSide(descending=False)
        self.bids = BookSide(descending=True)
        self.ready = False  # the recorded snapshot has been played
        self.seq = 0

    def apply(self, change: BookChange) -> None:
        if change.snapshot:
            self.asks.clear()
            self.bids.clear()
            self.ready = True
        for level in change.asks:
            self.asks.set(level)
        for level in change.bids:
            self.bids.set(level)
        self.asks.truncate(RECORDED_BOOK_DEPTH)
        self.bids.truncate(RECORDED_BOOK_DEPTH)
        self.seq += 1

    def checksum(self) -> int:
        """Kraken's v2 checksum: top 10 asks low to high, then top 10 bids high to low, each level as
        price then qty written at the pair's precision without the dot and leading zeros, CRC32."""
        parts = [
            self._digits(self.pair.price(level.price)) + self._digits(self.pair.qty(level.qty))
            for side in (self.asks, self.bids)
            for level in side.top(CHECKSUM_LEVELS).values()
        ]
        return zlib.crc32("".join(parts).encode())

    @staticmethod
    def _digits(text: str) -> str:
        return text.replace(".", "").lstrip("0")


def book_side_update(
    before: dict[Decimal, BookLevel], after: dict[Decimal, BookLevel], full: BookSide
) -> list[BookLevel]:
    """What a depth-n subscriber is sent for one side: levels new or changed in its view, and a
    zero for levels deleted from it. Levels pushed out of the view are not sent (it truncates)."""
    changed = [level for price, level in after.items() if before.get(price) != level]
    deleted = [
        BookLevel(price, Decimal(0), level.time)
        for price, level in before.items()
        if price not in after and price not in full
    ]
    return deleted + changed


# ---- v2 frames --------------------------------------------------------------------------------


def _number(text: str) -> orjson.Fragment:
    # v2 puts full-precision numbers on the wire (`0.10000000`): a float would drop the zeros the
    # checksum is computed over
    return orjson.Fragment(text.encode())


def book_levels_json(pair: Pair, levels: Iterable[BookLevel]) -> list[dict[str, Any]]:
    return [{"price": _number(pair.price(lvl.price)), "qty": _number(pair.qty(lvl.qty))} for lvl in levels]


def book_snapshot_frame(book: PairBook, depth: int) -> dict[str, Any]:
    pair = book.pair
    return {
        "channel": "book",
        "type": "snapshot",
        "data": [
            {
                "symbol": pair.symbol,
                "bids": book_levels_json(pair, book.bids.top(depth).values()),
                "asks": book_levels_json(pair, book.asks.top(depth).values()),
                "checksum": book.checksum(),
            }
        ],
    }


def book_update_frame(book: PairBook, asks: list[BookLevel], bids: list[BookLevel]) -> dict[str, Any]:
    pair = book.pair
    latest = max(Decimal(level.time) for level in (*asks, *bids))
    return {
        "channel": "book",
        "type": "update",
        "data": [
            {
                "symbol": pair.symbol,
                "bids": book_levels_json(pair, bids),
                "asks": book_levels_json(pair, asks),
                "checksum": book.checksum(),
                "timestamp": rfc3339(latest),
            }
        ],
    }


def trade_frame(pair: Pair, rows: Iterable[TradeRow], kind: str = "update") -> dict[str, Any]:
    return {
        "channel": "trade",
        "type": kind,
        "data": [
            {
                "symbol": pair.symbol,
                "side": "buy" if row.side == "b" else "sell",
                "price": _number(pair.price(Decimal(row.price))),
                "qty": _number(pair.qty(Decimal(row.qty))),
                "ord_type": "limit" if row.order_type == "l" else "market",
                "trade_id": row.trade_id,
                "timestamp": rfc3339(Decimal(row.time)),
            }
            for row in rows
        ],
    }


def ticker_frame(pair: Pair, v1: dict[str, Any], kind: str = "update") -> dict[str, Any]:
    """v1 keeps [today, last 24h] pairs; v2 reports the rolling 24h values."""
    last = Decimal(v1["c"][0])
    opened = Decimal(v1["o"][1])
    change = last - opened
    change_pct = (change / opened * 100).quantize(Decimal("0.01")) if opened else Decimal(0)
    return {
        "channel": "ticker",
        "type": kind,
        "data": [
            {
                "symbol": pair.symbol,
                "bid": _number(pair.price(Decimal(v1["b"][0]))),
                "bid_qty": _number(pair.qty(Decimal(v1["b"][2]))),
                "ask": _number(pair.price(Decimal(v1["a"][0]))),
                "ask_qty": _number(pair.qty(Decimal(v1["a"][2]))),
                "last": _number(pair.price(last)),
                "volume": _number(pair.qty(Decimal(v1["v"][1]))),
                "vwap": _number(pair.price(Decimal(v1["p"][1]))),
                "low": _number(pair.price(Decimal(v1["l"][1]))),
                "high": _number(pair.price(Decimal(v1["h"][1]))),
                "change": _number(pair.price(change)),
                "change_pct": _number(f"{change_pct:.2f}"),
            }
        ],
    }


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- the venue --------------------------------------------------------------------------------


@dataclass
class BookSubscription:
    depth: int
    seq: int = -1  # the book's seq its snapshot showed; -1 until it has one


@dataclass
class ConnectionState:
    books: dict[str, BookSubscription] = field(default_factory=dict)


class KrakenDouble(VenueDouble):
    """Kraken's public WebSocket v2 at `/v2` and public REST at `/0/public/*`, from the v1 captures
    in `data_dir` (cryptofeed's `KRAKEN.*` files)."""

    name = "kraken"

    def __init__(self, data_dir: Path, speed: float | None = None) -> None:
        super().__init__(speed)
        self.data_dir = Path(data_dir)
        self.asset_pairs = read_asset_pairs(self.data_dir / ASSET_PAIRS_FILE)
        self.pairs = pairs_from_asset_pairs(self.asset_pairs["result"])
        self._pairs_by_v1 = {p.wsname: p for p in self.pairs.values()}
        self._pairs_by_rest = {name: p for p in self.pairs.values() for name in (p.key, p.altname, p.wsname)}
        self.books: dict[str, PairBook] = {}
        self.trades: dict[str, list[TradeRow]] = {}  # played so far, per v2 symbol
        self.tickers: dict[str, dict[str, Any]] = {}  # the latest v1 ticker payload played
        self.clock_ns = 0  # the exchange's now: the receive time of the last frame played
        self._states: weakref.WeakKeyDictionary[Connection, ConnectionState] = weakref.WeakKeyDictionary()
        self._connection_ids = 0
        # depth -> the update frame of the book message being sent now (None: nothing in that view)
        self._book_updates: dict[int, dict[str, Any] | None] = {}

    # ---- the recording ----------------------------------------------------------------------

    def load(self) -> Iterable[Recorded]:
        frames: list[KrakenRecorded] = []
        frames += self._load_trades()
        frames += self._load_channel(TICKER_FILE, "ticker", lambda m, s: TickerUpdate(s, m[1]))
        frames += self._load_channel(BOOK_FILE, "book", lambda m, s: parse_book(m, s))
        frames += self._load_heartbeats(BOOK_FILE)
        frames.sort(key=lambda rec: rec.ts_ns)  # stable: one connection's frames keep their order
        if frames:
            self.clock_ns = frames[0].ts_ns
        return frames

    def _load_trades(self) -> Iterator[KrakenRecorded]:
        played: dict[str, int] = {}  # trades per pair so far: the next id is one more
        for ts_ns, message in read_capture(self.data_dir / TRADE_FILE):
            pair = self._v1_data_pair(message, "trade")
            if pair is None:
                continue
            batch = parse_trades(message, pair.symbol, played.get(pair.symbol, 0) + 1)
            played[pair.symbol] = played.get(pair.symbol, 0) + len(batch.rows)
            yield KrakenRecorded(ts_ns, f"trade:{pair.symbol}", message, event=batch)

    def _load_channel(
        self, file: str, channel: str, parse: Callable[[list[Any], str], Event]
    ) -> Iterator[KrakenRecorded]:
        for ts_ns, message in read_capture(self.data_dir / file):
            pair = self._v1_data_pair(message, channel)
            if pair is None:
                continue
            event = parse(message, pair.symbol)
            is_update = isinstance(event, BookChange) and not event.snapshot
            yield KrakenRecorded(ts_ns, f"{channel}:{pair.symbol}", message, is_update, event)

    def _load_heartbeats(self, file: str) -> Iterator[KrakenRecorded]:
        for ts_ns, message in read_capture(self.data_dir / file):
            if isinstance(message, dict) and message.get("event") == "heartbeat":
                yield KrakenRecorded(ts_ns, "heartbeat", message, event=Heartbeat())

    def _v1_data_pair(self, message: Any, channel: str) -> Pair | None:
        """The pair of a v1 data message `[channelID, payload..., channelName, pair]` of `channel`
        (`book-1000` for book); events (`heartbeat`, `subscriptionStatus`...) are objects."""
        if not isinstance(message, list) or len(message) < 4 or not str(message[-2]).startswith(channel):
            return None
        pair = self._pairs_by_v1.get(message[-1])
        if pair is None:
            log.warning("kraken double: %s is not in the recorded AssetPairs", message[-1])
        return pair

    # ---- the exchange's state ---------------------------------------------------------------

    def apply(self, rec: Recorded) -> None:
        self.clock_ns = rec.ts_ns
        event = rec.event if isinstance(rec, KrakenRecorded) else None
        if isinstance(event, TradeBatch):
            self.trades.setdefault(event.symbol, []).extend(event.rows)
        elif isinstance(event, TickerUpdate):
            self.tickers[event.symbol] = event.fields
        elif isinstance(event, BookChange):
            self._apply_book(event, rec.channel)

    def _apply_book(self, change: BookChange, channel: str) -> None:
        book = self.books.get(change.symbol)
        if book is None:
            book = self.books[change.symbol] = PairBook(self.pairs[change.symbol])
        if change.snapshot:
            book.apply(change)
            self._book_updates = {}
            return
        # each depth in use sees its own part of the change: compare its view before and after
        depths = self._depths_in_use(channel, change.symbol)
        before = {d: (book.asks.top(d), book.bids.top(d)) for d in depths}
        book.apply(change)
        self._book_updates = {}
        for depth, (asks_before, bids_before) in before.items():
            asks = book_side_update(asks_before, book.asks.top(depth), book.asks)
            bids = book_side_update(bids_before, book.bids.top(depth), book.bids)
            self._book_updates[depth] = book_update_frame(book, asks, bids) if asks or bids else None

    def _depths_in_use(self, channel: str, symbol: str) -> set[int]:
        return {
            state.books[symbol].depth
            for conn, state in self._states.items()
            if channel in conn.channels and symbol in state.books
        }

    def _anyone_listens(self, rec: Recorded) -> bool:
        """Whether dropping `rec` loses anything (the `skip` fault drops the next book update that
        does). A v1 update can change nothing inside the depth subscribers watch (a third of the
        recorded ones do not reach the top 10); skipping such a message would be no gap at all."""
        if not super()._anyone_listens(rec):
            return False
        if isinstance(rec, KrakenRecorded) and isinstance(rec.event, BookChange) and not rec.event.snapshot:
            return any(frame is not None for frame in self._book_updates.values())
        return True

    def _state(self, conn: Connection) -> ConnectionState:
        state = self._states.get(conn)
        if state is None:
            state = self._states[conn] = ConnectionState()
        return state

    # ---- what each connection is sent ---------------------------------------------------------

    def frames_for(self, conn: Connection, rec: Recorded) -> Iterator[Any]:
        event = rec.event if isinstance(rec, KrakenRecorded) else None
        if isinstance(event, Heartbeat):
            if conn.channels:  # Kraken beats only on connections that subscribed to something
                yield {"channel": "heartbeat"}
            return
        if rec.channel not in conn.channels:
            return
        if isinstance(event, TradeBatch):
            yield trade_frame(self.pairs[event.symbol], event.rows)
        elif isinstance(event, TickerUpdate):
            yield ticker_frame(self.pairs[event.symbol], event.fields)
        elif isinstance(event, BookChange):
            yield from self._book_frames(conn, event)

    def _book_frames(self, conn: Connection, change: BookChange) -> Iterator[Any]:
        book = self.books[change.symbol]
        sub = self._state(conn).books.get(change.symbol)
        if sub is None or sub.seq >= book.seq:
            return  # its snapshot, taken while this message was being sent, already holds it
        if change.snapshot:
            sub.seq = book.seq
            yield book_snapshot_frame(book, sub.depth)
            return
        frame = self._book_updates.get(sub.depth)
        if frame is not None:
            yield frame

    # ---- the client's messages ----------------------------------------------------------------

    async def on_connect(self, conn: Connection) -> None:
        self._connection_ids += 1
        await conn.send_json(
            {
                "channel": "status",
                "type": "update",
                "data": [
                    {"version": "2.0.0", "system": "online", "api_version": "v2", "connection_id": self._connection_ids}
                ],
            }
        )

    async def on_client_message(self, conn: Connection, message: Any) -> None:
        time_in = now_rfc3339()
        if not isinstance(message, dict):
            await conn.send_json(_error_reply(None, message, "Malformed request", time_in))
            return
        method = message.get("method")
        if method == "ping":
            await conn.send_json(_reply(message, {"method": "pong"}, time_in))
        elif method == "subscribe":
            await self._subscribe(conn, message, time_in)
        elif method == "unsubscribe":
            await self._unsubscribe(conn, message, time_in)
        else:
            await conn.send_json(_error_reply(method, message, f"Method not found: {method}", time_in))

    async def _subscribe(self, conn: Connection, message: dict[str, Any], time_in: str) -> None:
        params = message.get("params") or {}
        channel = params.get("channel")
        symbols = params.get("symbol") or []
        if channel not in ("book", "trade", "ticker"):
            await conn.send_json(_error_reply("subscribe", message, f"Channel {channel} not found", time_in))
            return
        depth = params.get("depth", DEFAULT_BOOK_DEPTH)
        if channel == "book" and depth not in BOOK_DEPTHS:
            await conn.send_json(_error_reply("subscribe", message, "Subscription depth not supported", time_in))
            return
        # v2 defaults: a book or ticker subscription starts with a snapshot, a trade one does not
        snapshot = bool(params.get("snapshot", channel != "trade"))
        for symbol in symbols:
            pair = self.pairs.get(symbol)
            if pair is None:
                reply = _error_reply("subscribe", message, f"Currency pair not supported {symbol}", time_in)
                await conn.send_json({**reply, "symbol": symbol})
                continue
            result: dict[str, Any] = {"channel": channel, "snapshot": snapshot, "symbol": symbol}
            if channel == "book":
                result["depth"] = depth
            await conn.send_json(_reply(message, {"method": "subscribe", "result": result, "success": True}, time_in))
            conn.channels.add(f"{channel}:{symbol}")
            await self._send_snapshot(conn, channel, pair, depth, snapshot)

    async def _send_snapshot(self, conn: Connection, channel: str, pair: Pair, depth: int, wanted: bool) -> None:
        if channel == "book":
            book = self.books.get(pair.symbol)
            sub = self._state(conn).books[pair.symbol] = BookSubscription(depth)
            # a re-subscription (after a checksum failure) gets the book as it is now; before the
            # recorded snapshot has played there is no book yet, and the snapshot follows when it does
            if book is not None and book.ready and wanted:
                sub.seq = book.seq
                await conn.send_json(book_snapshot_frame(book, depth))
        elif channel == "trade" and wanted and self.trades.get(pair.symbol):
            rows = self.trades[pair.symbol][-TRADE_SNAPSHOT_SIZE:]
            await conn.send_json(trade_frame(pair, rows, "snapshot"))
        elif channel == "ticker" and wanted and pair.symbol in self.tickers:
            await conn.send_json(ticker_frame(pair, self.tickers[pair.symbol], "snapshot"))

    async def _unsubscribe(self, conn: Connection, message: dict[str, Any], time_in: str) -> None:
        params = message.get("params") or {}
        channel = params.get("channel")
        for symbol in params.get("symbol") or []:
            key = f"{channel}:{symbol}"
            if key not in conn.channels:
                reply = _error_reply("unsubscribe", message, "Subscription Not Found", time_in)
                await conn.send_json({**reply, "symbol": symbol})
                continue
            conn.channels.discard(key)
            if channel == "book":
                self._state(conn).books.pop(symbol, None)
            result = {"channel": channel, "symbol": symbol}
            await conn.send_json(_reply(message, {"method": "unsubscribe", "result": result, "success": True}, time_in))

    # ---- REST ---------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2", self.websocket),
            web.get("/0/public/AssetPairs", self._rest_asset_pairs),
            web.get("/0/public/Assets", self._rest_assets),
            web.get("/0/public/Trades", self._rest_trades),
            web.get("/0/public/Depth", self._rest_depth),
            web.get("/0/public/Time", self._rest_time),
            web.get("/0/public/OHLC", self._rest_ohlc),
            web.get("/0/public/SystemStatus", self._rest_system_status),
        ]

    async def _rest_asset_pairs(self, request: web.Request) -> web.Response:
        recorded: dict[str, Any] = self.asset_pairs["result"]
        wanted = request.query.get("pair")
        keys = list(recorded) if not wanted else [self._rest_key(name) for name in wanted.split(",")]
        if None in keys:
            return _rest_error("EQuery:Unknown asset pair")
        # the 2021 body predates `status`; ccxt marks a market active only if it says `online`
        return _rest_ok({key: {"status": "online", **recorded[key]} for key in keys if key})

    def _rest_key(self, name: str) -> str | None:
        if name in self.asset_pairs["result"]:
            return name
        pair = self._pairs_by_rest.get(name)
        return pair.key if pair else None

    async def _rest_assets(self, request: web.Request) -> web.Response:
        return _rest_ok(assets_from_asset_pairs(self.asset_pairs["result"]))

    async def _rest_trades(self, request: web.Request) -> web.Response:
        pair = self._pairs_by_rest.get(request.query.get("pair", ""))
        if pair is None:
            return _rest_error("EQuery:Unknown asset pair")
        try:
            since = Decimal(request.query.get("since", "0"))
            count = min(int(request.query.get("count", REST_TRADES_MAX)), REST_TRADES_MAX)
        except (InvalidOperation, ValueError):
            return _rest_error("EGeneral:Invalid arguments")
        rows = self._trades_since(pair.symbol, since)[:count]
        last = rows[-1].time_ns if rows else self.clock_ns  # nothing newer: the cursor is now
        return _rest_ok({pair.key: [rest_trade_row(row) for row in rows], "last": str(last)})

    def _trades_since(self, symbol: str, since: Decimal) -> list[TradeRow]:
        """`since` in seconds includes its own instant (ccxt floors its ms to seconds); a `last`
        cursor in ns excludes it, so paging with it does not repeat the last trade."""
        rows = self.trades.get(symbol, [])
        if since >= NS_SINCE_THRESHOLD:
            return [row for row in rows if row.time_ns > since]
        since_ns = int(since * 1_000_000_000)
        return [row for row in rows if row.time_ns >= since_ns]

    async def _rest_depth(self, request: web.Request) -> web.Response:
        pair = self._pairs_by_rest.get(request.query.get("pair", ""))
        if pair is None:
            return _rest_error("EQuery:Unknown asset pair")
        try:
            count = int(request.query.get("count", REST_DEPTH_DEFAULT)) or RECORDED_BOOK_DEPTH
        except ValueError:
            return _rest_error("EGeneral:Invalid arguments")
        book = self.books.get(pair.symbol)
        asks = book.asks.top(count).values() if book else ()
        bids = book.bids.top(count).values() if book else ()
        return _rest_ok(
            {
                pair.key: {
                    "asks": [rest_book_row(pair, lvl) for lvl in asks],
                    "bids": [rest_book_row(pair, lvl) for lvl in bids],
                }
            }
        )

    async def _rest_ohlc(self, request: web.Request) -> web.Response:
        """`OHLC`: `pair`, `interval` (minutes), `since` (seconds, exclusive). As the venue: at
        most the latest 720 bars, whatever `since` asks for; the last one is the bar still open.
        Rows `[time, open, high, low, close, vwap, volume, count]`."""
        pair = self._pairs_by_rest.get(request.query.get("pair", ""))
        if pair is None:
            return _rest_error("EQuery:Unknown asset pair")
        try:
            minutes = int(request.query.get("interval", "1"))
            since_s = int(Decimal(request.query.get("since", "0")))
        except (InvalidOperation, ValueError):
            return _rest_error("EGeneral:Invalid arguments")
        if minutes not in OHLC_INTERVALS:
            return _rest_error("EGeneral:Invalid arguments:interval")
        step_ms = minutes * 60_000
        now_ms = self.clock_ns // 1_000_000
        oldest = now_ms - now_ms % step_ms - (OHLC_MAX_BARS - 1) * step_ms
        rows = self.ohlcv(pair.symbol, step_ms, max((since_s + 1) * 1000, oldest), now_ms + 1)
        if rows is None:
            return web.Response(body=orjson.dumps({"error": ["EAPI:Rate limit exceeded"]}), status=429,
                                content_type="application/json")
        body = [[t // 1000, o, h, lo, c, c, v, 1] for t, o, h, lo, c, v in rows]
        return _rest_ok({pair.key: body, "last": rows[-1][0] // 1000 if rows else since_s})

    def venue_time_ns(self) -> int:
        return self.clock_ns

    def recorded_prints(self, symbol: str) -> list[Print]:
        if not self.recording:
            self.recording = list(self.load())
        return [_print(row) for r in self.recording
                if isinstance(r, KrakenRecorded) and isinstance(r.event, TradeBatch) and r.event.symbol == symbol
                for row in r.event.rows]

    def played_prints(self, symbol: str) -> list[Print]:
        return [_print(row) for row in self.trades.get(symbol, [])]

    async def _rest_time(self, request: web.Request) -> web.Response:
        seconds = self.clock_ns // 1_000_000_000
        moment = datetime.fromtimestamp(seconds, tz=UTC)
        return _rest_ok({"unixtime": seconds, "rfc1123": moment.strftime("%a, %d %b %y %H:%M:%S +0000")})

    async def _rest_system_status(self, request: web.Request) -> web.Response:
        moment = datetime.fromtimestamp(self.clock_ns // 1_000_000_000, tz=UTC)
        return _rest_ok({"status": "online", "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%SZ")})


# ---- REST bodies ----------------------------------------------------------------------------


def _print(row: TradeRow) -> Print:
    return row.time_ns, Decimal(row.price), Decimal(row.qty)


def rest_trade_row(row: TradeRow) -> list[Any]:
    """`[price, volume, time, side, type, misc, trade_id]`, as the current API writes a row."""
    return [row.price, row.qty, _number(row.time), row.side, row.order_type, row.misc, row.trade_id]


def rest_book_row(pair: Pair, level: BookLevel) -> list[Any]:
    return [pair.price(level.price), pair.qty(level.qty), int(Decimal(level.time))]


def assets_from_asset_pairs(result: dict[str, Any]) -> dict[str, Any]:
    """`/0/public/Assets` for every asset the pairs name. Its altname is the pair's wsname half
    (`XXBT` -> `XBT`), which is what ccxt maps to its codes; 10 decimals, as Kraken gives crypto,
    so the currency never coarsens ccxt's market amount precision."""
    assets: dict[str, Any] = {}
    for info in result.values():
        wsname = info.get("wsname")
        if not wsname or "/" not in wsname:
            continue
        for asset_id, altname in zip((info["base"], info["quote"]), wsname.split("/"), strict=True):
            assets.setdefault(
                asset_id,
                {"aclass": "currency", "altname": altname, "decimals": 10, "display_decimals": 5, "status": "enabled"},
            )
    return assets


def _rest_ok(result: Any) -> web.Response:
    return web.Response(body=orjson.dumps({"error": [], "result": result}), content_type="application/json")


def _rest_error(error: str) -> web.Response:
    return web.Response(body=orjson.dumps({"error": [error]}), content_type="application/json")


def _reply(request: dict[str, Any], body: dict[str, Any], time_in: str) -> dict[str, Any]:
    reply = {**body, "time_in": time_in, "time_out": now_rfc3339()}
    if "req_id" in request:
        reply["req_id"] = request["req_id"]
    return reply


def _error_reply(method: Any, request: Any, error: str, time_in: str) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error, "success": False}
    if method is not None:
        body["method"] = method
    return _reply(request if isinstance(request, dict) else {}, body, time_in)
