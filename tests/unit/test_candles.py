"""Candle core against independent oracles: the recorded reference candles and hand-worked cases."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from schemas.wire import TradeRow
from streams.core.candles import CandleBuilder
from tests.shared_data import raw_spot_trades, reference_candles

MIN = 60 * 10**9
SEC = 10**9


def row(i: int, ts_ns: int, price: str, size: str = "1") -> TradeRow:
    return TradeRow(str(i), Decimal(price), Decimal(size), "buy", ts_ns, ts_ns + 1)


def spot_rows() -> list[TradeRow]:
    return [
        TradeRow(str(t["t"]), Decimal(t["p"]), Decimal(t["q"]), "sell" if t["m"] else "buy", t["T"] * 10**6, 0)
        for t in raw_spot_trades()
    ]


@pytest.mark.parametrize("lateness_s", [0, 2, 30])
def test_every_reference_minute_matches_exactly(lateness_s: int) -> None:
    builder = CandleBuilder("binance", "ETH-USDT", "1m", lateness_ns=lateness_s * SEC)
    emitted = []
    rows = spot_rows()
    for start in range(0, len(rows), 37):  # batches of trades, as the raw topic carries them
        emitted += builder.update(rows[start : start + 37]).candles
    candles = emitted + builder.open_candles()  # the last minute never closes: still open
    assert all(c.revision == 0 for c in candles)
    assert all(c.is_final for c in emitted) and not any(c.is_final for c in builder.open_candles())
    got = [
        {
            "minute_start_utc_iso": datetime.fromtimestamp(c.open_ts_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "open": format(c.open, "f"),
            "high": format(c.high, "f"),
            "low": format(c.low, "f"),
            "close": format(c.close, "f"),
            "volume": format(c.volume, "f"),
            "trades": str(c.trades),
        }
        for c in candles
    ]
    assert got == reference_candles()


def test_window_closes_on_watermark_not_on_next_bucket() -> None:
    b = CandleBuilder("v", "A-B", "1m", lateness_ns=5 * SEC)
    assert b.update([row(1, 10 * SEC, "10")]).candles == []
    # a trade in the next minute but within the lateness: the first minute stays open
    assert b.update([row(2, MIN + 2 * SEC, "11")]).candles == []
    # an out-of-order trade for minute 0 still counts in revision 0
    assert b.update([row(3, 59 * SEC, "9")]).candles == []
    out = b.update([row(4, MIN + 5 * SEC, "12")]).candles
    assert len(out) == 1
    c = out[0]
    assert (c.open, c.high, c.low, c.close, c.volume, c.trades) == (
        Decimal("10"), Decimal("10"), Decimal("9"), Decimal("9"), Decimal("2"), 2)
    assert (c.revision, c.is_final, c.open_ts_ns) == (0, True, 0)


def test_late_trade_within_grace_makes_a_revision_then_final() -> None:
    b = CandleBuilder("v", "A-B", "1m", lateness_ns=0, grace_ns=10 * SEC)
    b.update([row(1, 1 * SEC, "10", "1")])
    first = b.update([row(2, MIN, "20")]).candles
    assert [(c.revision, c.is_final, c.volume) for c in first] == [(0, False, Decimal("1"))]
    revised = b.update([row(3, 30 * SEC, "5", "2")])
    assert [(c.revision, c.is_final, c.low, c.volume, c.close) for c in revised.candles] == [
        (1, False, Decimal("5"), Decimal("3"), Decimal("5"))]
    final = b.update([row(4, MIN + 10 * SEC, "21")]).candles
    assert [(c.open_ts_ns, c.revision, c.is_final) for c in final] == [(0, 1, True)]
    # after the grace period the window is final: a later trade is late, not a revision
    late = b.update([row(5, 40 * SEC, "7")])
    assert late.candles == [] and [t.trade_id for t in late.late] == ["5"]


def test_pending_since_tracks_oldest_window_that_can_change() -> None:
    b = CandleBuilder("v", "A-B", "1m", lateness_ns=0, grace_ns=10 * SEC)
    assert b.pending_since_ns() is None
    b.update([row(1, 1 * SEC, "1")])
    assert b.pending_since_ns() == 0
    b.update([row(2, MIN + 1, "1")])
    assert b.pending_since_ns() == 0  # minute 0 is emitted but still inside its grace
    b.update([row(3, MIN + 10 * SEC, "1")])
    assert b.pending_since_ns() == MIN


def test_same_input_same_output() -> None:
    rows = spot_rows()[:3000]
    runs = []
    for _ in range(2):
        b = CandleBuilder("binance", "ETH-USDT", "1m", lateness_ns=SEC, grace_ns=3 * SEC)
        runs.append([c.model_dump_json() for c in b.update(rows).candles])
    assert runs[0] == runs[1] and runs[0]
