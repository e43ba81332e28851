"""The Kraken double behind ccxt.pro's own `kraken` class (WebSocket v2, REST /0/public): markets,
trades and books as ccxt sees them, checked against the v1 captures read here with plain json (an
oracle that shares no code with the double), and what ccxt 4.5.90 does when the double misbehaves."""

from __future__ import annotations

import asyncio
import itertools
import json
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.pro
import pytest
from ccxt.base.errors import ChecksumError, NetworkError, RequestTimeout

from infra.dev.exchange_double.kraken import KrakenDouble
from infra.dev.exchange_double.server import ExchangeDouble
from streams.ingest.venues.ccxt_client import point_urls_at
from tests.shared_data import DATA

CAPTURES = DATA / "cryptofeed"
RETRY_S = 0.05  # a connector backs off a moment before it watches again after an error
KEEPALIVE_MS = 250  # ccxt pings this often; a dead reader is given up after two missed pongs
# the gap pair: its first update after the skipped one leaves ccxt's book 10 deep on both sides
# (on XMR/USD a side is left 9 deep, and ccxt's checksum loop raises KeyError(0) before comparing)
GAP_SYMBOL = "BTC/CHF"

Levels = list[list[float]]
V1Side = dict[Decimal, tuple[str, str]]  # price -> (price, volume) as recorded


# ---- the oracle: the v1 captures read with plain json --------------------------------------------


def captured(name: str) -> Iterator[Any]:
    """What the capture's connection received: lines `<seconds>: <json>`."""
    with (CAPTURES / name).open() as f:
        for line in f:
            stamp, sep, body = line.partition(": ")
            if sep and stamp.replace(".", "", 1).isdigit():
                yield json.loads(body)


def v2_name(wsname: str) -> str:
    return "/".join({"XBT": "BTC", "XDG": "DOGE"}.get(asset, asset) for asset in wsname.split("/"))


def recorded_trades() -> dict[str, list[tuple[float, float, str, int]]]:
    """(price, amount, side, timestamp ms) of each recorded trade, per v2 symbol, in order."""
    trades: dict[str, list[tuple[float, float, str, int]]] = {}
    for msg in captured("KRAKEN.ws.48.0"):
        if isinstance(msg, list) and msg[-2] == "trade":
            for price, volume, time, side, *_ in msg[1]:
                row = (float(price), float(volume), "buy" if side == "b" else "sell", int(Decimal(time) * 1000))
                trades.setdefault(v2_name(msg[-1]), []).append(row)
    return trades


def v1_checksum(asks: V1Side, bids: V1Side) -> int:
    """Kraken's v1 recipe over the recorded strings: top 10 asks up, top 10 bids down."""

    def digits(text: str) -> str:
        return text.replace(".", "").lstrip("0")

    text = "".join(
        digits(price) + digits(volume)
        for side, reverse in ((asks, False), (bids, True))
        for price, volume in (side[p] for p in sorted(side, reverse=reverse)[:10])
    )
    return zlib.crc32(text.encode())


def recorded_books() -> dict[str, tuple[V1Side, V1Side]]:
    """Each pair's book at the end of the capture: snapshot `as`/`bs`, then every `a`/`b` level.
    Each update's CRC32 `c` is checked on the way, so the oracle itself is known right."""
    books: dict[str, tuple[V1Side, V1Side]] = {}
    for msg in captured("KRAKEN.ws.50.0"):
        if not isinstance(msg, list):
            continue
        asks, bids = books.setdefault(v2_name(msg[-1]), ({}, {}))
        for part in msg[1:-2]:
            if "as" in part:
                asks.clear()
                bids.clear()
            for key, side in (("as", asks), ("bs", bids), ("a", asks), ("b", bids)):
                for price, volume, *_ in part.get(key, []):
                    if Decimal(volume) == 0:
                        side.pop(Decimal(price), None)
                    else:
                        side[Decimal(price)] = (price, volume)
            if "c" in part:
                assert v1_checksum(asks, bids) == int(part["c"])
        # the subscription was 1000 deep and the books stay thinner, so nothing is ever truncated
        assert len(asks) <= 1000 and len(bids) <= 1000
    return books


TRADES = recorded_trades()
BOOKS = recorded_books()
SYMBOLS = sorted(BOOKS)
TRADE_SYMBOLS = sorted(TRADES)


def oracle_top(symbol: str, side: str, depth: int) -> Levels:
    asks, bids = BOOKS[symbol]
    levels = asks if side == "asks" else bids
    prices = sorted(levels, reverse=side == "bids")[:depth]
    return [[float(p), float(levels[p][1])] for p in prices]


