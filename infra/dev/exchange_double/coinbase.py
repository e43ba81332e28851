"""Coinbase venue of the exchange double: Coinbase **Advanced Trade** public WebSocket and REST,
as ccxt.pro's `coinbase` class (ccxt 4.5.90) speaks them, fed by a legacy Coinbase Pro capture.

The capture (cryptofeed's `COINBASE.ws.28.0`, `ws-feed.pro.coinbase.com`) predates Advanced
Trade, so every frame is translated when the recording is loaded:

- `snapshot` / `l2update` (level2) -> channel `l2_data`, events of type `snapshot` / `update`
  with `updates: [{side: "bid"|"offer", event_time, price_level, new_quantity}]`;
- `match` -> channel `market_trades`, event `update` with `trades: [{trade_id, product_id,
  price, size, side: "BUY"|"SELL", time}]`; `last_match` (the trade before the capture began)
  -> an event of type `snapshot`, which is how Advanced Trade hands over trade history;
- `ticker` -> channel `ticker`, event `update` with one Advanced Trade ticker;
- the legacy `subscriptions` acks are dropped: the double answers subscriptions itself.

Every message the double sends carries `channel`, `client_id`, `timestamp` and a
`sequence_num` counted per connection, as Advanced Trade does; a book update lost to the
`skip` fault still uses up its number, so the client sees a hole (ccxt 4.5.90 never looks).

The exchange keeps its own book and trade history per product: a level2 subscription gets a
snapshot of the book as it is now (not the capture's first one), a market_trades subscription
gets the latest trades, and REST answers (`market/products`, `market/products/{id}/ticker`,
`market/product_book`, the v2 currency lists) are built from the recorded `/products` body
(`COINBASE.0`) and the frames played so far. Product fields that the 2021 body lacks (names,
24 h statistics) are left empty; USD, EUR and GBP are the fiat currencies.
`market/products/{id}/candles` serves the candle history of `ohlcv.py`.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from aiohttp import web

from infra.dev.exchange_double.ohlcv import Print
from infra.dev.exchange_double.server import Connection, Recorded, VenueDouble

Json = dict[str, Any]

WS_CAPTURE = "COINBASE.ws.28.0"
REST_CAPTURE = "COINBASE.0"
PRODUCTS_URL = "https://api.pro.coinbase.com/products"

# Advanced Trade's name for the outgoing channel of each subscription channel
OUT_CHANNEL: dict[str, str] = {
    "level2": "l2_data",
    "market_trades": "market_trades",
    "ticker": "ticker",
    "heartbeats": "heartbeats",
}
FIAT_NAMES: dict[str, str] = {"USD": "US Dollar", "EUR": "Euro", "GBP": "British Pound"}
LEVEL_SIDES: dict[str, str] = {"buy": "bid", "sell": "offer"}  # legacy change side -> Advanced Trade
GRANULARITY_MINUTES: dict[str, int] = {"ONE_MINUTE": 1, "FIVE_MINUTE": 5, "FIFTEEN_MINUTE": 15, "THIRTY_MINUTE": 30,
                                       "ONE_HOUR": 60, "TWO_HOUR": 120, "SIX_HOUR": 360, "ONE_DAY": 1440}
MAX_CANDLES = 350  # a candles request may span at most this many
SNAPSHOT_EVENT_TIME = "1970-01-01T00:00:00Z"  # what Advanced Trade puts on snapshot levels
TRADES_ON_SUBSCRIBE = 50  # Advanced Trade opens market_trades with the latest trades
HEARTBEAT_INTERVAL_S = 1.0
MAX_REST_TRADES = 1000


# ---- clock -------------------------------------------------------------------------------------


def iso_from_ns(ts_ns: int) -> str:
    """`2021-04-17T16:43:37.118783000Z`: Advanced Trade stamps messages with nanoseconds."""
    seconds, fraction = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def ns_from_iso(text: str) -> int:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return calendar.timegm(parsed.utctimetuple()) * 1_000_000_000 + parsed.microsecond * 1000


def ns_from_epoch_text(text: str) -> int:
    """The capture's `1618677817.118783` receive stamps, read without float rounding."""
    return int(Decimal(text) * 1_000_000_000)


