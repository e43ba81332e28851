"""The raw trade-batch wire format through its historical names (`schemas.wire`, which the agents
still import) and the sink's two paths: round trip, and refusal of anything the store would alter.
The codec itself is covered in test_codecs_raw.py."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from schemas.events import Side, Trade
from schemas.wire import WireError, decode_trade_batch, encode_trade_batch, trades_from_batch


def batch(*rows: list[object]) -> bytes:
    return orjson.dumps({"schema_version": "trade_batch.v1", "venue": "v", "symbol": "A-B", "trades": list(rows)})


def test_round_trip_keeps_exact_decimals() -> None:
    trade = Trade(venue="binance", symbol="ETH-USDT", trade_id="42", price=Decimal("2683.80000000"),
                  size=Decimal("0.0031"), side=Side.SELL, event_ts_ns=1_723_161_256_560_000_000, recv_ts_ns=7)
    assert trades_from_batch(encode_trade_batch("binance", "ETH-USDT", [trade])) == [trade]


@pytest.mark.parametrize("row", [
    ["1", "1.123456789", "2", "buy", 1, 1],  # finer than the store's 8 places: it would be rounded
    ["1", "1", "0.000000001", "buy", 1, 1],
    ["1", "-1", "2", "buy", 1, 1],
    ["1", "0", "2", "buy", 1, 1],
    ["1", "NaN", "2", "buy", 1, 1],
    ["1", "Infinity", "2", "buy", 1, 1],
    ["1", "1", "2", "up", 1, 1],
    ["1", "1", "2", "buy", "x", 1],
    ["1", "1"],
])
def test_malformed_rows_are_refused(row: list[object]) -> None:
    with pytest.raises(WireError):
        decode_trade_batch(batch(row))


@pytest.mark.parametrize("key", ["schema_version", "schema"])
def test_wrong_schema_and_garbage_are_refused(key: str) -> None:
    with pytest.raises(WireError, match=r"expected trade_batch\.v1"):
        decode_trade_batch(orjson.dumps({key: "book_batch.v1", "venue": "v", "symbol": "A-B", "trades": []}))
    with pytest.raises(WireError):
        decode_trade_batch(b"\x00garbage")


def test_the_old_names_are_the_codecs() -> None:
    from schemas import wire, wire_book
    from schemas.codecs import book, envelope, trades

    assert (wire.decode_trade_batch, wire.encode_trade_batch, wire.TradeRow) == (trades.decode, trades.encode,
                                                                                 trades.TradeRow)
    assert wire.WireError is envelope.WireError
    assert (wire_book.decode_book_message, wire.decode_book_batch) == (book.decode, book.decode_book_batch)


def test_the_sinks_fast_path_builds_the_same_table_as_the_validated_one() -> None:
    from streams.sinks.clickhouse import trades_table, trades_table_from_raw

    raws = [batch(["1", "2683.80000000", "0.0031", "sell", 5, 6], ["2", "2683.81", "1", "buy", 7, 8]),
            batch(["3", "1.5", "2.25", "unknown", 9, 10])]
    assert trades_table_from_raw(raws).equals(trades_table([decode_trade_batch(r) for r in raws]))
    for bad in (["4", "1.123456789", "1", "buy", 1, 1], ["4", "-1", "1", "buy", 1, 1], ["4", "1", "1", "up", 1, 1]):
        with pytest.raises(Exception):  # noqa: B017 - Arrow's or ours: the sink falls back to the careful path
            trades_table_from_raw([*raws, batch(bad)])


def test_a_malformed_message_costs_the_sink_only_itself() -> None:
    from schemas.codecs.trades import table_for_sink

    good = batch(["1", "2683.80000000", "0.0031", "sell", 5, 6])
    table = table_for_sink([good, b"{garbage", batch(["2", "1.123456789", "1", "buy", 1, 1]), good])
    assert table.column("trade_id").to_pylist() == ["1", "1"]  # duplicates are the table's job (FINAL)
