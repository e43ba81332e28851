"""Venue configuration and symbol mapping (schemas.venues), reconnect backoff, and the ccxt
structure -> event mapping. Hand-worked expectations."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from schemas.events import Side
from schemas.venues import (
    VENUES,
    Feed,
    InvalidFeed,
    from_ccxt_symbol,
    parse_feed,
    parse_feeds,
    point_urls_at,
    to_ccxt_symbol,
)
from streams.core.backoff import Backoff
from streams.core.venues.ccxt_events import CcxtParseError, book_from_ccxt, to_decimal, trade_from_ccxt


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
    ("binance:ETHUSDT", "the symbol must be BASE-QUOTE"),
    ("binance:ETH/USDT", "the symbol must be BASE-QUOTE"),
])
def test_bad_feeds_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(InvalidFeed, match=reason.replace("(", r"\(")):
        parse_feed(text)


def test_symbols_map_to_ccxt_and_back() -> None:
    assert to_ccxt_symbol("ETH-USDT") == "ETH/USDT"
    assert to_ccxt_symbol("eth-usdt", "linear") == "ETH/USDT:USDT"
    assert Feed("binance-usdm", "BTC-USDT").ccxt_symbol == "BTC/USDT:USDT"
    assert Feed("kraken", "BTC-USD").ccxt_symbol == "BTC/USD"
    assert from_ccxt_symbol("ETH/USDT:USDT") == "ETH-USDT"
    assert from_ccxt_symbol("SKL/USD") == "SKL-USD"
    assert {v.name for v in VENUES.values()} == set(VENUES)


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
