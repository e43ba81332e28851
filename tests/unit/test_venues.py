"""The venue registry and adapter contract (streams.core.venues), feed and symbol spelling,
reconnect backoff, and the ccxt structure -> event mapping. Hand-worked expectations."""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from decimal import Decimal

import ccxt.pro as ccxtpro
import pytest

from schemas.events import Side
from schemas.venues import Feed, InvalidFeed, split_feed
from streams.core.backoff import Backoff
from streams.core.orderbook import rules_for_venue
from streams.core.venues import kraken, registry
from streams.core.venues.ccxt_events import CcxtParseError, book_from_ccxt, to_decimal, trade_from_ccxt
from streams.core.venues.contract import (
    Backfill,
    BookRules,
    MessageSequence,
    Venue,
    from_ccxt_symbol,
    to_ccxt_symbol,
)
from streams.core.venues.registry import LIVE_VENUES, VENUES, ccxt_symbol, parse_feed, parse_feeds
from streams.ingest.venues.ccxt_client import point_urls_at


def test_feeds_parse_normalise_and_deduplicate() -> None:
    assert parse_feed(" Binance:eth-usdt ") == Feed("binance", "ETH-USDT")
    assert parse_feeds("binance:ETH-USDT, kraken:BTC-USD,binance:eth-usdt,") == (
        Feed("binance", "ETH-USDT"), Feed("kraken", "BTC-USD"))
    assert parse_feeds(["coinbase:SKL-USD"]) == (Feed("coinbase", "SKL-USD"),)
    assert parse_feeds("") == ()


@pytest.mark.parametrize(("text", "reason"), [
    ("ETH-USDT", "expected venue:SYMBOL"),
    ("binance:", "expected venue:SYMBOL"),
    ("ftx:ETH-USDT", "unknown venue 'ftx'; known venues: binance, binance-usdm, coinbase, kraken"),
    ("binance-coinm:ETH-USD", "unknown venue 'binance-coinm'"),
    ("binance:ETHUSDT", "the symbol must be BASE-QUOTE"),
    ("binance:ETH/USDT", "the symbol must be BASE-QUOTE"),
])
def test_bad_feeds_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(InvalidFeed, match=reason.replace("(", r"\(")):
        parse_feed(text)


def test_symbols_map_to_ccxt_and_back() -> None:
    assert to_ccxt_symbol("ETH-USDT") == "ETH/USDT"
    assert to_ccxt_symbol("eth-usdt", "linear") == "ETH/USDT:USDT"
    assert to_ccxt_symbol("ETH-USD", "inverse") == "ETH/USD:ETH"
    assert ccxt_symbol(Feed("binance-usdm", "BTC-USDT")) == "BTC/USDT:USDT"
    assert ccxt_symbol(Feed("binance", "BTC-USDT")) == "BTC/USDT"
    assert ccxt_symbol(Feed("kraken", "BTC-USD")) == "BTC/USD"
    assert ccxt_symbol(Feed("coinbase", "SKL-USD")) == "SKL/USD"
    assert from_ccxt_symbol("ETH/USDT:USDT") == "ETH-USDT"
    assert from_ccxt_symbol("SKL/USD") == "SKL-USD"
    assert {v.name for v in VENUES.values()} == set(VENUES)


def test_spelling_alone_accepts_any_venue_the_registry_only_live_ones() -> None:
    assert split_feed("FTX:btc-usd") == Feed("ftx", "BTC-USD")
    with pytest.raises(InvalidFeed, match="unknown venue 'binance-coinm'"):
        parse_feed("binance-coinm:ETH-USD")  # replayed only: no live connector
    assert set(LIVE_VENUES) == {"binance", "binance-usdm", "coinbase", "kraken"}
    assert set(VENUES) == set(LIVE_VENUES) | {"binance-coinm", "sim"}


# ---- the adapter contract: every registered venue --------------------------------------------


