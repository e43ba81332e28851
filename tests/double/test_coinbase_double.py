"""The Coinbase double behind ccxt.pro's own `coinbase` class: markets, trades and books as
ccxt sees them, checked against the legacy capture read here with plain json (an oracle that
shares no code with the double), and what ccxt does when the double misbehaves."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.pro
import pytest
from ccxt.base.errors import NetworkError, RequestTimeout

import infra.dev.exchange_double.coinbase as coinbase_double
from infra.dev.exchange_double.coinbase import CoinbaseDouble
from infra.dev.exchange_double.server import ExchangeDouble
from streams.ingest.venues.ccxt_client import point_urls_at
from tests.double.ccxt_keepalive import KeepaliveClock, WireLog
from tests.shared_data import DATA

CAPTURES = DATA / "cryptofeed"
KEEPALIVE_MS = 300  # ccxt's ping interval (the keepalive tests move their own clock by it)

Levels = list[list[float]]
OracleBook = dict[str, dict[Decimal, Decimal]]


# ---- the oracle: the capture read with plain json --------------------------------------------


def legacy_messages() -> list[dict[str, Any]]:
    messages = []
    with (CAPTURES / "COINBASE.ws.28.0").open() as f:
        for line in f:
            if line[:1].isdigit():
                messages.append(json.loads(line.split(": ", 1)[1]))
    return messages


MESSAGES = legacy_messages()
PRODUCT_IDS = sorted({m["product_id"] for m in MESSAGES if m["type"] == "snapshot"})
SYMBOLS = [p.replace("-", "/") for p in PRODUCT_IDS]


def oracle_books(skip: dict[str, Any] | None = None) -> dict[str, OracleBook]:
    """Each product's book after the snapshot and every l2update (but `skip`)."""
    books: dict[str, OracleBook] = {}
    for m in MESSAGES:
        if m["type"] == "snapshot":
            books[m["product_id"]] = {
                "bids": {Decimal(p): Decimal(s) for p, s in m["bids"]},
                "asks": {Decimal(p): Decimal(s) for p, s in m["asks"]},
            }
        elif m["type"] == "l2update" and m is not skip:
            for side, price, size in m["changes"]:
                levels = books[m["product_id"]]["bids" if side == "buy" else "asks"]
                if Decimal(size) == 0:
                    levels.pop(Decimal(price), None)
                else:
                    levels[Decimal(price)] = Decimal(size)
    return books


def as_levels(book: OracleBook, side: str) -> Levels:
    prices = sorted(book[side], reverse=side == "bids")
    return [[float(p), float(book[side][p])] for p in prices]


def first_update(product_id: str) -> dict[str, Any]:
    return next(m for m in MESSAGES if m["type"] == "l2update" and m["product_id"] == product_id)


def oracle_trades(product_id: str | None = None) -> list[tuple[str, float, float, str]]:
    """(trade_id, price, size, side) of every recorded match, and of the last_match each
    product opened with (a trade from before the capture)."""
    return [
        (str(m["trade_id"]), float(m["price"]), float(m["size"]), m["side"])
        for m in MESSAGES
        if m["type"] in ("match", "last_match") and product_id in (None, m["product_id"])
    ]


def ccxt_levels(ex: Any, symbol: str, side: str) -> Levels:
    return [[float(p), float(s)] for p, s, *_ in ex.orderbooks[symbol][side]]


# ---- the venue --------------------------------------------------------------------------------


@dataclass
class Venue:
    double: CoinbaseDouble
    ex: Any  # ccxt.pro.coinbase
    base: str
    # what ccxt's handlers were given, in order (a spy, to count deliveries rather than cache entries)
    trade_ids: list[str] = field(default_factory=list)
    book_messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/coinbase"

    async def subscribed(self, n: int) -> None:
        """Until the double holds `n` subscriptions, so play() loses nothing."""
        await eventually(lambda: sum(len(c.channels) for c in self.double.connections) >= n)

    async def play_to_end(self) -> None:
        self.double.play()
        await asyncio.wait_for(self.double.finished.wait(), 60)  # a deadline, generous for a loaded CI run


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Waits for ccxt to catch up; returns at the deadline and lets the asserts tell what differs."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)


