"""The book keys a parser hands over with an event (`schemas.level_keys`): invisible to the
event's value, and never read back for levels they were not made for."""

from __future__ import annotations

from decimal import Decimal

from schemas.events import BookDelta
from schemas.level_keys import attach, attached, price_key
from streams.core.orderbook import L2Book, levels


def delta(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> BookDelta:
    return BookDelta(venue="binance", symbol="ETH-USDT", event_ts_ns=1, recv_ts_ns=1, first_update_id=1,
                     last_update_id=2, bids=levels(bids), asks=levels(asks))


def test_keys_travel_outside_the_events_value() -> None:
    plain = delta([("2612.34", "1")], [("2612.35", "2")])
    keyed = delta([("2612.34", "1")], [("2612.35", "2")])
    attach(keyed, [261234000000], [261235000000])
    assert attached(plain) is None
    held = attached(keyed)
    assert held is not None and (held.bid_keys, held.ask_keys) == ([261234000000], [261235000000])
    assert keyed == plain and plain == keyed
    assert keyed.model_dump() == plain.model_dump() and keyed.model_dump_json() == plain.model_dump_json()
    assert repr(keyed) == repr(plain)


def test_a_copy_with_other_levels_has_no_keys() -> None:
    keyed = delta([("2612.34", "1")], [("2612.35", "2")])
    attach(keyed, [261234000000], [261235000000])
    assert attached(keyed.model_copy(update={"bids": levels([("2600", "1")])})) is None
    assert attached(keyed.model_copy(update={"asks": levels([("2700", "1")])})) is None
    assert attached(keyed.model_copy(update={"last_update_id": 3})) is not None  # the same level tuples


def test_price_key_is_the_price_in_units_of_ten_to_the_minus_eight() -> None:
    assert [price_key(Decimal(t)) for t in ("0.00000001", "1", "2612.34", "64000.5")] == \
        [1, 10**8, 261234000000, 6400050000000]


def test_a_book_finer_than_the_keys_computes_its_own() -> None:
    book = L2Book()
    book.load(levels([("0.00001234", "1")]), levels([("0.00001240", "1")]))
    book.apply(levels([("0.0000123401", "5")]), ())  # ten places: the book rescales
    assert book.places == 10
    event = delta([("0.00001235", "4")], [])
    attach(event, [price_key(Decimal("0.00001235"))], [])
    held = attached(event)
    assert book.apply(event.bids, event.asks, 0, held) is True
    assert book.top(3)[0] == list(levels([("0.00001235", "4"), ("0.0000123401", "5"), ("0.00001234", "1")]))