# ---- ccxt as the connectors use it, plus checks -------------------------------------------------


def decimals(tick: float) -> int:
    return max(0, -int(Decimal(str(tick)).as_tuple().exponent))


def kraken_v2_checksum(book: Any, market: dict[str, Any]) -> int:
    """Kraken's v2 checksum over ccxt's own book, each number written at the pair's precision."""
    price_digits, qty_digits = decimals(market["precision"]["price"]), decimals(market["precision"]["amount"])
    text = "".join(
        f"{price:.{price_digits}f}".replace(".", "").lstrip("0") + f"{qty:.{qty_digits}f}".replace(".", "").lstrip("0")
        for side in ("asks", "bids")
        for price, qty in list(book[side])[:10]
    )
    return zlib.crc32(text.encode())


class CheckingKraken(ccxt.pro.kraken):
    """Stock ccxt with a passive look after every book frame: does the frame's checksum match ccxt's
    book? (ccxt's own check is off by default, and cannot run: see the test that pins it.)"""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.checked = 0
        self.mismatches: list[str] = []

    def handle_order_book(self, client: Any, message: dict[str, Any]) -> None:
        super().handle_order_book(client, message)
        symbol = message["data"][0]["symbol"]
        if symbol in self.orderbooks:
            self.checked += 1
            if kraken_v2_checksum(self.orderbooks[symbol], self.market(symbol)) != message["data"][0]["checksum"]:
                self.mismatches.append(symbol)


class VerifyingKraken(ccxt.pro.kraken):
    """ccxt's own checksum check (`options.watchOrderBook.checksum`) made runnable, as a connector
    would have to: ccxt hands `format_number` the float levels of its book, which wants strings,
    so they are written at the pair's precision first (ccxt asks price, then qty, level by level);
    and after a failure ccxt drops the book but stays subscribed, so an update arriving before the
    new snapshot would raise KeyError in ccxt's receive loop: such updates are ignored."""

    _digits: Iterator[int] = iter(())

    def handle_order_book(self, client: Any, message: dict[str, Any]) -> None:
        data = message["data"][0]
        if message["type"] == "update" and data["symbol"] not in self.orderbooks:
            return
        precision = self.market(data["symbol"])["precision"]
        self._digits = itertools.cycle((decimals(precision["price"]), decimals(precision["amount"])))
        super().handle_order_book(client, message)

    def format_number(self, data: Any) -> str:
        if not isinstance(data, str):
            data = f"{data:.{next(self._digits)}f}"
        return str(super().format_number(data))


@dataclass
class Env:
    double: ExchangeDouble
    venue: KrakenDouble
    base: str
    connect: Callable[..., Any]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    venue = KrakenDouble(CAPTURES, speed=None)
    double = ExchangeDouble([venue])
    base = await double.start()
    exchanges: list[Any] = []

    def connect(cls: type = CheckingKraken, **config: Any) -> Any:
        ex = cls({"enableRateLimit": False, **config})
        ex.urls["api"] = point_urls_at(ex.urls["api"], base, "kraken")
        exchanges.append(ex)
        return ex

    try:
        yield Env(double, venue, base, connect)
    finally:
        for ex in exchanges:
            await ex.close()
        await double.stop()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def subscribed(venue: KrakenDouble, *channels: str, connections: int = 1) -> None:
    """The double has taken the subscriptions, so playback loses nothing."""
    await until(lambda: sum(1 for c in venue.connections if set(channels) <= c.channels) >= connections)


def ccxt_top(ex: Any, symbol: str, side: str) -> Levels:
    return [list(level) for level in ex.orderbooks[symbol][side]]


def double_top(venue: KrakenDouble, symbol: str, side: str, depth: int) -> Levels:
    levels = (venue.books[symbol].asks if side == "asks" else venue.books[symbol].bids).top(depth)
    return [[float(level.price), float(level.qty)] for level in levels.values()]


def books_match(ex: Any, venue: KrakenDouble, symbol: str, depth: int) -> bool:
    return symbol in ex.orderbooks and all(
        ccxt_top(ex, symbol, side) == oracle_top(symbol, side, depth) == double_top(venue, symbol, side, depth)
        for side in ("asks", "bids")
    )


def ccxt_trades(ex: Any, symbol: str) -> list[tuple[str, float, float, str, int]]:
    return [(t["id"], t["price"], t["amount"], t["side"], t["timestamp"]) for t in ex.trades.get(symbol, [])]