def only_client(ex: Any) -> Any:
    """ccxt's one WebSocket client (one URL serves every Coinbase channel)."""
    (client,) = ex.clients.values()
    return client


def spy_on_handlers(venue: Venue) -> None:
    ex = venue.ex
    handle_trade, handle_order_book = ex.handle_trade, ex.handle_order_book

    def trades(client: Any, message: dict[str, Any]) -> None:
        venue.trade_ids.extend(t["trade_id"] for e in message["events"] for t in e["trades"])
        handle_trade(client, message)

    def books(client: Any, message: dict[str, Any]) -> None:
        venue.book_messages.append(message)
        handle_order_book(client, message)

    # ccxt's handle_message looks its handlers up on the instance for every message
    ex.handle_trade, ex.handle_order_book = trades, books


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    double = CoinbaseDouble(CAPTURES, speed=None)
    server = ExchangeDouble([double])
    base = await server.start()
    # no option is needed to keep ccxt public: without an apiKey it signs nothing and skips the
    # fee-tier call. ccxt's own keepalive (seconds): a short one on the wall clock closed the
    # socket whenever the loaded test machine stalled the loop past two pings, and the trades
    # played meanwhile were lost (a CI flake); the keepalive tests set theirs, on their own clock.
    ex = ccxt.pro.coinbase({"enableRateLimit": False})
    ex.urls["api"] = point_urls_at(ex.urls["api"], base, "coinbase")
    v = Venue(double, ex, base)
    spy_on_handlers(v)
    try:
        yield v
    finally:
        await ex.close()
        await server.stop()


# ---- markets -----------------------------------------------------------------------------------


async def test_load_markets_knows_the_recorded_products(venue: Venue) -> None:
    recorded = json.loads((CAPTURES / "COINBASE.0").read_text().splitlines()[0].split(": ", 1)[1])
    markets = await venue.ex.load_markets()

    assert {m["id"] for m in markets.values()} == {p["id"] for p in recorded}
    skl = markets["SKL/USD"]
    assert (skl["id"], skl["base"], skl["quote"], skl["spot"], skl["active"]) == ("SKL-USD", "SKL", "USD", True, True)
    assert (skl["precision"]["amount"], skl["precision"]["price"]) == (0.1, 0.0001)
    assert skl["limits"]["amount"]["min"] == 5.0
    assert {"SKL", "USD", "GBP"} <= set(venue.ex.currencies)


# ---- playback ----------------------------------------------------------------------------------


async def test_ccxt_gets_every_trade_once_and_the_oracle_books(venue: Venue) -> None:
    ex = venue.ex
    await ex.load_markets()
    books = asyncio.ensure_future(ex.watch_order_book_for_symbols(SYMBOLS))
    trades = asyncio.ensure_future(ex.watch_trades_for_symbols(SYMBOLS))
    await venue.subscribed(2 * len(SYMBOLS))
    await venue.play_to_end()
    await asyncio.wait_for(asyncio.gather(books, trades), 30)

    expected = oracle_trades()
    oracle = oracle_books()
    await eventually(lambda: len(venue.trade_ids) >= len(expected)
                     and all(ccxt_levels(ex, s, "asks") == as_levels(oracle[s.replace("/", "-")], "asks")
                             for s in SYMBOLS))

    assert Counter(venue.trade_ids) == Counter(t[0] for t in expected)  # each delivered exactly once
    for product_id, symbol in zip(PRODUCT_IDS, SYMBOLS, strict=True):
        got = [(t["id"], t["price"], t["amount"], t["side"]) for t in ex.trades.get(symbol, [])]
        assert sorted(got) == sorted(oracle_trades(product_id)), symbol
        assert ccxt_levels(ex, symbol, "bids") == as_levels(oracle[product_id], "bids"), symbol
        assert ccxt_levels(ex, symbol, "asks") == as_levels(oracle[product_id], "asks"), symbol


