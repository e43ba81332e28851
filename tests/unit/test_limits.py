"""schemas/limits.py: the bounds, on hand-worked edges, and checked against the places that fail
on a value beyond them (the store's Arrow columns and the event models), so that the limits
refuse exactly what would otherwise stop an agent or lose a batch (issue 18, item 3)."""

from __future__ import annotations

from decimal import Decimal as D
from typing import get_args

import pyarrow as pa
import pytest
from pydantic import ValidationError

from schemas import limits
from schemas.events import Candle, Venue

GOOD_PRICES = ["0.00000001", "1", "64000.5", "999999999999999999999999999999.99999999"]
BAD_PRICES = [
    "0",
    "-1",
    "1e30",
    "1000000000000000000000000000000",
    "0.000000001",
    "1.123456789",
    "NaN",
    "Infinity",
    "1e400000000",
    "-0.00000001",
]


@pytest.mark.parametrize("text", GOOD_PRICES)
def test_prices_the_store_holds_pass(text: str) -> None:
    assert limits.price_problem(D(text)) is None
    pa.array([D(text)], pa.decimal128(38, 8))  # and the store's column takes them


@pytest.mark.parametrize("text", BAD_PRICES)
def test_prices_out_of_bounds_are_problems(text: str) -> None:
    assert limits.price_problem(D(text)) is not None


@pytest.mark.parametrize("text", ["1e30", "1000000000000000000000000000000.5"])
def test_what_the_price_bound_refuses_is_what_the_arrow_insert_cannot_take(text: str) -> None:
    with pytest.raises(pa.ArrowInvalid):
        pa.array([D(text)], pa.decimal128(38, 8))
    assert limits.price_problem(D(text)) is not None


def test_sizes_are_bounded_lower_so_that_a_candle_volume_still_fits() -> None:
    assert limits.size_problem(D("99999999999999999999.99999999")) is None
    assert limits.size_problem(D("1e20")) is not None
    # 1e10 trades of the largest size: the volume still fits Decimal(38, 8)
    volume = D("99999999999999999999.99999999") * 10**10
    pa.array([volume], pa.decimal128(38, 8))
    assert limits.size_problem(D(0)) is not None
    assert limits.size_problem(D(0), allow_zero=True) is None  # a book level deletion
    assert limits.level_problem(D("100.5"), D(0)) is None
    assert limits.level_problem(D("100.5"), D("-1")) is not None


@pytest.mark.parametrize("value", [1.5, "1", None, 1])
def test_only_decimals_are_decimals(value: object) -> None:
    assert limits.price_problem(value) is not None


@pytest.mark.parametrize("symbol", ["BTC-USDT", "ETH-USD", "1INCH-USDT", "A-B", "ABCDEFGHIJKLMNO-USDT"])
def test_symbols_in_the_canonical_form_pass(symbol: str) -> None:
    assert limits.symbol_problem(symbol) is None


@pytest.mark.parametrize(
    "symbol",
    [
        "btc-usdt",
        "BTC_USDT",
        "BTCUSDT",
        "BTC-USDT-PERP",
        "ABCDEFGHIJKLMNOP-USDT",
        "",
        " BTC-USDT",
        "BTC-USDT\n",
        None,
        7,
    ],
)
def test_other_symbols_are_problems_and_would_fail_the_candle_model(symbol: object) -> None:
    assert limits.symbol_problem(symbol) is not None
    with pytest.raises(ValidationError):
        _candle(symbol=symbol)


@pytest.mark.parametrize("venue", ["binance", "binance-usdm", "kraken", "0x"])
def test_venues_in_the_canonical_form_pass(venue: str) -> None:
    assert limits.venue_problem(venue) is None
    _candle(venue=venue)


@pytest.mark.parametrize("venue", ["Binance", "-binance", "bin ance", "b" * 33, "", "binance\n", None])
def test_other_venues_are_problems_and_would_fail_the_candle_model(venue: object) -> None:
    assert limits.venue_problem(venue) is not None
    with pytest.raises(ValidationError):
        _candle(venue=venue)


def test_the_venue_pattern_is_the_event_models_one() -> None:
    patterns = [getattr(m, "pattern", None) for m in get_args(Venue)[1:]]
    assert limits.VENUE_PATTERN in patterns


@pytest.mark.parametrize("ns", [0, 1_723_161_905_012_000_000, 2**63 - 1])
def test_times_within_int64_pass(ns: int) -> None:
    assert limits.time_problem(ns) is None
    pa.array([ns], pa.timestamp("ns", tz="UTC"))


@pytest.mark.parametrize("ns", [2**63, 10**30])
def test_times_beyond_int64_are_problems_the_arrow_insert_would_raise_on(ns: int) -> None:
    assert limits.time_problem(ns) is not None
    with pytest.raises(OverflowError):
        pa.array([ns], pa.timestamp("ns", tz="UTC"))


@pytest.mark.parametrize("ns", [-1, -(2**63)])
def test_negative_times_are_problems_and_would_fail_the_candle_model(ns: int) -> None:
    assert limits.time_problem(ns) is not None
    with pytest.raises(ValidationError):
        _candle(event_ts_ns=ns)


@pytest.mark.parametrize("value", [True, 1.0, "1", None, D(1)])
def test_times_must_be_integers(value: object) -> None:
    assert limits.time_problem(value) is not None


def test_a_trade_and_a_stream_are_checked_field_by_field() -> None:
    assert limits.stream_problem("binance", "BTC-USDT") is None
    assert "venue" in (limits.stream_problem("Binance", "BTC-USDT") or "")
    assert "symbol" in (limits.stream_problem("binance", "btc-usdt") or "")
    good = (D("64000.1"), D("0.5"), 1_700_000_000_000_000_000, 1_700_000_000_000_000_001)
    assert limits.trade_problem(*good) is None
    assert "price" in (limits.trade_problem(D("1e30"), *good[1:]) or "")
    assert "size" in (limits.trade_problem(good[0], D("1e20"), *good[2:]) or "")
    assert "event time" in (limits.trade_problem(*good[:2], -1, good[3]) or "")
    assert "receive time" in (limits.trade_problem(*good[:3], 2**63) or "")


def _candle(**overrides: object) -> Candle:
    fields: dict[str, object] = {
        "venue": "binance",
        "symbol": "BTC-USDT",
        "event_ts_ns": 1,
        "recv_ts_ns": 1,
        "interval": "1m",
        "open_ts_ns": 0,
        "open": D(1),
        "high": D(1),
        "low": D(1),
        "close": D(1),
        "volume": D(1),
        "trades": 1,
        "first_trade_id": "1",
        "last_trade_id": "1",
        "revision": 0,
        "is_final": False,
    }
    return Candle.model_validate({**fields, **overrides})
