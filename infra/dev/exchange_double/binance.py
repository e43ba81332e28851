"""Binance spot and USD-M futures as ccxt.pro's `binance` / `binanceusdm` reach them, playing
the hftbacktest captures in `../shared/data/binance` (see its README for the line format).

WebSocket: ccxt connects to `/ws/<n>` (spot) or `/<category>/ws/<n>` (USD-M) and sends
`{"method": "SUBSCRIBE", "params": ["ethusdt@trade", "ethusdt@depth@100ms"], "id": 1}`; the
double answers `{"result": null, "id": 1}` and then sends the recorded payloads (the `data`
of the combined-stream envelope) of the subscribed streams, unchanged. Depth speeds are
ignored (`@depth@100ms` and `@depth` are the recorded depth stream).

REST: `exchangeInfo` built from the recorded symbols, `depth` from the double's own book (the
recorded snapshot with every diff played so far applied, so a snapshot taken at any point
bridges the diffs that follow it), `trades` (the latest `limit`; `historicalTrades` also
takes `fromId`) from the trades played so far, so a client can backfill what it missed while
disconnected, and `klines`, the candle history (`ohlcv.py`: seeded before the recording's first
trade, the played trades after it).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web

from infra.dev.exchange_double.ohlcv import Print
from infra.dev.exchange_double.server import Connection, Recorded, VenueDouble
from streams.core.venues.binance import VENUES

Market = Literal["spot", "usdm"]

_FILES: dict[Market, tuple[str, ...]] = {
    "spot": ("spot_ethusdt_20240808.gz", "spot_ethusdt_20240809.gz"),
    "usdm": ("usdm_ethusdt_20240808.gz",),
}
_PREFIX: dict[Market, str] = {"spot": "/api/v3", "usdm": "/fapi/v1"}
_QUOTES = ("USDT", "USDC", "BUSD", "USD", "BTC", "ETH")
_TRADES_KEPT = 50_000
_KLINE_MINUTES = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240, "6h": 360,
                  "8h": 480, "12h": 720, "1d": 1440}


def _print(trade: dict[str, Any]) -> Print:
    return trade["T"] * 1_000_000, Decimal(trade["p"]), Decimal(trade["q"])


def _channel(stream: str) -> str:
    """`ethusdt@depth@100ms` -> `ethusdt@depth`: any depth speed is the recorded depth stream."""
    symbol, _, kind = stream.partition("@")
    return f"{symbol}@{kind.split('@', 1)[0]}"


class _Book:
    """The exchange's book of one symbol: price string -> size string, and its update id."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.last_id: int = snapshot["lastUpdateId"]
        self.bids = {p: q for p, q in snapshot["bids"]}
        self.asks = {p: q for p, q in snapshot["asks"]}

    def apply(self, diff: dict[str, Any]) -> None:
        if diff["u"] <= self.last_id:
            return  # the snapshot already holds it
        for side, levels in ((self.bids, diff["b"]), (self.asks, diff["a"])):
            for price, size in levels:
                if Decimal(size) == 0:
                    side.pop(price, None)
                else:
                    side[price] = size
        self.last_id = diff["u"]

    def top(self, limit: int) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)[:limit]
        asks = sorted(self.asks.items(), key=lambda kv: Decimal(kv[0]))[:limit]
        return [list(kv) for kv in bids], [list(kv) for kv in asks]