async def test_a_late_subscriber_gets_the_current_book_and_numbered_frames(venue: Venue) -> None:
    await venue.play_to_end()
    async with aiohttp.ClientSession() as session, session.ws_connect(venue.ws_url) as ws:
        await ws.send_json({"type": "subscribe", "product_ids": ["SKL-USD", "NU-GBP"], "channel": "level2"})
        await ws.send_json({"type": "subscribe", "product_ids": ["SKL-USD"], "channel": "market_trades"})
        await ws.send_json({"type": "subscribe", "product_ids": ["NOPE-USD"], "channel": "level2"})
        frames = [await ws.receive_json(timeout=2) for _ in range(6)]

    assert [f.get("channel") for f in frames] == [
        "l2_data", "l2_data", "subscriptions", "market_trades", "subscriptions", None]
    assert [f.get("sequence_num") for f in frames[:5]] == [0, 1, 2, 3, 4]
    assert frames[5]["type"] == "error"  # an unknown product is refused and uses no number
    assert frames[4]["events"] == [{"subscriptions": {"level2": ["NU-GBP", "SKL-USD"], "market_trades": ["SKL-USD"]}}]
    oracle = oracle_books()
    for frame in frames[:2]:
        event = frame["events"][0]
        assert event["type"] == "snapshot"
        got: OracleBook = {"bids": {}, "asks": {}}
        for u in event["updates"]:
            got["bids" if u["side"] == "bid" else "asks"][Decimal(u["price_level"])] = Decimal(u["new_quantity"])
        assert got == oracle[event["product_id"]]  # the book now, not the capture's first snapshot
    latest = frames[3]["events"][0]
    assert latest["type"] == "snapshot"
    assert [t["trade_id"] for t in latest["trades"]] == [t[0] for t in oracle_trades("SKL-USD")][::-1][:50]


async def test_heartbeats_channel(venue: Venue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coinbase_double, "HEARTBEAT_INTERVAL_S", 0.05)
    async with aiohttp.ClientSession() as session, session.ws_connect(venue.ws_url) as ws:
        await ws.send_json({"type": "subscribe", "channel": "heartbeats"})
        ack, beat = await ws.receive_json(timeout=2), await ws.receive_json(timeout=2)
    assert ack["channel"] == "subscriptions" and ack["events"] == [{"subscriptions": {"heartbeats": []}}]
    assert beat["channel"] == "heartbeats" and beat["sequence_num"] == 1
    assert beat["events"][0]["heartbeat_counter"] == 1


# ---- faults -------------------------------------------------------------------------------------


