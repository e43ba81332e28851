"""Poison trade batches (hardening): every value a store or a model cannot hold is refused by the
decoder with a WireError naming it, so one bad message costs one dead letter; the Arrow path of
the sink refuses the list, and its per-message fallback then stores every good message."""

from __future__ import annotations

import json

import pytest

from schemas.codecs import book, trades
from schemas.codecs.envelope import WireError

GOOD_ROW = ["1", "100.5", "0.25", "buy", 1_723_161_600_000_000_000, 1_723_161_600_000_000_001]


def batch(row: list[object], venue: object = "binance", symbol: object = "BTC-USDT") -> bytes:
    # stdlib json: it writes integers beyond 64 bits, as a hostile producer could
    message = {"schema_version": trades.TRADE_BATCH, "venue": venue, "symbol": symbol, "trades": [row]}
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (batch([*GOOD_ROW[:1], "1e30", *GOOD_ROW[2:]]), "price must be below"),
        (batch([*GOOD_ROW[:1], "1" + "0" * 30, *GOOD_ROW[2:]]), "price must be below"),
        (batch([*GOOD_ROW[:2], "100000000000000000000", *GOOD_ROW[3:]]), "size must be below"),
        (batch([*GOOD_ROW[:4], -1, GOOD_ROW[5]]), "event time must be within"),
        (batch([*GOOD_ROW[:4], 2**63, GOOD_ROW[5]]), "event time must be within"),
        (batch([*GOOD_ROW[:5], 2**64]), "receive time must be within"),
        (batch(GOOD_ROW, symbol="btc-usdt"), "symbol must be BASE-QUOTE"),
        (batch(GOOD_ROW, symbol="BTC-USDT\n"), "symbol must be BASE-QUOTE"),
        (batch(GOOD_ROW, venue="Binance Spot"), "venue must match"),
        (batch([*GOOD_ROW[:3], "short", *GOOD_ROW[4:]]), "side must be one of"),
    ],
)
def test_a_poison_value_is_refused_by_name(raw: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        trades.decode(raw)
    with pytest.raises((WireError, ValueError, OverflowError)):  # Arrow's own errors are ValueErrors
        trades.table_from_raw([batch(GOOD_ROW), raw])


def test_the_largest_values_the_store_holds_pass_and_fit_arrow() -> None:
    row = ["9", "9" * 30 + ".12345678", "9" * 20 + ".5", "sell", 2**63 - 1, 0]
    venue, symbol, rows = trades.decode(batch(row))
    assert (venue, symbol, rows[0].event_ts_ns, str(rows[0].price)) == ("binance", "BTC-USDT", 2**63 - 1,
                                                                         "9" * 30 + ".12345678")
    table = trades.table_from_raw([batch(row)])
    assert table.num_rows == 1 and str(table.column("price")[0].as_py()) == "9" * 30 + ".12345678"


def _book(bids: list[list[str]], venue: str = "binance", symbol: str = "BTC-USDT") -> bytes:
    snapshot = {"schema_version": book.BOOK_SNAPSHOT, "venue": venue, "symbol": symbol, "last_update_id": 7,
                "event_ts_ns": 1, "recv_ts_ns": 2, "bids": bids, "asks": [["101", "1"]]}
    return json.dumps({"schema_version": book.BOOK_BATCH, "venue": venue, "symbol": symbol,
                       "updates": [snapshot]}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_book([["-5", "1"]]), "price must be positive"),
        (_book([["100", "-1"]]), "size must be zero or positive"),
        (_book([["1e31", "1"]]), "price must be below"),
        (_book([["100", "1"]], symbol="btc-usdt"), "symbol"),
    ],
)
def test_a_poison_book_level_is_refused_by_name(raw: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        book.decode(raw)


def test_a_clean_book_snapshot_decodes() -> None:
    venue, symbol, items = book.decode(_book([["100", "0"], ["99.5", "2"]]))
    assert (venue, symbol, len(items)) == ("binance", "BTC-USDT", 1)