class BinanceDouble(VenueDouble):
    """One Binance market (spot or USD-M) over its recorded files."""

    def __init__(self, data_dir: Path, market: Market = "spot", speed: float | None = None,
                 max_frames: int | None = None) -> None:
        super().__init__(speed)
        self.market = market
        self.name = VENUES[market]  # the venue tag the connectors use: streams.core.venues
        self.data_dir = data_dir
        self.max_frames = max_frames
        self.books: dict[str, _Book] = {}  # upper-case symbol -> book
        self.trades: dict[str, list[dict[str, Any]]] = {}  # upper-case symbol -> played trades
        self.symbols: set[str] = set()

    # ---- the recording ------------------------------------------------------------------

    def load(self) -> Iterator[Recorded]:
        frames = 0
        early: list[dict[str, Any]] = []  # diffs received before the snapshot line
        for name in _FILES[self.market]:
            with gzip.open(self.data_dir / name, "rb") as f:
                for line in f:
                    ts, _, body = line.partition(b" ")
                    msg = orjson.loads(body)
                    if "lastUpdateId" in msg:
                        self._load_snapshot(msg, early)
                        continue
                    data = msg["data"]
                    if not self.books:
                        # play from the snapshot on, the exchange's book starts there; the
                        # collector wrote the snapshot after some diffs it already covers or
                        # that follow it: those go into the starting book
                        if data.get("e") == "depthUpdate":
                            early.append(data)
                        continue
                    self.symbols.add(data["s"])
                    channel = _channel(msg["stream"])
                    yield Recorded(int(ts), channel, data, is_book_update=data.get("e") == "depthUpdate")
                    frames += 1
                    if self.max_frames is not None and frames >= self.max_frames:
                        return

    def _load_snapshot(self, msg: dict[str, Any], early: list[dict[str, Any]]) -> None:
        # the spot snapshot names no symbol; every capture holds one symbol (ETHUSDT)
        symbol = msg.get("symbol", "ETHUSDT")
        if symbol not in self.books:
            book = self.books[symbol] = _Book(msg)
            for diff in early:
                book.apply(diff)
            self.symbols.add(symbol)

    def apply(self, rec: Recorded) -> None:
        data = rec.message
        kind = data.get("e")
        if kind == "depthUpdate":
            self.books[data["s"]].apply(data)
        elif kind == "trade":
            kept = self.trades.setdefault(data["s"], [])
            kept.append(data)
            if len(kept) > _TRADES_KEPT:
                del kept[: len(kept) - _TRADES_KEPT]

    # ---- WebSocket ----------------------------------------------------------------------

    async def on_client_message(self, conn: Connection, message: Any) -> None:
        if not isinstance(message, dict) or "method" not in message:
            await conn.send_json({"error": {"code": 2, "msg": "Invalid request"}, "id": None})
            return
        method, params = message["method"], message.get("params") or []
        if method == "SUBSCRIBE":
            conn.channels.update(_channel(p) for p in params)
        elif method == "UNSUBSCRIBE":
            conn.channels.difference_update(_channel(p) for p in params)
        elif method != "LIST_SUBSCRIPTIONS":
            await conn.send_json({"error": {"code": 2, "msg": f"Invalid method {method}"}, "id": message.get("id")})
            return
        await conn.send_json({"result": None, "id": message.get("id")})

    # ---- REST ---------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        rest = _PREFIX[self.market]
        return [
            web.get("/ws", self.websocket),
            web.get("/ws/{stream}", self.websocket),
            web.get("/{category}/ws", self.websocket),
            web.get("/{category}/ws/{stream}", self.websocket),
            web.get(f"{rest}/exchangeInfo", self._exchange_info),
            web.get(f"{rest}/depth", self._depth),
            web.get(f"{rest}/trades", self._trades),
            web.get(f"{rest}/historicalTrades", self._trades),
            web.get(f"{rest}/klines", self._klines),
            web.get(f"{rest}/ping", self._ping),
            web.get(f"{rest}/time", self._time),
        ]

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self._now_ms()})

    def _now_ms(self) -> int:
        i = max(self.played - 1, 0)
        return self.recording[i].ts_ns // 1_000_000 if self.recording else 0

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "timezone": "UTC", "serverTime": self._now_ms(), "rateLimits": [], "exchangeFilters": [],
            "symbols": [self._symbol_info(s) for s in sorted(self.symbols)],
        })

    def _symbol_info(self, symbol: str) -> dict[str, Any]:
        quote = next(q for q in _QUOTES if symbol.endswith(q))
        base = symbol[: -len(quote)]
        tick, step = ("0.01000000", "0.00010000") if self.market == "spot" else ("0.01", "0.001")
        filters = [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "100000", "stepSize": step},
        ]
        info: dict[str, Any] = {
            "symbol": symbol, "status": "TRADING", "baseAsset": base, "quoteAsset": quote,
            "baseAssetPrecision": 8, "quotePrecision": 8, "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "MARKET"], "filters": filters, "permissions": ["SPOT"],
            "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        }
        if self.market == "usdm":
            info.update({
                "pair": symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
                "onboardDate": 1569398400000, "marginAsset": quote, "pricePrecision": 2,
                "quantityPrecision": 3, "underlyingType": "COIN", "settlePlan": 0,
                "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
            })
            del info["permissions"], info["isSpotTradingAllowed"], info["isMarginTradingAllowed"]
        return info

    async def _depth(self, request: web.Request) -> web.Response:
        book = self.books.get(request.query.get("symbol", ""))
        if book is None:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        bids, asks = book.top(int(request.query.get("limit", "100")))
        body: dict[str, Any] = {"lastUpdateId": book.last_id, "bids": bids, "asks": asks}
        if self.market == "usdm":
            body["E"] = body["T"] = self._now_ms()
        return web.json_response(body)

    async def _trades(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        if symbol not in self.symbols:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        limit = min(int(request.query.get("limit", "500")), 1000)
        trades = self.trades.get(symbol, [])
        if "fromId" in request.query and request.path.endswith("historicalTrades"):
            from_id = int(request.query["fromId"])
            chosen = [t for t in trades if t["t"] >= from_id][:limit]
        else:
            chosen = trades[-limit:]
        return web.json_response([self._rest_trade(t) for t in chosen])

    # ---- candle history (infra/dev/exchange_double/ohlcv.py) ------------------------------------

    def recorded_prints(self, symbol: str) -> list[Print]:
        if not self.recording:
            self.recording = list(self.load())
        return [_print(r.message) for r in self.recording if r.message.get("e") == "trade" and r.message["s"] == symbol]

    def played_prints(self, symbol: str) -> list[Print]:
        return [_print(t) for t in self.trades.get(symbol, [])]

    async def _klines(self, request: web.Request) -> web.Response:
        """`GET /api/v3/klines` (`/fapi/v1/klines`): `symbol`, `interval`, `startTime`/`endTime`
        (ms, optional), `limit` (default 500, at most 1000 spot, 1500 USD-M); rows oldest first."""
        symbol = request.query.get("symbol", "")
        step = _KLINE_MINUTES.get(request.query.get("interval", ""))
        if symbol not in self.symbols:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        if step is None:
            return web.json_response({"code": -1120, "msg": "Invalid interval."}, status=400)
        step_ms = step * 60_000
        limit = min(int(request.query.get("limit", "500")), 1000 if self.market == "spot" else 1500)
        now_ms = self.venue_time_ns() // 1_000_000
        end = int(request.query["endTime"]) + 1 if "endTime" in request.query else now_ms + 1
        start = int(request.query["startTime"]) if "startTime" in request.query else end - limit * step_ms
        rows = self.ohlcv(symbol, step_ms, start, end)
        if rows is None:
            return web.json_response({"code": -1003, "msg": "Too many requests; current limit is 6000 request "
                                      "weight per 1 MINUTE (exchange double)."}, status=429)
        return web.json_response([[t, o, h, lo, c, v, t + step_ms - 1, "0", 0, "0", "0", "0"]
                                  for t, o, h, lo, c, v in rows[:limit]])

    def _rest_trade(self, t: dict[str, Any]) -> dict[str, Any]:
        row = {"id": t["t"], "price": t["p"], "qty": t["q"], "time": t["T"], "isBuyerMaker": t["m"]}
        quote_qty = format(Decimal(t["p"]) * Decimal(t["q"]), "f")
        extra = {"isBestMatch": True} if self.market == "spot" else {}
        return {**row, "quoteQty": quote_qty, **extra}