async def test_skip_leaves_a_sequence_hole_that_ccxt_never_notices(venue: Venue) -> None:
    """ccxt 4.5.90 reads no sequence_num: the lost update is simply missing from its book."""
    ex, product_id, symbol = venue.ex, "BAND-GBP", "BAND/GBP"
    await ex.load_markets()
    watching = asyncio.ensure_future(ex.watch_order_book(symbol))
    async with aiohttp.ClientSession() as session, session.ws_connect(venue.ws_url) as ws:
        await ws.send_json({"type": "subscribe", "product_ids": [product_id], "channel": "level2"})
        await venue.subscribed(2)
        venue.double.skip(1)
        await venue.play_to_end()
        updates = sum(1 for m in MESSAGES if m["type"] == "l2update" and m["product_id"] == product_id)
        frames = [await ws.receive_json(timeout=2) for _ in range(2 + updates - 1)]  # ack, snapshot, updates

    lost = first_update(product_id)  # the first BAND-GBP update: the only one anyone listened to
    [skipped] = venue.double.faults.skipped
    _, lost_price, lost_size = lost["changes"][0]
    assert [(u["price_level"], u["new_quantity"]) for u in skipped.message["updates"]] == [(lost_price, lost_size)]
    numbers = [f["sequence_num"] for f in frames]
    assert numbers == sorted(numbers)
    assert set(range(numbers[-1] + 1)) - set(numbers) == {2}  # 0 ack, 1 snapshot, 2 the lost update

    without = oracle_books(skip=lost)[product_id]
    await eventually(lambda: ccxt_levels(ex, symbol, "asks") == as_levels(without, "asks"))
    assert watching.done() and watching.exception() is None  # nothing raised
    assert ccxt_levels(ex, symbol, "asks") == as_levels(without, "asks")
    assert ccxt_levels(ex, symbol, "bids") == as_levels(without, "bids")
    # the level the lost update removed (ask 14.8098) stays in ccxt's book to the end
    assert [14.8098, 123.10] in ccxt_levels(ex, symbol, "asks")
    assert ccxt_levels(ex, symbol, "asks") != as_levels(oracle_books()[product_id], "asks")


async def test_drop_rejects_the_pending_watch_and_a_new_watch_gets_a_fresh_snapshot(venue: Venue) -> None:
    ex, symbol = venue.ex, "SKL/USD"
    final = oracle_books()["SKL-USD"]
    await ex.load_markets()
    first = asyncio.ensure_future(ex.watch_order_book(symbol))
    await venue.subscribed(1)
    await venue.play_to_end()
    await first
    await eventually(lambda: ccxt_levels(ex, symbol, "bids") == as_levels(final, "bids"))

    pending = asyncio.ensure_future(ex.watch_order_book(symbol))  # nothing more will come
    await asyncio.sleep(0.05)
    assert not pending.done()
    assert venue.double.drop() == 1
    with pytest.raises(NetworkError) as raised:
        await asyncio.wait_for(pending, 3)
    assert type(raised.value) is NetworkError  # the base class itself, not a subclass
    assert "closing code 1006" in str(raised.value)

    seen = len(venue.book_messages)
    book = await asyncio.wait_for(ex.watch_order_book(symbol), 3)  # ccxt dials a new connection
    reconnect = venue.book_messages[seen]
    assert reconnect["sequence_num"] == 0 and reconnect["events"][0]["type"] == "snapshot"
    assert [[p, s] for p, s, *_ in book["bids"]] == as_levels(final, "bids")
    assert [[p, s] for p, s, *_ in book["asks"]] == as_levels(final, "asks")
    assert len(reconnect["events"][0]["updates"]) == len(final["bids"]) + len(final["asks"])