@pytest.mark.parametrize("module", registry.MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_venue_module_satisfies_the_adapter_contract(module: object) -> None:
    v = module.VENUE  # type: ignore[attr-defined]
    assert isinstance(v, Venue) and VENUES[v.name] is v
    assert v.name == v.name.strip().lower() and ":" not in v.name
    assert isinstance(v.book_rules, BookRules) and rules_for_venue(v.name) is v.book_rules
    assert isinstance(v.backfill, Backfill) and isinstance(v.backfill.params, Mapping)
    assert v.kind in ("spot", "linear", "inverse")
    assert v.book_limit is None or v.book_limit > 0
    assert isinstance(v.ccxt_options, Mapping)
    if v.live:
        assert v.name in LIVE_VENUES
        assert isinstance(getattr(ccxtpro, str(v.ccxt_id)), type)  # a ccxt.pro exchange class
    else:
        assert v.name not in LIVE_VENUES
    # symbol spelling: ccxt's unified form of the venue's market type, and back
    quote = "USD" if v.kind == "inverse" else "USDT"
    unified = v.ccxt_symbol(f"eth-{quote.lower()}")
    assert unified == {"spot": f"ETH/{quote}", "linear": f"ETH/{quote}:{quote}", "inverse": "ETH/USD:ETH"}[v.kind]
    assert from_ccxt_symbol(unified) == f"ETH-{quote}"
    # the checks: a fresh per-connection sequence each time (or none), checksums of any message
    first, second = v.message_sequence(), v.message_sequence()
    assert first is None or (isinstance(first, MessageSequence) and first is not second)
    messages: list[object] = [{}, [], "x", {"channel": "book", "data": "?"}, {"type": "update"}]
    for message in messages:
        assert list(v.book_checksums(message)) == [] or v is kraken.VENUE
    got = v.book_checksum([[101.0, 1.0]], [[100.0, 2.0]], 0.1, 0.01)
    assert got is None or isinstance(got, int)


def test_book_policies_of_the_venues() -> None:
    assert {n: (v.book_rules.name, v.book_update_id_is_venue_id, v.book_limit) for n, v in VENUES.items()} == {
        "binance": ("spot", True, None),
        "binance-usdm": ("futures", True, None),
        "binance-coinm": ("futures", False, None),
        "coinbase": ("whole_books", False, None),
        "kraken": ("whole_books", False, 100),
        "sim": ("spot", False, None),
    }
    assert {n: v.consecutive_trade_ids for n, v in LIVE_VENUES.items()} == {
        "binance": True, "binance-usdm": True, "coinbase": True, "kraken": False}
    assert VENUES["binance"].backfill == Backfill({"fetchTradesMethod": "publicGetTrades"}, since=False)
    assert VENUES["coinbase"].backfill == Backfill(until=True)
    assert VENUES["kraken"].backfill == Backfill()


def test_coinbase_message_sequence_reports_a_hole_once_and_follows_the_venue() -> None:
    seq = VENUES["coinbase"].message_sequence()
    assert seq is not None and VENUES["binance"].message_sequence() is None
    assert [seq.observe({"sequence_num": n}) for n in (7, 8, 9)] == [None, None, None]
    assert seq.observe({"channel": "heartbeats"}) is None  # no counter: not judged
    assert seq.observe({"sequence_num": 11}) == "message 10 expected, got 11"
    assert seq.observe({"sequence_num": 12}) is None  # counting goes on from what came
    assert seq.observe({"sequence_num": True}) is None and seq.observe([1]) is None


def test_kraken_checksums_are_read_from_book_messages_and_computed_the_venues_way() -> None:
    message = {"channel": "book", "type": "update", "data": [
        {"symbol": "BTC/USD", "checksum": 123, "bids": [], "asks": []}, {"symbol": "ETH/USD", "checksum": "x"}]}
    assert list(kraken.VENUE.book_checksums(message)) == [("BTC/USD", 123), ("ETH/USD", None)]
    assert kraken.VENUE.book_checksums({"channel": "trade", "data": []}) == ()
    # Kraken's rule written out by hand: asks then bids, price then quantity at the pair's
    # precision, "." and leading zeros removed
    asks, bids = [[0.05005, 0.00000500], [0.05010, 1.5]], [[0.05000, 2.0]]
    text = "5005" + "500" + "5010" + "150000000" + "5000" + "200000000"
    assert kraken.VENUE.book_checksum(asks, bids, 0.00001, 0.00000001) == zlib.crc32(text.encode())


def test_urls_are_pointed_at_the_double_keeping_their_paths() -> None:
    urls = {
        "public": "https://api.binance.com/api/v3",
        "ws": {"spot": "wss://stream.binance.com:9443/ws", "list": ["wss://x.example/v2"]},
        "root": "wss://advanced-trade-ws.coinbase.com",
        "cost": 5,
    }
    assert point_urls_at(urls, "http://127.0.0.1:18900", "binance") == {
        "public": "http://127.0.0.1:18900/binance/api/v3",
        "ws": {"spot": "ws://127.0.0.1:18900/binance/ws", "list": ["ws://127.0.0.1:18900/binance/v2"]},
        "root": "ws://127.0.0.1:18900/binance",
        "cost": 5,
    }
    assert point_urls_at("wss://ws.kraken.com/v2", "https://double.local", "kraken") == "wss://double.local/kraken/v2"


def test_backoff_doubles_its_ceiling_with_full_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(3))
    ceilings, delays = [], []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next())
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == 6  # jittered, not in step
    backoff.reset()
    assert backoff.ceiling() == 0.5
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_jitter_spreads_many_clients_over_the_whole_window() -> None:
    draws = [Backoff(1.0, 8.0, random.Random(seed)).next() for seed in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55  # uniform on [0, 1]: mean 1/2
    assert min(draws) < 0.01 and max(draws) > 0.99


def test_ccxt_floats_become_the_exchanges_decimals() -> None:
    assert to_decimal(2683.8) == Decimal("2683.80000000")
    assert str(to_decimal(0.1 + 0.2)) == "0.30000000000000004"  # a float that is not a short decimal stays exact
    assert to_decimal("0.00200000") == Decimal("0.002")
    with pytest.raises(CcxtParseError):
        to_decimal(None)


def test_ccxt_trade_maps_to_a_trade_event() -> None:
    raw = {"id": "1520538925", "timestamp": 1723161255611, "price": 2683.8, "amount": 0.002, "side": "sell"}
    trade = trade_from_ccxt("binance", "ETH-USDT", raw, recv_ts_ns=5)
    assert (trade.trade_id, trade.price, trade.size, trade.side) == ("1520538925", Decimal("2683.8"),
                                                                     Decimal("0.002"), Side.SELL)
    assert trade.event_ts_ns == 1723161255611 * 1_000_000 and trade.recv_ts_ns == 5
    assert trade_from_ccxt("kraken", "BTC-USD", {**raw, "id": None, "side": None}, 5).trade_id == (
        "1723161255611-2683.8-0.002-None")
    assert trade_from_ccxt("kraken", "BTC-USD", {**raw, "side": None}, 5).side is Side.UNKNOWN
    for bad in ({**raw, "price": 0}, {**raw, "timestamp": None}, {**raw, "amount": "x"}):
        with pytest.raises(CcxtParseError):
            trade_from_ccxt("binance", "ETH-USDT", bad, 5)


def test_ccxt_book_maps_to_a_top_n_snapshot() -> None:
    book = {"bids": [[100.5, 1.0], [100.0, 2.5], [99.0, 3.0]], "asks": [[101.0, 0.5], [102.0, 1.0]],
            "timestamp": 1_700_000_000_000, "nonce": 42}
    snap = book_from_ccxt("binance", "ETH-USDT", book, depth=2, update_id=42, recv_ts_ns=9)
    assert snap.bids == ((Decimal("100.5"), Decimal(1)), (Decimal(100), Decimal("2.5")))
    assert snap.asks == ((Decimal(101), Decimal("0.5")), (Decimal(102), Decimal(1)))
    assert (snap.last_update_id, snap.event_ts_ns, snap.recv_ts_ns) == (42, 1_700_000_000_000 * 1_000_000, 9)
    no_time = book_from_ccxt("kraken", "BTC-USD", {**book, "timestamp": None}, 5, 7, recv_ts_ns=9)
    assert no_time.event_ts_ns == 9
    with pytest.raises(CcxtParseError):
        book_from_ccxt("binance", "ETH-USDT", {"bids": [[None, 1.0]], "asks": []}, 5, 1, 1)