def expected_trades(symbol: str) -> list[tuple[str, float, float, str, int]]:
    """The recording's trades with the ids the double gives them: 1, 2, 3... per pair."""
    return [(str(i), *row) for i, row in enumerate(TRADES[symbol], start=1)]


async def watching(coro_factory: Callable[[], Any], results: list[Any]) -> None:
    """Call a ccxt watch again and again, as a connector does, keeping what each call returned or
    raised. After an error it waits a moment: when ccxt rejects a watch while none is pending, it
    keeps the rejected future and hands it to every new call until the next frame for that stream
    is handled, so a retry that never yields to the loop spins on the same error for ever."""
    while True:
        try:
            results.append(await coro_factory())
        except asyncio.CancelledError:
            raise
        except Exception as error:
            results.append(error)
            await asyncio.sleep(RETRY_S)


# ---- the tests --------------------------------------------------------------------------------


async def test_load_markets_knows_the_recorded_pairs(env: Env) -> None:
    ex = env.connect()
    await ex.load_markets()
    recorded = json.loads((CAPTURES / "KRAKEN.0").read_text().split("\n")[0].partition(": ")[2])["result"]
    for symbol in SYMBOLS:
        market = ex.market(symbol)
        info = recorded[market["id"]]
        assert v2_name(info["wsname"]) == symbol
        assert market["active"] and market["spot"]
        assert market["precision"]["price"] == float(Decimal(1).scaleb(-info["pair_decimals"]))
    assert ex.market("BTC/CHF")["id"] == "XBTCHF"
    assert ex.currencies["BTC"]["id"] == "XXBT"
    # the exchange has traded nothing before playback: REST has nothing to backfill yet
    assert await ex.fetch_trades("XMR/USD") == []


async def test_ccxt_receives_every_trade_once_and_the_books_of_the_recording(env: Env) -> None:
    ex = env.connect()
    deep = env.connect()  # a second connection, 100 deep: every depth is its own view of the book
    await ex.load_markets()
    await deep.load_markets()
    tasks = [
        asyncio.create_task(ex.watch_trades_for_symbols(TRADE_SYMBOLS)),
        asyncio.create_task(ex.watch_order_book_for_symbols(SYMBOLS)),
        asyncio.create_task(deep.watch_order_book_for_symbols(SYMBOLS, 100)),
    ]
    try:
        await subscribed(env.venue, *(f"book:{s}" for s in SYMBOLS), connections=2)
        await subscribed(env.venue, *(f"trade:{s}" for s in TRADE_SYMBOLS))
        env.double.play()
        await env.venue.finished.wait()
        await until(
            lambda: (
                all(books_match(ex, env.venue, s, 10) and books_match(deep, env.venue, s, 100) for s in SYMBOLS)
                and all(len(ex.trades.get(s, [])) >= len(TRADES[s]) for s in TRADE_SYMBOLS)
            )
        )
    finally:
        for task in tasks:
            task.cancel()
    for symbol in TRADE_SYMBOLS:
        assert ccxt_trades(ex, symbol) == expected_trades(symbol)
    for symbol in SYMBOLS:
        assert books_match(ex, env.venue, symbol, 10) and books_match(deep, env.venue, symbol, 100)
    # every book frame's checksum matched ccxt's book right after ccxt applied it
    assert ex.checked > 1000 and deep.checked > 2000
    assert ex.mismatches == [] and deep.mismatches == []