async def test_garbage_kills_ccxts_reader_until_the_keepalive_times_out(
    venue: Venue, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first garbage frame starts with `{`: ccxt json-decodes it inside a done-callback, the
    error ends its receive loop, and the socket goes unread: the pongs the double sends back are
    never read, and the keepalive gives up on the third round after the last pong it read."""
    clock = KeepaliveClock(KEEPALIVE_MS)
    clock.install(monkeypatch)
    ex, symbol = venue.ex, "SKL/USD"
    ex.streaming = {**ex.streaming, "keepAlive": KEEPALIVE_MS}
    await ex.load_markets()
    watching = asyncio.ensure_future(ex.watch_order_book(symbol))
    await venue.subscribed(1)
    client = only_client(ex)
    await eventually(lambda: client.last_message_at is not None)  # the subscription's ack was read
    wire = WireLog(client)
    await clock.tick()
    await wire.until("pong", 1)  # the reader is alive: the pong was read
    venue.double.garbage(1)
    caplog.set_level(logging.ERROR, logger="asyncio")
    await venue.play_to_end()  # the double keeps playing: garbage does not stop it
    await wire.until("text", 1)  # the garbage, the last frame ccxt reads

    await clock.tick()
    await clock.tick()
    assert not watching.done()  # two rounds without a pong: within maxPingPongMisses (2)
    await clock.tick()
    with pytest.raises(RequestTimeout, match="ping-pong keepalive"):
        await asyncio.wait_for(watching, 30)
    assert wire.events == ["ping", "pong", "text", "ping", "ping"]  # the third round pinged no more
    assert venue.book_messages == []  # the recorded snapshot after the garbage was never read
    assert any("JSONDecodeError" in r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert venue.double.faults.garbage_sent == 1

    final = oracle_books()["SKL-USD"]
    book = await asyncio.wait_for(ex.watch_order_book(symbol), 30)
    assert [[p, s] for p, s, *_ in book["asks"]] == as_levels(final, "asks")


async def test_stall_goes_unnoticed_by_ccxt(venue: Venue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pings are answered below the double's JSON frames, so ccxt's keepalive stays happy."""
    clock = KeepaliveClock(KEEPALIVE_MS)
    clock.install(monkeypatch)
    ex, symbol = venue.ex, "SKL/USD"
    ex.streaming = {**ex.streaming, "keepAlive": KEEPALIVE_MS}
    await ex.load_markets()
    first = asyncio.ensure_future(ex.watch_order_book(symbol))
    await venue.subscribed(1)
    await venue.play_to_end()
    await first
    final = oracle_books()["SKL-USD"]
    await eventually(lambda: ccxt_levels(ex, symbol, "bids") == as_levels(final, "bids"))  # ccxt caught up
    wire = WireLog(only_client(ex))
    venue.double.stall()
    pending = asyncio.ensure_future(ex.watch_order_book(symbol))
    rounds = 4  # more than the three after which a dead reader is given up
    for n in range(1, rounds + 1):
        await clock.tick()
        await wire.until("pong", n)
    # every ping answered and read (frames sent before the stall may still be read in between)
    assert [e for e in wire.events if e != "text"] == ["ping", "pong"] * rounds
    assert not pending.done() and only_client(ex).error is None  # only the caller's own timeout can tell
    pending.cancel()


# ---- REST backfill ---------------------------------------------------------------------------------


async def test_fetch_trades_backfills_with_the_websocket_ids(venue: Venue) -> None:
    ex, symbol = venue.ex, "SKL/USD"
    await ex.load_markets()
    assert await ex.fetch_trades(symbol) == []  # nothing played yet
    watching = asyncio.ensure_future(ex.watch_trades(symbol))
    await venue.subscribed(1)
    await venue.play_to_end()
    await watching
    await eventually(lambda: len(ex.trades[symbol]) == len(oracle_trades("SKL-USD")))
    ws_trades = list(ex.trades[symbol])

    since = ws_trades[10]["timestamp"]
    until = ws_trades[-1]["timestamp"] + 1
    rest = await ex.fetch_trades(symbol, since=since, params={"until": until})
    after = [t for t in ws_trades if t["timestamp"] >= since]
    assert [t["id"] for t in rest] == [t["id"] for t in after]
    assert [(t["price"], t["amount"], t["side"]) for t in rest] == [(t["price"], t["amount"], t["side"]) for t in after]

    newest = await ex.fetch_trades(symbol, limit=5)
    assert [t["id"] for t in newest] == [t["id"] for t in ws_trades[-5:]]

    start = since // 1000
    raw = await ex.v3PublicGetBrokerageMarketProductsProductIdTicker(
        {"product_id": "SKL-USD", "start": str(start), "end": str(until // 1000), "limit": 3})
    assert len(raw["trades"]) == 3
    assert [t["trade_id"] for t in raw["trades"]] == [t["id"] for t in ws_trades[::-1][:3]]  # newest first
    assert all(ex.parse8601(t["time"]) >= start * 1000 for t in raw["trades"])
