"""Every venue parser against hostile input (issue 18, hostile-input tier).

A venue's frame, live or recorded, is untrusted bytes. Each parser has one documented error type,
the one its callers catch and turn into a dead letter with the raw bytes (the replay reader, the
live connectors): `binance.ParseError`, `ccxt_events.CcxtParseError`. So:
- arbitrary bytes and JSON, and valid frames with one field made hostile, raise that error or
  nothing;
- whatever a parser lets through is an event the topic's codec accepts once published: a trade
  or a book level the wire decoder refuses would make it dead-letter the whole batch of good trades
  published with it (up to 100), so a parser refuses per frame what the store cannot hold;
- valid frames parse into the events they describe.

Failing examples found by the fuzzing are kept as explicit `@example`s."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from schemas.book_ticker import BookTicker
from schemas.codecs import book, trades
from schemas.events import BookDelta, BookSnapshot, Side, Trade
from schemas.limits import MAX_PRICE, decimal_problem, stream_problem
from streams.core.venues import binance, coinbase, kraken
from streams.core.venues.ccxt_events import CcxtParseError, book_from_ccxt, iso8601_ms, trade_from_ccxt
from streams.core.venues.contract import MessageSequence, from_ccxt_symbol
from streams.core.venues.registry import VENUES
from tests.hostile.strategies import HOSTILE, JSON, SCALARS, dumps, mutated

RECV = 1_723_161_600_123_456_789

# --- what a parser lets through must publish cleanly -----------------------------------------


def publishable(events: list[Any]) -> None:
    """Each event, published as the feeds publish it, decodes on its topic."""
    for event in events:
        if isinstance(event, Trade):
            venue, symbol, rows = trades.decode(trades.encode(event.venue, event.symbol, [event]))
            assert (venue, symbol, rows[0].price, rows[0].size) == (event.venue, event.symbol, event.price, event.size)
        elif isinstance(event, BookDelta | BookSnapshot):
            _, _, items = book.decode(book.encode_book_batch(event.venue, event.symbol, [event]))
            assert items == [event]
        elif isinstance(event, BookTicker):
            _, _, items = book.decode(book.encode_ticker_batch(event.venue, event.symbol, [event]))
            assert items == [event]
            for value, what in ((event.bid_price, "bid"), (event.ask_price, "ask"), (event.bid_size, "bid size"),
                                (event.ask_size, "ask size")):
                assert decimal_problem(value, what, MAX_PRICE, allow_zero=True) is None
        else:
            raise AssertionError(f"unexpected event {event!r}")
        assert stream_problem(event.venue, event.symbol) is None
        type(event).model_validate(event.model_dump())  # what `trusted` skipped, checked now


# --- Binance (recorded lines and live messages) -----------------------------------------------

TRADE = {"e": "trade", "E": 1723161600001, "s": "ETHUSDT", "t": 123, "p": "2683.80000000", "q": "0.50000000",
         "T": 1723161600000, "m": True, "M": True}
DEPTH_SPOT = {"e": "depthUpdate", "E": 1723161600002, "s": "ETHUSDT", "U": 10, "u": 12,
              "b": [["2683.80000000", "1.50000000"]], "a": [["2683.90000000", "0.00000000"]]}
DEPTH_FUTURES = {**DEPTH_SPOT, "T": 1723161600001, "pu": 9}
TICKER_SPOT = {"u": 400900217, "s": "ETHUSDT", "b": "2683.80000000", "B": "31.21000000", "a": "2683.90000000",
               "A": "40.66000000"}
TICKER_FUTURES = {"e": "bookTicker", "u": 400900217, "E": 1723161600002, "T": 1723161600001, "s": "ETHUSDT",
                  "b": "2683.80", "B": "31.21", "a": "2683.90", "A": "40.66"}
SNAPSHOT_SPOT = {"lastUpdateId": 1027024, "bids": [["2683.80000000", "431.00000000"]],
                 "asks": [["2683.90000000", "12.00000000"]]}
SNAPSHOT_CM = {"lastUpdateId": 1027024, "E": 1723161600002, "T": 1723161600001, "symbol": "ETHUSD_PERP",
               "pair": "ETHUSD", "bids": [["2683.8", "431"]], "asks": [["2683.9", "12"]]}

BINANCE: list[tuple[binance.Market, dict[str, Any]]] = [
    ("spot", TRADE), ("spot", {"stream": "ethusdt@trade", "data": TRADE}), ("spot", DEPTH_SPOT),
    ("usdm", DEPTH_FUTURES), ("cm", {"stream": "ethusd_perp@depth@100ms", "data": {**DEPTH_FUTURES,
                                                                                  "s": "ETHUSD_PERP"}}),
    ("spot", TICKER_SPOT), ("usdm", TICKER_FUTURES), ("spot", SNAPSHOT_SPOT), ("cm", SNAPSHOT_CM),
]


def parse_binance(market: binance.Market, raw: bytes) -> list[Any]:
    try:
        events = binance.parse_message(raw, market, RECV, "ETHUSDT")
    except binance.ParseError:
        return []
    publishable(events)
    return events


def test_the_valid_binance_frames_parse() -> None:
    kinds = [type(e).__name__ for market, sample in BINANCE for e in parse_binance(market, dumps(sample))]
    assert kinds == ["Trade", "Trade", "BookDelta", "BookDelta", "BookDelta", "BookTicker", "BookTicker",
                     "BookSnapshot", "BookSnapshot"]
    [trade] = parse_binance("spot", dumps(TRADE))
    assert (trade.symbol, trade.price, trade.size, trade.side, trade.event_ts_ns) == (
        "ETH-USDT", Decimal("2683.80000000"), Decimal("0.5"), Side.SELL, 1723161600000 * 10**6)


@pytest.mark.parametrize("market", binance.MARKETS)
@example(raw=b"1 " + dumps({**TRADE, "p": "1e400"}))
@HOSTILE
@given(raw=st.binary(max_size=200) | st.builds(lambda t, b: b"%d %s" % (t, b), st.integers(0, 2**64), JSON.map(dumps)))
def test_binance_lines_raise_only_parse_error(market: binance.Market, raw: bytes) -> None:
    with contextlib.suppress(binance.ParseError):
        publishable(binance.parse_line(raw, market, "ETHUSDT"))


@pytest.mark.parametrize(("market", "sample"), BINANCE, ids=[f"{m}-{i}" for i, (m, _) in enumerate(BINANCE)])
@HOSTILE
@given(data=st.data())
def test_binance_frames_with_one_hostile_field(market: binance.Market, sample: dict[str, Any],
                                               data: st.DataObject) -> None:
    parse_binance(market, dumps(data.draw(mutated(sample))))


# Found by the fuzzing: each was accepted, then refused by the wire decoder once published, which
# would have dead-lettered the batch of good trades published with it.
BINANCE_FOUND: list[tuple[binance.Market, dict[str, Any]]] = [
    ("spot", {**TRADE, "p": "1e30"}),  # beyond Decimal(38, 8): the batch around it refused
    ("spot", {**TRADE, "q": "0.000000001"}),  # finer than 8 places
    ("spot", {**TRADE, "T": 2**62}),  # ms that overflow int64 ns
    ("spot", {**TRADE, "q": "1e999999"}),  # a million digits once published
    ("spot", {**DEPTH_SPOT, "b": [["1e31", "1"]]}),
    ("usdm", {**TICKER_FUTURES, "b": "1e40"}),
    ("spot", {**DEPTH_SPOT, "u": 2**64}),  # past UInt64 update ids
]


@pytest.mark.parametrize(("market", "message"), BINANCE_FOUND, ids=[str(i) for i in range(len(BINANCE_FOUND))])
def test_binance_values_the_topics_cannot_carry_are_refused_per_frame(market: binance.Market,
                                                                    message: dict[str, Any]) -> None:
    with pytest.raises(binance.ParseError):
        binance.parse_message(dumps(message), market, RECV, "ETHUSDT")


# --- Coinbase and Kraken recordings, ccxt's structures -----------------------------------------

COINBASE = {"channel": "market_trades", "client_id": "", "timestamp": "2024-08-09T00:00:00.5Z", "sequence_num": 3,
            "events": [{"type": "update", "trades": [
                {"trade_id": "1", "product_id": "BTC-USD", "price": "60000.01", "size": "0.5", "side": "BUY",
                 "time": "2024-08-09T00:00:00.123456Z"},
                {"trade_id": "2", "product_id": "BTC-USD", "price": "60000", "size": "0.25", "side": "SELL",
                 "time": "2024-08-09T00:00:00.1Z"}]}]}
KRAKEN = {"channel": "trade", "type": "update", "data": [
    {"symbol": "BTC/USD", "side": "buy", "price": 60000.1, "qty": 0.5, "ord_type": "market", "trade_id": 7,
     "timestamp": "2024-08-09T00:00:00.123456Z"}]}
KRAKEN_BOOK = {"channel": "book", "type": "update", "data": [
    {"symbol": "BTC/USD", "bids": [{"price": 60000.0, "qty": 1.0}], "asks": [], "checksum": 123,
     "timestamp": "2024-08-09T00:00:00.1Z"}]}


def recorded(parse: Any, message: Any) -> list[Trade]:
    try:
        events = parse(message, RECV)
    except CcxtParseError:
        return []
    publishable(events)
    return events


def test_the_valid_recorded_frames_parse() -> None:
    assert [(t.trade_id, t.price, t.side) for t in recorded(coinbase.recorded_trades, COINBASE)] == [
        ("2", Decimal("60000"), Side.SELL), ("1", Decimal("60000.01"), Side.BUY)]
    assert [(t.symbol, t.price, t.size) for t in recorded(kraken.recorded_trades, KRAKEN)] == [
        ("BTC-USD", Decimal("60000.1"), Decimal("0.5"))]


RECORDED = [(coinbase.recorded_trades, COINBASE), (kraken.recorded_trades, KRAKEN)]


@pytest.mark.parametrize(("parse", "sample"), RECORDED, ids=["coinbase", "kraken"])
@HOSTILE
@given(data=st.data())
def test_recorded_frames_with_one_hostile_field(parse: Any, sample: dict[str, Any], data: st.DataObject) -> None:
    recorded(parse, json.loads(dumps(data.draw(mutated(sample)))))


@pytest.mark.parametrize("parse", [coinbase.recorded_trades, kraken.recorded_trades], ids=["coinbase", "kraken"])
@example(value={"channel": "market_trades", "events": 5})
@example(value={"channel": "market_trades", "events": [{"trades": 5}]})
@HOSTILE
@given(value=JSON)
def test_recorded_arbitrary_json_raises_only_ccxt_parse_error(parse: Any, value: Any) -> None:
    recorded(parse, value)


UNIFIED_TRADE = {"id": "5", "timestamp": 1723161600000, "price": 60000.5, "amount": 0.25, "side": "buy"}


@example(trade={**UNIFIED_TRADE, "price": "1e30"})
@example(trade={**UNIFIED_TRADE, "timestamp": 2**62})
@example(trade={**UNIFIED_TRADE, "amount": 1e-9})
@HOSTILE
@given(trade=st.dictionaries(st.sampled_from(["id", "timestamp", "price", "amount", "side"]), SCALARS)
       | mutated(UNIFIED_TRADE))
def test_ccxt_trades_raise_only_ccxt_parse_error(trade: dict[str, Any]) -> None:
    for venue in ("coinbase", "kraken"):
        with contextlib.suppress(CcxtParseError):
            publishable([trade_from_ccxt(venue, "BTC-USD", trade, RECV)])


UNIFIED_BOOK = {"bids": [[60000.0, 1.0], [59999.5, 2.0]], "asks": [[60000.5, 0.5]], "timestamp": 1723161600000,
                "nonce": 9}


@example(ob={**UNIFIED_BOOK, "bids": [[1e31, 1.0]]})
@HOSTILE
@given(ob=mutated(UNIFIED_BOOK) | st.dictionaries(st.sampled_from(["bids", "asks", "timestamp"]), JSON))
def test_ccxt_books_raise_only_ccxt_parse_error(ob: dict[str, Any]) -> None:
    with contextlib.suppress(CcxtParseError):
        publishable([book_from_ccxt("kraken", "BTC-USD", ob, 10, 3, RECV)])


@HOSTILE
@given(value=JSON)
def test_the_venue_checks_never_raise(value: Any) -> None:
    """What the connectors ask every frame before ccxt parses it: never an exception."""
    iso8601_ms(value)
    for venue in VENUES.values():
        sequence = venue.message_sequence()
        if sequence is not None:
            sequence.observe(value)
        venue.book_checksums(value)
    MessageSequence("sequence_num").observe(value)
    kraken.VENUE.book_checksums({"channel": "book", "data": value})


@HOSTILE
@given(text=st.text(max_size=30))
def test_ccxt_symbols_raise_only_value_error(text: str) -> None:
    try:
        symbol = from_ccxt_symbol(text)
    except ValueError:  # InvalidSymbol is one
        return
    assert stream_problem("kraken", symbol) is None


def test_kraken_book_frames_name_their_checksums() -> None:
    assert kraken.VENUE.book_checksums(KRAKEN_BOOK) == (("BTC/USD", 123),)