async def test_the_wire_format_is_kraken_v2(env: Env) -> None:
    """What a plain client sees: the greeting, acks, errors, pong, full-precision numbers."""
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{env.base}/kraken/v2") as ws:
        status = await ws.receive_json()
        assert status["channel"] == "status" and status["data"][0]["api_version"] == "v2"
        await ws.send_json(
            {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/CHF", "XBT/CHF"]}, "req_id": 7}
        )
        ack, error = await ws.receive_json(), await ws.receive_json()
        assert ack["success"] and ack["req_id"] == 7
        assert ack["result"] == {"channel": "book", "depth": 10, "snapshot": True, "symbol": "BTC/CHF"}
        assert not error["success"] and error["symbol"] == "XBT/CHF" and "not supported" in error["error"]
        await ws.send_json({"method": "ping", "req_id": 8})
        pong = await ws.receive_json()
        assert pong["method"] == "pong" and pong["req_id"] == 8
        env.double.play()
        while True:
            text = await ws.receive_str()
            if '"book"' in text:
                break
        # Kraken's own recipe: parse with Decimal, so the trailing zeros the checksum covers stay
        snapshot = json.loads(text, parse_float=Decimal)
        data = snapshot["data"][0]
        assert snapshot["type"] == "snapshot" and len(data["asks"]) == len(data["bids"]) == 10
        assert '"qty":0.15000000' in text  # the first recorded ask, at lot_decimals
        digits = "".join(
            str(level[key]).replace(".", "").lstrip("0")
            for side in ("asks", "bids")
            for level in data[side]
            for key in ("price", "qty")
        )
        assert zlib.crc32(digits.encode()) == data["checksum"]
        await ws.send_json({"method": "unsubscribe", "params": {"channel": "book", "symbol": ["BTC/CHF"]}})
        while (reply := await ws.receive_json()).get("method") != "unsubscribe":
            pass
        assert reply["success"] and reply["result"] == {"channel": "book", "symbol": "BTC/CHF"}


async def test_ticker_is_translated(env: Env) -> None:
    ex = env.connect()
    await ex.load_markets()
    env.double.play()
    await env.venue.finished.wait()
    last_v1 = [m[1] for m in captured("KRAKEN.ws.49.0") if isinstance(m, list) and m[-1] == "XMR/USD"][-1]
    ticker = await asyncio.wait_for(ex.watch_ticker("XMR/USD"), 5)  # its snapshot: the latest ticker
    assert ticker["last"] == float(last_v1["c"][0])
    assert (ticker["bid"], ticker["ask"]) == (float(last_v1["b"][0]), float(last_v1["a"][0]))
    assert ticker["baseVolume"] == float(last_v1["v"][1])


def test_stock_ccxt_cannot_verify_kraken_checksums() -> None:
    """Pins why the gap tests below need help: in ccxt 4.5.90 the check is off by default, and
    switched on it hands floats to `format_number`, which splits strings (AttributeError, raised
    inside ccxt's receive loop, which then stops reading)."""
    ex = ccxt.pro.kraken()
    assert ex.options["watchOrderBook"]["checksum"] is False
    with pytest.raises(AttributeError):
        ex.format_number(56218.3)


async def test_skip_goes_unnoticed_by_stock_ccxt(env: Env) -> None:
    ex = env.connect()
    await ex.load_markets()
    results: list[Any] = []
    task = asyncio.create_task(watching(lambda: ex.watch_order_book(GAP_SYMBOL), results))
    try:
        await subscribed(env.venue, f"book:{GAP_SYMBOL}")
        env.venue.skip()
        env.double.play()
        await env.venue.finished.wait()
        await until(lambda: ex.checked >= 100)
    finally:
        task.cancel()
    assert [rec.channel for rec in env.venue.faults.skipped] == [f"book:{GAP_SYMBOL}"]
    assert not any(isinstance(r, Exception) for r in results)  # ccxt raised nothing...
    assert ex.mismatches  # ...while the frames' checksums no longer matched its book


async def test_skip_raises_checksum_error_and_a_new_watch_recovers(env: Env) -> None:
    ex = env.connect(VerifyingKraken, options={"watchOrderBook": {"checksum": True}})
    await ex.load_markets()
    results: list[Any] = []
    task = asyncio.create_task(watching(lambda: ex.watch_order_book(GAP_SYMBOL), results))
    try:
        await subscribed(env.venue, f"book:{GAP_SYMBOL}")
        env.venue.skip()
        env.double.play()
        await env.venue.finished.wait()
        await until(lambda: books_match(ex, env.venue, GAP_SYMBOL, 10))
    finally:
        task.cancel()
    errors = [r for r in results if isinstance(r, Exception)]
    # one checksum failure (a retry before the new snapshot may be handed the same error again)
    assert errors and len({id(e) for e in errors}) == 1
    assert type(errors[0]) is ChecksumError and isinstance(errors[0], NetworkError)
    # the watch after the error subscribed again on the same socket and got the book as it was then
    assert len(env.venue.connections) == 1
    assert books_match(ex, env.venue, GAP_SYMBOL, 10)


async def test_garbage_kills_ccxts_reader_until_its_keepalive_gives_up(env: Env) -> None:
    """Garbage that starts like JSON (`{...`, `[...`) raises inside ccxt's receive loop, which stops
    reading: the watch fails only when the keepalive misses its pongs (RequestTimeout). Garbage
    that does not (`\\x00\\xff...`, `<html>...`) is handed to the handler as text and ignored."""
    broken, fine = env.connect(), env.connect()
    for ex in (broken, fine):
        ex.streaming = {**ex.streaming, "keepAlive": KEEPALIVE_MS}
        await ex.load_markets()
    broken_results: list[Any] = []
    fine_results: list[Any] = []
    tasks = [asyncio.create_task(watching(lambda: broken.watch_order_book("XMR/USD"), broken_results))]
    await subscribed(env.venue, "book:XMR/USD")
    tasks.append(asyncio.create_task(watching(lambda: fine.watch_order_book("XMR/USD"), fine_results)))
    try:
        await subscribed(env.venue, "book:XMR/USD", connections=2)
        env.venue.garbage(2)  # the first frame of each: `{"e":"trade",...` to broken, `\x00\xff...` to fine
        env.double.play()
        await until(lambda: any(isinstance(r, Exception) for r in broken_results))
        await env.venue.finished.wait()
        await until(lambda: all(books_match(ex, env.venue, "XMR/USD", 10) for ex in (broken, fine)))
    finally:
        for task in tasks:
            task.cancel()
    errors = [r for r in broken_results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], RequestTimeout) and isinstance(errors[0], NetworkError)
    assert not any(isinstance(r, Exception) for r in fine_results)
    assert env.venue.faults.garbage_sent == 2 and env.venue.played == len(env.venue.recording)