# ---- the captures --------------------------------------------------------------------------------


def read_products(path: Path) -> list[Json]:
    """The recorded `GET /products` body (Coinbase Pro product objects)."""
    prefix = PRODUCTS_URL + " -> "
    with path.open() as f:
        for line in f:
            if line.startswith(prefix):
                _, body = line[len(prefix):].split(": ", 1)
                products: list[Json] = json.loads(body)
                return products
    raise ValueError(f"{path}: no recorded {PRODUCTS_URL} response")


def read_received(path: Path) -> Iterator[tuple[int, Json]]:
    """`<ts>: <json>` lines: what the venue sent. Connection and sent-subscribe lines start
    with the URL, so a leading digit tells the received ones apart."""
    with path.open() as f:
        for line in f:
            if not line[:1].isdigit():
                continue
            stamp, body = line.split(": ", 1)
            yield ns_from_epoch_text(stamp), json.loads(body)


def translate(ts_ns: int, legacy: Json) -> Recorded | None:
    """One legacy Coinbase Pro message as the Advanced Trade event the double will send."""
    kind = legacy.get("type")
    product_id = legacy.get("product_id", "")
    if kind == "snapshot":
        return Recorded(ts_ns, f"level2:{product_id}", snapshot_event(product_id, legacy))
    if kind == "l2update":
        updates = [
            {"side": LEVEL_SIDES[side], "event_time": legacy["time"], "price_level": price, "new_quantity": size}
            for side, price, size in legacy["changes"]
        ]
        event = {"type": "update", "product_id": product_id, "updates": updates}
        return Recorded(ts_ns, f"level2:{product_id}", event, is_book_update=True)
    if kind in ("match", "last_match"):
        # last_match happened before the capture began: history, which Advanced Trade sends as a snapshot
        event = {"type": "snapshot" if kind == "last_match" else "update", "trades": [trade_from_match(legacy)]}
        return Recorded(ts_ns, f"market_trades:{product_id}", event)
    if kind == "ticker":
        return Recorded(ts_ns, f"ticker:{product_id}", {"type": "update", "tickers": [ticker_from_legacy(legacy)]})
    return None


def snapshot_event(product_id: str, legacy: Json) -> Json:
    levels = [("bid", price, size) for price, size in legacy["bids"]]
    levels += [("offer", price, size) for price, size in legacy["asks"]]
    return {"type": "snapshot", "product_id": product_id, "updates": [level(*lv) for lv in levels]}


def level(side: str, price: str, quantity: str) -> Json:
    return {"side": side, "event_time": SNAPSHOT_EVENT_TIME, "price_level": price, "new_quantity": quantity}


def trade_from_match(legacy: Json) -> Json:
    # the side stays the recorded one (Coinbase reports the maker order's side on both feeds)
    return {
        "trade_id": str(legacy["trade_id"]),
        "product_id": legacy["product_id"],
        "price": legacy["price"],
        "size": legacy["size"],
        "side": legacy["side"].upper(),
        "time": legacy["time"],
    }


def ticker_from_legacy(legacy: Json) -> Json:
    return {
        "type": "ticker",
        "product_id": legacy["product_id"],
        "price": legacy.get("price", ""),
        "volume_24_h": legacy.get("volume_24h", ""),
        "low_24_h": legacy.get("low_24h", ""),
        "high_24_h": legacy.get("high_24h", ""),
        "low_52_w": "",
        "high_52_w": "",
        "price_percent_chg_24_h": percent_change(legacy.get("open_24h"), legacy.get("price")),
        "best_bid": legacy.get("best_bid", ""),
        "best_bid_quantity": "",
        "best_ask": legacy.get("best_ask", ""),
        "best_ask_quantity": "",
    }


def percent_change(opened: str | None, last: str | None) -> str:
    try:
        start, end = Decimal(opened or ""), Decimal(last or "")
    except InvalidOperation:
        return ""
    return str((end - start) / start * 100) if start else ""


