"""Parameter parsing, without HTTP."""

from __future__ import annotations

from decimal import Decimal

import pytest

from api.errors import ApiError, ErrorCode
from api.market_service import fill_gaps, resolve_range
from api.models import format_decimal, format_timestamp, ns_to_datetime
from api.params import parse_exchange, parse_symbol, parse_time
from infra.store.repository import CandleRow
from schemas.events import Interval

T0 = 1_723_161_600 * 10**9  # 2024-08-09T00:00:00Z


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2024-08-09T00:00:00Z", T0),
        ("2024-08-09T00:00:00z", T0),
        ("2024-08-09T00:00:00+00:00", T0),
        ("2024-08-09T09:00:00+09:00", T0),
        ("2024-08-08T20:00:00-04:00", T0),
        ("2024-08-09T00:00:00", T0),  # no offset: UTC
        ("2024-08-09", T0),
        ("2024-08-09T00:00:01.174Z", T0 + 1_174_000_000),
        ("2024-08-09T00:00:01.174999999Z", T0 + 1_174_999_999),
        ("2024-08-09T00:00:01,5Z", T0 + 1_500_000_000),
        ("2024-08-09T09:00:00.000000001+09:00", T0 + 1),
        ("20240809T000000Z", T0),
        ("2024-08-09T00:00:00.1234567890Z", T0 + 123_456_789),
        ("2024-08-09T00:00:00.5", T0 + 500_000_000),
        (" 2024-08-09T00:00:00Z ", T0),
    ],
)
def test_parse_time(text: str, ns: int) -> None:
    assert parse_time("start", text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "now",
        "1723161600",
        "2024-08-09T25:00:00Z",
        "2024-02-30",
        "2024-08-09T00:00:00.Z",
        "2024-08-09T00:00:00.+00:00",
        "2024-W32-5",
        "2024-08-09Z",
        "2024-08-09T00:00:00+25:00",
        "1900-01-01",
        "2300-01-01",
    ],
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_time("end", text)
    assert caught.value.code is ErrorCode.BAD_REQUEST and caught.value.status == 400
    details = caught.value.details
    assert details is not None and [e["field"] for e in details["errors"]] == ["query.end"]


def test_parse_symbol_and_exchange() -> None:
    assert parse_symbol(" eth-usdt ") == "ETH-USDT"
    with pytest.raises(ApiError) as caught:
        parse_symbol("ETH/USDT")
    assert (caught.value.code, caught.value.status) == (ErrorCode.MARKET_001, 400)
    with pytest.raises(ApiError) as caught:
        parse_symbol("X" * 500 + "-USDT")
    assert len(caught.value.details["symbol"]) < 100  # type: ignore[index]  # input is not echoed in full
    assert parse_exchange(None) is None
    assert parse_exchange("Binance") == "binance"
    assert parse_exchange("binance-us") == "binance-us"
    for bad in ("", "-x", "bin ance", "x" * 40):
        with pytest.raises(ApiError):
            parse_exchange(bad)


def test_formats() -> None:
    assert format_decimal(Decimal("65432.10000000")) == "65432.10000000"
    assert format_decimal(Decimal("100")) == "100.00000000"
    assert format_decimal(Decimal("1E+2")) == "100.00000000"
    assert format_decimal(Decimal("0E-8")) == "0.00000000"
    assert format_decimal(Decimal("0.00000001")) == "0.00000001"
    assert format_decimal(Decimal("-1.50")) == "-1.50000000"
    assert format_timestamp(ns_to_datetime(T0 + 1_174_999_999)) == "2024-08-09T00:00:01.174Z"
    assert format_timestamp(ns_to_datetime(T0)) == "2024-08-09T00:00:00.000Z"


def test_resolve_range_defaults() -> None:
    m = 60 * 10**9
    latest = T0 + 10 * m + 5
    assert resolve_range(Interval.M1, None, None, latest) == (T0 + 11 * m - 500 * m, T0 + 11 * m)
    assert resolve_range(Interval.M1, T0, None, latest) == (T0, T0 + 500 * m)
    assert resolve_range(Interval.M5, None, T0, latest) == (T0 - 2500 * m, T0)
    assert resolve_range(Interval.M1, T0, T0 + m, latest) == (T0, T0 + m)


def test_fill_gaps() -> None:
    m = 60 * 10**9
    d = Decimal
    rows = [CandleRow(T0, d(1), d(3), d(1), d(2), d(5)), CandleRow(T0 + 3 * m, d(4), d(4), d(4), d(4), d(1))]
    filled = fill_gaps(rows, m)
    assert [r.open_ns for r in filled] == [T0, T0 + m, T0 + 2 * m, T0 + 3 * m]
    assert filled[1] == CandleRow(T0 + m, d(2), d(2), d(2), d(2), d(0))
    assert fill_gaps([], m) == []
