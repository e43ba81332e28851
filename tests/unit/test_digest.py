"""The canonical rendering and hashing behind `entasis replay --digest`."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from infra.store.digest import (
    TABLES,
    DigestTable,
    TableDigest,
    canonical_lines,
    combined_digest,
    digest_rows,
    render_report,
    render_value,
    table_digests,
)

ROWS = [
    ("binance", "ETH-USDT", 1_723_161_600_000_000_001, Decimal("2600.50000000"), 3, None, [Decimal("1.0")]),
    ("binance", "BTC-USDT", 1_723_161_600_000_000_000, Decimal("60000"), 1, 0.25, []),
]


def test_the_digest_is_the_sha256_of_the_sorted_tab_separated_lines() -> None:
    # the expected text is written out by hand: an oracle independent of the rendering code
    text = (
        "binance\tBTC-USDT\t1723161600000000000\t60000\t1\t0.25\t[]\n"
        "binance\tETH-USDT\t1723161600000000001\t2600.5\t3\t\\N\t[1]\n"
    )
    assert digest_rows(ROWS) == hashlib.sha256(text.encode()).hexdigest()


def test_row_order_does_not_matter() -> None:
    assert digest_rows(ROWS) == digest_rows(list(reversed(ROWS)))


def test_equal_numbers_render_equally_and_different_ones_differently() -> None:
    assert render_value(Decimal("1.50")) == render_value(Decimal("1.5000")) == "1.5"
    assert render_value(Decimal("0E-8")) == render_value(Decimal("0")) == "0"
    assert render_value(Decimal("100")) == "100"  # not 1E+2
    assert render_value(0.1) != render_value(0.1 + 1e-17 * 3)
    assert render_value(-0.0) == render_value(0.0)


@pytest.mark.parametrize(
    "a,b",
    [
        (("a\tb",), ("a", "b")),  # a tab inside a value is not a column break
        (("x\ny",), ("x\\ny",)),
        ((None,), ("\\N",)),  # NULL is not the text \N
        ((["a,b"],), (["a", "b"],)),  # a comma inside a list item is not an item break
        ((Decimal("1.5"),), (Decimal("15"),)),
    ],
)
def test_distinct_rows_get_distinct_digests(a: tuple[object, ...], b: tuple[object, ...]) -> None:
    assert digest_rows([a]) != digest_rows([b])


def test_one_changed_value_changes_the_digest() -> None:
    changed = [ROWS[0], (*ROWS[1][:3], Decimal("60000.00000001"), *ROWS[1][4:])]
    assert digest_rows(changed) != digest_rows(ROWS)
    assert digest_rows(ROWS[:1]) != digest_rows(ROWS)


def test_datetimes_render_with_their_zone() -> None:
    assert render_value(datetime(2024, 8, 9, tzinfo=UTC)) == "2024-08-09T00:00:00+00:00"


def test_an_empty_table_has_the_digest_of_nothing() -> None:
    assert digest_rows([]) == hashlib.sha256(b"").hexdigest()
    assert canonical_lines([]) == []


def test_queries_read_final_rows_and_nanosecond_times() -> None:
    table = DigestTable("candles_1m", "candles", ("venue", "open_ts*"), "interval = '1m'")
    assert table.sql() == "SELECT venue, toUnixTimestamp64Nano(open_ts) FROM candles FINAL WHERE interval = '1m'"
    names = [t.name for t in TABLES]
    for required in (
        "candles_1m",
        "candles_5m",
        "candles_1h",
        "candles_1d",
        "book_snapshots",
        "quality_events",
        "risk_estimates",
        "predictions",
    ):
        assert required in names
    # what records the process rather than the market is left out of derived tables
    for t in TABLES:
        if t.table not in ("trades", "book_snapshots"):
            assert "recv_ts*" not in t.columns, t.name
    candles = next(t for t in TABLES if t.name == "candles_1m")
    assert "revision" not in candles.columns and "version" not in candles.columns


def test_table_digests_runs_each_query_once_and_reports() -> None:
    seen: list[str] = []

    def query(sql: str) -> list[tuple[object, ...]]:
        seen.append(sql)
        return [("x",)] if "trades" in sql else []

    tables = (DigestTable("trades", "trades", ("venue",)), DigestTable("vwap", "vwap", ("venue",)))
    digests = table_digests(query, tables)
    assert seen == ["SELECT venue FROM trades FINAL", "SELECT venue FROM vwap FINAL"]
    assert digests == [
        TableDigest("trades", 1, hashlib.sha256(b"x\n").hexdigest()),
        TableDigest("vwap", 0, hashlib.sha256(b"").hexdigest()),
    ]
    report = render_report(digests)
    assert report.splitlines()[-1].split()[:2] == ["all", "1"]
    assert combined_digest(digests) in report
    assert combined_digest(digests) != combined_digest([digests[1], digests[0]])