async def test_stall_times_out_and_a_new_watch_reconnects(env: Env) -> None:
    """A stalled socket stays open and says nothing, pongs included: ccxt notices by its keepalive."""
    ex = env.connect()
    ex.streaming = {**ex.streaming, "keepAlive": KEEPALIVE_MS}
    await ex.load_markets()
    results: list[Any] = []
    task = asyncio.create_task(watching(lambda: ex.watch_order_book("ETH/CHF"), results))
    try:
        await subscribed(env.venue, "book:ETH/CHF")
        assert env.venue.stall() == 1
        env.double.play()
        await until(lambda: any(isinstance(r, Exception) for r in results))
        await env.venue.finished.wait()
        await until(lambda: books_match(ex, env.venue, "ETH/CHF", 10))
    finally:
        task.cancel()
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], RequestTimeout)
    assert [c.stalled for c in env.venue.connections] == [False]  # the new connection is not stalled


async def test_drop_fails_the_pending_watch_and_a_new_watch_reconnects(env: Env) -> None:
    ex = env.connect()
    await ex.load_markets()
    results: list[Any] = []
    task = asyncio.create_task(watching(lambda: ex.watch_order_book("SC/EUR"), results))
    try:
        await subscribed(env.venue, "book:SC/EUR")
        first = env.venue.connections[0]
        assert env.venue.drop() == 1
        await until(lambda: any(isinstance(r, Exception) for r in results))
        await subscribed(env.venue, "book:SC/EUR")  # the next watch dialled again and subscribed
        assert env.venue.connections[0] is not first
        env.double.play()
        await env.venue.finished.wait()
        await until(lambda: books_match(ex, env.venue, "SC/EUR", 10))
    finally:
        task.cancel()
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and type(errors[0]) is NetworkError
    assert "closed" in str(errors[0])


async def test_fetch_trades_since_backfills_with_the_websocket_ids(env: Env) -> None:
    live = env.connect()
    await live.load_markets()
    task = asyncio.create_task(live.watch_trades_for_symbols(TRADE_SYMBOLS))
    try:
        await subscribed(env.venue, *(f"trade:{s}" for s in TRADE_SYMBOLS))
        env.double.play()
        await env.venue.finished.wait()
        await until(lambda: all(len(live.trades.get(s, [])) == len(TRADES[s]) for s in TRADE_SYMBOLS))
    finally:
        task.cancel()
    late = env.connect()  # connected after the fact: REST is all it has
    for symbol in TRADE_SYMBOLS:
        seen = ccxt_trades(live, symbol)
        since = seen[1][4]  # from the second trade on
        backfill = await late.fetch_trades(symbol, since=since)
        assert [(t["id"], t["price"], t["amount"], t["side"], t["timestamp"]) for t in backfill] == [
            t for t in seen if t[4] >= since
        ]
    # Kraken's cursor: `since` = the `last` of an answer returns only what came after it
    answer = await late.publicGetTrades({"pair": "SCEUR", "since": "1618678155718950000"})
    assert [row[6] for row in answer["result"]["SCEUR"]] == [3, 4, 5, 6]