# ---- the exchange's state ------------------------------------------------------------------------


class Book:
    """One product's book, keyed by Decimal so `0.791` and `0.7910` are one level; the price
    text last seen is what goes back on the wire."""

    def __init__(self) -> None:
        self.sides: dict[str, dict[Decimal, tuple[str, str]]] = {"bid": {}, "offer": {}}

    def set(self, side: str, price: str, quantity: str) -> None:
        if Decimal(quantity) == 0:
            self.sides[side].pop(Decimal(price), None)
        else:
            self.sides[side][Decimal(price)] = (price, quantity)

    def levels(self, side: str, depth: int | None = None) -> list[tuple[str, str]]:
        keys = sorted(self.sides[side], reverse=side == "bid")[:depth]
        return [self.sides[side][k] for k in keys]

    def best(self, side: str) -> tuple[str, str] | None:
        top = self.levels(side, 1)
        return top[0] if top else None


@dataclass
class Trade:
    time_ns: int
    wire: Json  # the Advanced Trade trade object, as sent on market_trades


@dataclass
class Session:
    """What the double remembers about one connection."""

    sequence_num: int = 0
    # subscription key -> how many frames the exchange had applied when the client's opening
    # snapshot was taken: frames up to that one are already in the snapshot and are not resent
    subscribed_at: dict[str, int] = field(default_factory=dict)
    heartbeat_counter: int = 0

    def next_sequence(self) -> int:
        number = self.sequence_num
        self.sequence_num += 1
        return number


