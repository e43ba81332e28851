"""The raw topics' codecs (`md.trades.v1`, `md.book.v1`): hand-written bytes are the oracle, in the
current envelope (`schema_version`) and in the old one (`schema`) that decoders still accept."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pyarrow as pa
import pytest

from schemas.book_ticker import BookTicker
from schemas.codecs import book, trades
from schemas.codecs.envelope import WireError
from schemas.codecs.trades import TradeRow
from schemas.events import BookDelta, BookSnapshot, Side, Trade
from schemas.text_memo import MAX_TEXTS

D = Decimal
E1, R1 = 1_723_161_256_560_000_000, 1_723_161_256_561_000_000

TRADE_BYTES = (
    b'{"schema_version":"trade_batch.v1","venue":"binance","symbol":"ETH-USDT","trades":['
    b'["42","2683.80000000","0.0031","sell",1723161256560000000,1723161256561000000],'
    b'["43","2683.81","1","buy",1723161256570000000,1723161256571000000]]}'
)
LEGACY_TRADE_BYTES = TRADE_BYTES.replace(b'"schema_version"', b'"schema"')
TRADE_ROWS = [
    TradeRow("42", D("2683.80000000"), D("0.0031"), "sell", E1, R1),
    TradeRow("43", D("2683.81"), D("1"), "buy", E1 + 10_000_000, R1 + 10_000_000),
]


def trade_batch(*rows: list[object], key: str = "schema_version", fmt: str = "trade_batch.v1") -> bytes:
    return orjson.dumps({key: fmt, "venue": "v", "symbol": "A-B", "trades": list(rows)})


# --- trade_batch.v1 ---------------------------------------------------------------------------


def test_trade_batch_encodes_the_hand_written_bytes_with_only_the_new_key() -> None:
    models = [Trade(venue="binance", symbol="ETH-USDT", trade_id=r.trade_id, price=r.price, size=r.size,
                    side=Side(r.side), event_ts_ns=r.event_ts_ns, recv_ts_ns=r.recv_ts_ns) for r in TRADE_ROWS]
    assert trades.encode("binance", "ETH-USDT", models) == TRADE_BYTES
    assert trades.encode_rows("binance", "ETH-USDT", TRADE_ROWS) == TRADE_BYTES
    assert b'"schema"' not in TRADE_BYTES


@pytest.mark.parametrize("raw", [TRADE_BYTES, LEGACY_TRADE_BYTES], ids=["schema_version", "legacy schema"])
def test_trade_batch_decodes_both_envelope_keys(raw: bytes) -> None:
    venue, symbol, rows = trades.decode(raw)
    assert (venue, symbol, rows) == ("binance", "ETH-USDT", TRADE_ROWS)
    assert [str(r.price) for r in rows] == ["2683.80000000", "2683.81"]  # exact digits, trailing zeros kept
    assert [t.side for t in trades.decode_trades(raw)] == [Side.SELL, Side.BUY]


@pytest.mark.parametrize("row", [
    ["1", "1.123456789", "2", "buy", 1, 1],  # finer than the store's 8 places: it would be rounded
    ["1", "1", "0.000000001", "buy", 1, 1],
    ["1", "1" * 31, "2", "buy", 1, 1],  # 31 integer digits: Decimal(38, 8) holds 30
    ["1", "1e-9", "2", "buy", 1, 1],
    ["1", 1.1, "2", "buy", 1, 1],  # a JSON float is not an exact decimal
    ["1", "-1", "2", "buy", 1, 1],
    ["1", "0", "2", "buy", 1, 1],
    ["1", "NaN", "2", "buy", 1, 1],
    ["1", "Infinity", "2", "buy", 1, 1],
    ["1", "1", "2", "up", 1, 1],
    ["1", "1", "2", "buy", "x", 1],
    ["1", "1"],
])
def test_trade_batch_refuses_rows_the_store_would_alter_or_cannot_hold(row: list[object]) -> None:
    with pytest.raises(WireError):
        trades.decode(trade_batch(row))
    with pytest.raises(WireError):
        trades.decode(trade_batch(row, key="schema"))


@pytest.mark.parametrize("bad", [
    ["9", "2683.81", "0.0031", "up", 1, 1],  # known price and size, bad side
    ["9", "2683.81", "0.0031", "buy", -1, 1],  # known price and size, bad time
    ["9", "2683.81", "1.123456789", "buy", 1, 1],  # known price, new size it must refuse
    ["9", "NaN", "0.0031", "buy", 1, 1],
])
def test_remembered_prices_and_sizes_change_no_answer(bad: list[object]) -> None:
    """decode remembers the price and size texts it has read (trades.py `_PRICES`, `_SIZES`):
    with them remembered or forgotten, a good message decodes to the same rows, spelled as sent,
    and a bad one is refused with the same words; a refused text is never remembered."""
    good = trade_batch(["8", "2683.81", "0.0031", "buy", 1, 1])
    refused = trade_batch(["7", "2683.81", "1", "buy", 1, 1], bad)
    trades.forget_known_values()
    with pytest.raises(WireError) as cold:
        trades.decode(refused)
    cold_rows = trades.decode(good)[2]
    warm_rows = trades.decode(good)[2]  # now from what the first decode remembered
    assert warm_rows == cold_rows == [TradeRow("8", D("2683.81"), D("0.0031"), "buy", 1, 1)]
    assert [(str(r.price), str(r.size)) for r in warm_rows] == [("2683.81", "0.0031")]
    with pytest.raises(WireError) as warm:
        trades.decode(refused)
    assert str(warm.value) == str(cold.value)
    assert bad[1] not in trades._PRICES or bad[1] == "2683.81"
    assert bad[2] not in trades._SIZES or bad[2] == "0.0031"


def test_remembered_values_stay_bounded() -> None:
    trades.forget_known_values()
    for start in range(0, MAX_TEXTS + 500, 500):
        trades.decode(trade_batch(*[[str(i), f"{i + 1}.5", "1", "buy", 1, 1] for i in range(start, start + 500)]))
    assert 0 < len(trades._PRICES) <= MAX_TEXTS
    assert trades.decode(trade_batch(["1", "3.5", "1", "buy", 1, 1]))[2][0].price == D("3.5")


def test_trade_batch_accepts_the_widest_value_the_store_holds() -> None:
    widest = "9" * 30 + "." + "9" * 8
    [row] = trades.decode(trade_batch(["1", widest, "0.00000001", "buy", 1, 1]))[2]
    assert row.price == D(widest) and row.size == D("1e-8")


@pytest.mark.parametrize("raw", [
    trade_batch(fmt="book_batch.v1"),
    trade_batch(fmt="book_batch.v1", key="schema"),
    orjson.dumps({"venue": "v", "symbol": "A-B", "trades": []}),  # names no format at all
    orjson.dumps({"schema_version": "trade_batch.v1", "venue": "v", "symbol": "A-B"}),
    orjson.dumps({"schema_version": "trade_batch.v1", "venue": 1, "symbol": "A-B", "trades": []}),
    orjson.dumps({"schema_version": "trade_batch.v1", "venue": "v", "symbol": "A-B", "trades": {}}),
    b"[1, 2]",
    b"\x00garbage",
])
def test_trade_batch_refuses_other_formats_and_garbage(raw: bytes) -> None:
    with pytest.raises(WireError):
        trades.decode(raw)
    with pytest.raises(WireError):
        trades.table_from_raw([raw])


def test_trade_batch_says_which_format_it_expected() -> None:
    with pytest.raises(WireError, match=r"expected trade_batch\.v1, got 'book_batch\.v1'"):
        trades.decode(trade_batch(fmt="book_batch.v1"))


@pytest.mark.parametrize("raw", [TRADE_BYTES, LEGACY_TRADE_BYTES], ids=["schema_version", "legacy schema"])
def test_trades_table_holds_the_hand_written_rows(raw: bytes) -> None:
    expected = {
        "venue": ["binance", "binance"],
        "symbol": ["ETH-USDT", "ETH-USDT"],
        "trade_id": ["42", "43"],
        "price": [D("2683.80000000"), D("2683.81000000")],
        "size": [D("0.00310000"), D("1.00000000")],
        "side": ["sell", "buy"],
        "event_ts": [E1, E1 + 10_000_000],
        "recv_ts": [R1, R1 + 10_000_000],
    }
    for table in (trades.table_from_raw([raw]), trades.table([trades.decode(raw)])):
        assert table.schema.field("price").type == pa.decimal128(38, 8)
        assert table.schema.field("event_ts").type == pa.timestamp("ns", tz="UTC")
        got = {name: table.column(name).to_pylist() for name in expected}
        got["event_ts"] = table.column("event_ts").cast(pa.int64()).to_pylist()
        got["recv_ts"] = table.column("recv_ts").cast(pa.int64()).to_pylist()
        assert got == expected


@pytest.mark.parametrize("bad", [
    ["2", "1.123456789", "1", "buy", 1, 1],
    ["2", "-1", "1", "buy", 1, 1],
    ["2", "1", "1", "up", 1, 1],
    [2, "1", "1", "buy", 1, 1],  # an id that is no string
    ["2", "1", "1", "buy", 1],  # a row too short
    "123456",  # a row that is no list (six characters)
    {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6},
    ["2", "1", "1", "buy", True, 1],
    ["2", "1", "1", "buy", -1, 1],
    ["2", "1", "1", "buy", 1, 2**63],
])
def test_trades_table_from_raw_refuses_a_list_with_any_row_decode_refuses(bad: object) -> None:
    good = trade_batch(["1", "1.5", "2", "buy", 1, 1])
    with pytest.raises(WireError):
        trades.decode(trade_batch(bad))  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - Arrow's own error or WireError: the caller decodes one by one
        trades.table_from_raw([good, trade_batch(bad)])  # type: ignore[arg-type]
    assert trades.table_from_raw([good, good]).num_rows == 2


# --- book_batch.v1 and book_ticker_batch.v1 ---------------------------------------------------

BOOK_BYTES = (
    b'{"schema_version":"book_batch.v1","venue":"binance","symbol":"ETH-USDT","updates":['
    b'{"venue":"binance","symbol":"ETH-USDT","event_ts_ns":1,"recv_ts_ns":2,"schema_version":"book_delta.v1",'
    b'"first_update_id":10,"last_update_id":12,"prev_update_id":null,'
    b'"bids":[["2683.8","1.5"]],"asks":[["2683.81","0"]]},'
    b'{"venue":"binance","symbol":"ETH-USDT","event_ts_ns":3,"recv_ts_ns":4,"schema_version":"book_snapshot.v1",'
    b'"last_update_id":12,"bids":[["2683.8","1.5"]],"asks":[]}]}'
)
DELTA = BookDelta(venue="binance", symbol="ETH-USDT", event_ts_ns=1, recv_ts_ns=2, first_update_id=10,
                  last_update_id=12, bids=((D("2683.8"), D("1.5")),), asks=((D("2683.81"), D("0")),))
SNAPSHOT = BookSnapshot(venue="binance", symbol="ETH-USDT", event_ts_ns=3, recv_ts_ns=4, last_update_id=12,
                        bids=((D("2683.8"), D("1.5")),), asks=())
TICKER_BYTES = (
    b'{"schema_version":"book_ticker_batch.v1","venue":"binance","symbol":"ETH-USDT","tickers":['
    b'{"venue":"binance","symbol":"ETH-USDT","event_ts_ns":5,"recv_ts_ns":6,"schema_version":"book_ticker.v1",'
    b'"update_id":12,"bid_price":"2683.8","bid_size":"1.5","ask_price":"2683.81","ask_size":"0.2"}]}'
)
TICKER = BookTicker(venue="binance", symbol="ETH-USDT", event_ts_ns=5, recv_ts_ns=6, update_id=12,
                    bid_price=D("2683.8"), bid_size=D("1.5"), ask_price=D("2683.81"), ask_size=D("0.2"))


def legacy(raw: bytes) -> bytes:
    """The same message under the old envelope key (only the outer one: events always had theirs)."""
    return raw.replace(b'{"schema_version"', b'{"schema"', 1)


def test_book_batches_encode_the_hand_written_bytes() -> None:
    assert book.encode_book_batch("binance", "ETH-USDT", [DELTA, SNAPSHOT]) == BOOK_BYTES
    assert book.encode_ticker_batch("binance", "ETH-USDT", [TICKER]) == TICKER_BYTES


@pytest.mark.parametrize("wrap", [bytes, legacy], ids=["schema_version", "legacy schema"])
def test_book_batches_decode_both_envelope_keys(wrap: type[bytes]) -> None:
    assert book.decode_book_batch(wrap(BOOK_BYTES)) == ("binance", "ETH-USDT", [DELTA, SNAPSHOT])
    assert book.decode_ticker_batch(wrap(TICKER_BYTES)) == ("binance", "ETH-USDT", [TICKER])
    assert book.decode(wrap(BOOK_BYTES)) == ("binance", "ETH-USDT", [DELTA, SNAPSHOT])
    assert book.decode(wrap(TICKER_BYTES)) == ("binance", "ETH-USDT", [TICKER])


def test_each_book_decoder_refuses_the_other_format() -> None:
    with pytest.raises(WireError, match=r"expected book_batch\.v1"):
        book.decode_book_batch(TICKER_BYTES)
    with pytest.raises(WireError, match=r"expected book_ticker_batch\.v1"):
        book.decode_ticker_batch(legacy(BOOK_BYTES))


@pytest.mark.parametrize("raw", [
    TRADE_BYTES,  # a message of another topic
    LEGACY_TRADE_BYTES,
    b'{"venue":"binance","symbol":"ETH-USDT","updates":[]}',  # names no format
    b'{"schema_version":"book_batch.v1","venue":"binance","symbol":"ETH-USDT","updates":[{"bids":1}]}',
    b'{"schema_version":"book_batch.v1","venue":"binance","symbol":"ETH-USDT"}',
    b'{"schema_version":"book_batch.v1","venue":7,"symbol":"ETH-USDT","updates":[]}',
    BOOK_BYTES.replace(b'"2683.81"', b'"abc"'),  # a price that is no number
    TICKER_BYTES.replace(b'"update_id":12,', b""),
    b"[]",
    b"{garbage",
])
def test_the_book_topic_decoder_refuses_anything_else(raw: bytes) -> None:
    with pytest.raises(WireError):
        book.decode(raw)


def test_peek_reads_the_envelope_and_leaves_the_rows_unchecked() -> None:
    assert trades.peek(LEGACY_TRADE_BYTES)[2][-1][0] == "43"
    assert trades.peek(trade_batch(["1", "-1", "2", "up", 1, 1]))[2] == [["1", "-1", "2", "up", 1, 1]]
    for bad in (BOOK_BYTES, b"[]", b"{garbage"):
        with pytest.raises(WireError):
            trades.peek(bad)


def test_the_inner_event_formats_are_named_once() -> None:
    assert (trades.TRADE, book.BOOK_DELTA, book.BOOK_SNAPSHOT, book.BOOK_TICKER) == (
        "trade.v1", "book_delta.v1", "book_snapshot.v1", "book_ticker.v1")