class CoinbaseDouble(VenueDouble):
    """Coinbase Advanced Trade, played from the Coinbase Pro capture in `data_dir`."""

    name = "coinbase"

    def __init__(self, data_dir: Path, speed: float | None = None) -> None:
        super().__init__(speed)
        self.data_dir = Path(data_dir)
        self.products: dict[str, Json] = {p["id"]: p for p in read_products(self.data_dir / REST_CAPTURE)}
        self.books: dict[str, Book] = {}
        self.trades: dict[str, list[Trade]] = {}
        self.tickers: dict[str, Json] = {}
        self.applied = 0  # frames applied to the state (the one being sent is included)
        self._now_ns = 0
        self._sessions: weakref.WeakKeyDictionary[Connection, Session] = weakref.WeakKeyDictionary()
        # one writer at a time: subscription snapshots and played frames must reach a client in
        # the order their sequence numbers were given (aiohttp compresses large frames in an
        # executor, which would let a small frame sent later overtake them)
        self._send_lock = asyncio.Lock()
        self._heartbeat_task: asyncio.Task[None] | None = None

    # ---- recording and state ------------------------------------------------------------------

    def load(self) -> Iterable[Recorded]:
        for ts_ns, legacy in read_received(self.data_dir / WS_CAPTURE):
            rec = translate(ts_ns, legacy)
            if rec is not None:
                yield rec

    def apply(self, rec: Recorded) -> None:
        self.applied += 1
        self._now_ns = rec.ts_ns
        kind, _, product_id = rec.channel.partition(":")
        event = rec.message
        if kind == "level2":
            self._apply_book(product_id, event)
        elif kind == "market_trades":
            self._apply_trades(product_id, event["trades"])
        elif kind == "ticker":
            self.tickers[product_id] = event["tickers"][0]

    def _apply_book(self, product_id: str, event: Json) -> None:
        if event["type"] == "snapshot":
            self.books[product_id] = Book()
        book = self.books.get(product_id)
        if book is None:  # an update before the product's first snapshot: no book to change yet
            return
        for update in event["updates"]:
            book.set(update["side"], update["price_level"], update["new_quantity"])

    def _apply_trades(self, product_id: str, trades: list[Json]) -> None:
        history = self.trades.setdefault(product_id, [])
        known = {t.wire["trade_id"] for t in history}
        for wire in trades:
            if wire["trade_id"] not in known:
                history.append(Trade(ns_from_iso(wire["time"]), wire))

    @property
    def now_ns(self) -> int:
        """The exchange's clock: the recording's time of the last frame played."""
        if self._now_ns:
            return self._now_ns
        return self.recording[0].ts_ns if self.recording else time.time_ns()

    # ---- WebSocket: what goes to whom -----------------------------------------------------------

    def session(self, conn: Connection) -> Session:
        found = self._sessions.get(conn)
        if found is None:
            found = self._sessions[conn] = Session()
        return found

    def envelope(self, conn: Connection, channel: str, ts_ns: int, events: list[Json]) -> Json:
        """An Advanced Trade message; building it uses up the connection's next sequence_num."""
        return {
            "channel": channel,
            "client_id": "",
            "timestamp": iso_from_ns(ts_ns),
            "sequence_num": self.session(conn).next_sequence(),
            "events": events,
        }

    def _wants(self, conn: Connection, rec: Recorded) -> bool:
        subscribed_at = self.session(conn).subscribed_at.get(rec.channel)
        return subscribed_at is not None and subscribed_at < self.applied

    def frames_for(self, conn: Connection, rec: Recorded) -> Iterator[Any]:
        if self._wants(conn, rec):
            out = OUT_CHANNEL[rec.channel.partition(":")[0]]
            yield self.envelope(conn, out, rec.ts_ns, [rec.message])

    async def _send(self, rec: Recorded) -> None:
        async with self._send_lock:
            skipped_before = len(self.faults.skipped)
            await super()._send(rec)
            if len(self.faults.skipped) > skipped_before:
                self._leave_sequence_hole(rec)

    def _leave_sequence_hole(self, rec: Recorded) -> None:
        """The venue numbered the lost frame before losing it: its subscribers skip a number."""
        for conn in self.connections:
            if self._wants(conn, rec):
                self.session(conn).next_sequence()

    # ---- WebSocket: what clients ask ----------------------------------------------------------

    async def on_client_message(self, conn: Connection, message: Any) -> None:
        problem = self._request_problem(message)
        if problem:
            await conn.send_json({"type": "error", "message": problem})
            return
        channel: str = message["channel"]
        product_ids: list[str] = list(message.get("product_ids") or [])
        keys = [channel] if channel == "heartbeats" else [f"{channel}:{p}" for p in product_ids]
        async with self._send_lock:
            if message["type"] == "subscribe":
                await self._subscribe(conn, keys)
            else:
                self._unsubscribe(conn, keys)
            await conn.send_json(self.envelope(conn, "subscriptions", self.now_ns, [self._subscriptions(conn)]))

    def _request_problem(self, message: Any) -> str | None:
        if not isinstance(message, dict) or message.get("type") not in ("subscribe", "unsubscribe"):
            return "Failed to parse message: type must be subscribe or unsubscribe"
        channel = message.get("channel")
        if channel == "user":
            return "authentication failure"
        if channel not in OUT_CHANNEL:
            return f"Failed to subscribe: unknown channel {channel!r}"
        product_ids = message.get("product_ids") or []
        if not isinstance(product_ids, list):
            return "Failed to parse message: product_ids must be a list"
        if channel != "heartbeats" and not product_ids:
            return f"Failed to subscribe: {channel} needs product_ids"
        unknown = [p for p in product_ids if p not in self.products]
        if unknown:
            return f"Failed to subscribe: unknown product_ids {unknown}"
        return None

    async def _subscribe(self, conn: Connection, keys: list[str]) -> None:
        session = self.session(conn)
        for key in keys:
            if key in conn.channels:
                continue
            # the opening frame and the subscription are taken together, with no await between,
            # so every frame applied later is sent and none of those already applied is
            opening = self._opening_frame(conn, key)
            conn.channels.add(key)
            session.subscribed_at[key] = self.applied
            if opening is not None:
                await conn.send_json(opening)

    def _unsubscribe(self, conn: Connection, keys: list[str]) -> None:
        session = self.session(conn)
        for key in keys:
            conn.channels.discard(key)
            session.subscribed_at.pop(key, None)

    def _opening_frame(self, conn: Connection, key: str) -> Json | None:
        """What a fresh subscription starts with: the book now, the latest trades, the last
        ticker. Nothing while the exchange has none yet (the capture's own snapshot follows)."""
        kind, _, product_id = key.partition(":")
        if kind == "level2" and product_id in self.books:
            book = self.books[product_id]
            updates = [level(side, p, q) for side in ("bid", "offer") for p, q in book.levels(side)]
            event = {"type": "snapshot", "product_id": product_id, "updates": updates}
            return self.envelope(conn, "l2_data", self.now_ns, [event])
        if kind == "market_trades" and self.trades.get(product_id):
            latest = [t.wire for t in reversed(self.trades[product_id][-TRADES_ON_SUBSCRIBE:])]  # newest first
            return self.envelope(conn, "market_trades", self.now_ns, [{"type": "snapshot", "trades": latest}])
        if kind == "ticker" and product_id in self.tickers:
            event = {"type": "snapshot", "tickers": [self.tickers[product_id]]}
            return self.envelope(conn, "ticker", self.now_ns, [event])
        return None

    @staticmethod
    def _subscriptions(conn: Connection) -> Json:
        by_channel: dict[str, list[str]] = {}
        for key in sorted(conn.channels):
            channel, _, product_id = key.partition(":")
            products = by_channel.setdefault(channel, [])
            if product_id:
                products.append(product_id)
        return {"subscriptions": by_channel}

    # ---- heartbeats ---------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat(), name="double-coinbase-heartbeats")

    async def stop(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        await super().stop()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            async with self._send_lock:
                for conn in list(self.connections):
                    if "heartbeats" in conn.channels:
                        await conn.send_json(self._heartbeat(conn))

    def _heartbeat(self, conn: Connection) -> Json:
        session = self.session(conn)
        session.heartbeat_counter += 1
        # Go's time.Time text, as Advanced Trade writes current_time
        current = iso_from_ns(self.now_ns).replace("T", " ").replace("Z", " +0000 UTC")
        event = {"current_time": current, "heartbeat_counter": session.heartbeat_counter}
        return self.envelope(conn, "heartbeats", self.now_ns, [event])

    # ---- REST -----------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            # ccxt's ws URL is the bare venue prefix (`wss://advanced-trade-ws.coinbase.com`)
            web.get("", self.websocket),
            web.get("/", self.websocket),
            web.get("/api/v3/brokerage/time", self.rest_time),
            web.get("/v2/time", self.rest_time_v2),
            web.get("/api/v3/brokerage/market/products", self.rest_products),
            web.get("/api/v3/brokerage/market/products/{product_id}", self.rest_product),
            web.get("/api/v3/brokerage/market/products/{product_id}/ticker", self.rest_market_trades),
            web.get("/api/v3/brokerage/market/products/{product_id}/candles", self.rest_candles),
            web.get("/api/v3/brokerage/market/product_book", self.rest_product_book),
            web.get("/v2/currencies", self.rest_fiat_currencies),
            web.get("/v2/currencies/crypto", self.rest_crypto_currencies),
            web.get("/v2/exchange-rates", self.rest_exchange_rates),
        ]

    async def rest_time(self, request: web.Request) -> web.Response:
        now = self.now_ns
        return web.json_response({
            "iso": iso_from_ns(now), "epochSeconds": str(now // 1_000_000_000), "epochMillis": str(now // 1_000_000),
        })

    async def rest_time_v2(self, request: web.Request) -> web.Response:
        now = self.now_ns
        return web.json_response({"data": {"epoch": now // 1_000_000_000, "iso": iso_from_ns(now)}})

    async def rest_products(self, request: web.Request) -> web.Response:
        product_type = request.query.get("product_type", "SPOT").upper()
        wanted = set(request.query.getall("product_ids", []))
        products = [] if product_type != "SPOT" else [
            self.advanced_product(p) for pid, p in self.products.items() if not wanted or pid in wanted
        ]
        return web.json_response({"products": products, "num_products": len(products)})

    async def rest_product(self, request: web.Request) -> web.Response:
        product = self.products.get(request.match_info["product_id"])
        if product is None:
            return not_found("ProductID is invalid")
        return web.json_response(self.advanced_product(product))

    async def rest_market_trades(self, request: web.Request) -> web.Response:
        """Public market trades: newest first, at most `limit`, with `start`/`end` in whole
        seconds (ccxt sends `since // 1000` and filters the milliseconds itself)."""
        product_id = request.match_info["product_id"]
        if product_id not in self.products:
            return not_found("ProductID is invalid")
        try:
            limit = min(int(request.query.get("limit", MAX_REST_TRADES)), MAX_REST_TRADES)
            start_ns = int(request.query["start"]) * 1_000_000_000 if "start" in request.query else None
            end_ns = (int(request.query["end"]) + 1) * 1_000_000_000 if "end" in request.query else None
        except ValueError:
            return web.json_response({"error": "INVALID_ARGUMENT", "message": "limit, start and end are integers"},
                                     status=400)
        window = [
            t.wire | {"bid": "", "ask": ""}
            for t in self.trades.get(product_id, [])
            if (start_ns is None or t.time_ns >= start_ns) and (end_ns is None or t.time_ns < end_ns)
        ]
        best_bid, best_ask = self._best_prices(product_id)
        return web.json_response({"trades": window[::-1][:limit], "best_bid": best_bid, "best_ask": best_ask})

    async def rest_candles(self, request: web.Request) -> web.Response:
        """Public candles: `start`/`end` in whole seconds, `granularity` (`ONE_HOUR`...), at most
        350 candles a request (400 beyond, as the venue), newest first."""
        product_id = request.match_info["product_id"]
        if product_id not in self.products:
            return not_found("ProductID is invalid")
        minutes = GRANULARITY_MINUTES.get(request.query.get("granularity", ""))
        try:
            start_s, end_s = int(request.query["start"]), int(request.query["end"])
        except (KeyError, ValueError):
            return web.json_response({"error": "INVALID_ARGUMENT", "message": "start and end are required integers"},
                                     status=400)
        if minutes is None:
            return web.json_response({"error": "INVALID_ARGUMENT", "message": "unknown granularity"}, status=400)
        if (end_s - start_s) // (minutes * 60) > MAX_CANDLES:
            return web.json_response({"error": "INVALID_ARGUMENT", "message": f"number of candles requested should "
                                      f"be less than {MAX_CANDLES}"}, status=400)
        rows = self.ohlcv(product_id, minutes * 60_000, start_s * 1000, end_s * 1000)
        if rows is None:
            return web.json_response({"error": "rate_limit_exceeded", "message": "Too many requests (exchange double)"},
                                     status=429)
        candles = [{"start": str(t // 1000), "low": lo, "high": h, "open": o, "close": c, "volume": v}
                   for t, o, h, lo, c, v in rows]
        return web.json_response({"candles": candles[::-1]})

    def recorded_prints(self, symbol: str) -> list[Print]:
        if not self.recording:
            self.recording = list(self.load())
        prints = [_print(ns_from_iso(t["time"]), t) for r in self.recording if r.channel == f"market_trades:{symbol}"
                  for t in r.message["trades"]]
        return sorted(dict.fromkeys(prints))

    def played_prints(self, symbol: str) -> list[Print]:
        return sorted(_print(t.time_ns, t.wire) for t in self.trades.get(symbol, []))

    async def rest_product_book(self, request: web.Request) -> web.Response:
        product_id = request.query.get("product_id", "")
        if product_id not in self.products:
            return not_found("ProductID is invalid")
        depth = int(request.query["limit"]) if "limit" in request.query else None
        book = self.books.get(product_id, Book())
        pricebook = {
            "product_id": product_id,
            "bids": [{"price": p, "size": q} for p, q in book.levels("bid", depth)],
            "asks": [{"price": p, "size": q} for p, q in book.levels("offer", depth)],
            "time": iso_from_ns(self.now_ns),
        }
        return web.json_response({"pricebook": pricebook})

    async def rest_fiat_currencies(self, request: web.Request) -> web.Response:
        codes = sorted(self._currencies() & FIAT_NAMES.keys())
        fiat = [{"id": c, "name": FIAT_NAMES[c], "min_size": "0.01"} for c in codes]
        return web.json_response({"data": fiat})

    async def rest_crypto_currencies(self, request: web.Request) -> web.Response:
        crypto = [
            # the 2021 body has no asset ids, names or exponents: the code stands in for all three
            {"asset_id": code, "code": code, "name": code, "color": "", "sort_index": str(i), "exponent": "8",
             "type": "crypto", "address_regex": ""}
            for i, code in enumerate(sorted(self._currencies() - FIAT_NAMES.keys()))
        ]
        return web.json_response({"data": crypto})

    async def rest_exchange_rates(self, request: web.Request) -> web.Response:
        """Units of each currency per USD, for the currencies whose USD market has traded."""
        rates = {"USD": "1"}
        for product_id, history in self.trades.items():
            base, _, quote = product_id.partition("-")
            if quote == "USD" and history and Decimal(history[-1].wire["price"]):
                rates[base] = str(1 / Decimal(history[-1].wire["price"]))
        return web.json_response({"data": {"currency": "USD", "rates": rates}})

    # ---- REST helpers ---------------------------------------------------------------------------

    def advanced_product(self, legacy: Json) -> Json:
        """A Coinbase Pro product object as an Advanced Trade `market/products` entry."""
        product_id = legacy["id"]
        history = self.trades.get(product_id)
        best_bid, best_ask = self._best_prices(product_id)
        mid = str((Decimal(best_bid) + Decimal(best_ask)) / 2) if best_bid and best_ask else ""
        return {
            "product_id": product_id,
            "price": history[-1].wire["price"] if history else "",
            "price_percentage_change_24h": "",
            "volume_24h": "",
            "volume_percentage_change_24h": "",
            "base_increment": legacy["base_increment"],
            "quote_increment": legacy["quote_increment"],
            "quote_min_size": legacy["min_market_funds"],
            "quote_max_size": legacy["max_market_funds"],
            "base_min_size": legacy["base_min_size"],
            "base_max_size": legacy["base_max_size"],
            "base_name": legacy["base_currency"],
            "quote_name": FIAT_NAMES.get(legacy["quote_currency"], legacy["quote_currency"]),
            "watched": False,
            "is_disabled": legacy["status"] != "online",
            "new": False,
            "status": legacy["status"],
            "cancel_only": legacy["cancel_only"],
            "limit_only": legacy["limit_only"],
            "post_only": legacy["post_only"],
            "trading_disabled": legacy["trading_disabled"],
            "auction_mode": False,
            "product_type": "SPOT",
            "quote_currency_id": legacy["quote_currency"],
            "base_currency_id": legacy["base_currency"],
            "fcm_trading_session_details": None,
            "mid_market_price": mid,
            "alias": "",
            "alias_to": [],
            "base_display_symbol": legacy["base_currency"],
            "quote_display_symbol": legacy["quote_currency"],
            "view_only": False,
            "price_increment": legacy["quote_increment"],
            "display_name": product_id,
            "product_venue": "CBE",
        }

    def _best_prices(self, product_id: str) -> tuple[str, str]:
        book = self.books.get(product_id)
        if book is None:
            return "", ""
        bid, ask = book.best("bid"), book.best("offer")
        return (bid[0] if bid else ""), (ask[0] if ask else "")

    def _currencies(self) -> set[str]:
        return {p[side] for p in self.products.values() for side in ("base_currency", "quote_currency")}


def _print(time_ns: int, wire: Json) -> Print:
    return time_ns, Decimal(wire["price"]), Decimal(wire["size"])


def not_found(message: str) -> web.Response:
    return web.json_response({"error": "NOT_FOUND", "error_details": message, "message": message}, status=404)
