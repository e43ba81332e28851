"""In a run (a replay) the candles depend on the trades only, not on the pace they arrive at:
the run's settings turn the wall-clock idle close off. Live keeps it."""

from __future__ import annotations

from decimal import Decimal

from infra.config.run import for_run
from infra.config.settings import Settings
from schemas.wire import TradeRow
from streams.core.candle_processor import CandleActions, CandleConfig, CandleProcessor

SEC = 10**9
T0 = 1_700_000_040 * SEC  # a minute boundary
FIRST = [("1", 1, "10"), ("2", 30, "12"), ("3", 45, "9")]
SECOND = [("4", 61, "11"), ("5", 70, "13"), ("6", 125, "14")]


def rows(batch: list[tuple[str, int, str]]) -> list[TradeRow]:
    return [TradeRow(i, Decimal(p), Decimal("1"), "buy", T0 + s * SEC, T0 + s * SEC) for i, s, p in batch]


def play(idle_timeout_s: float, wall_gap_s: float) -> list[tuple[object, ...]]:
    """Two batches `wall_gap_s` of wall time apart, with the worker's 1 s idle tick in between;
    everything emitted, in order, as plain tuples."""
    p = CandleProcessor("v", "A-B", CandleConfig(intervals=("1m",), idle_timeout_s=idle_timeout_s), now=0.0)
    out: list[tuple[object, ...]] = []

    def keep(actions: CandleActions) -> None:
        out.extend(("candle", c.open_ts_ns, c.close, c.trades) for c in actions.candles)
        out.extend(("quality", q.kind.value, tuple(q.detail["trade_ids"])) for q in actions.quality)

    keep(p.handle(rows(FIRST), now=0.0))
    tick = 1.0
    while tick < wall_gap_s:
        out.extend(("candle", c.open_ts_ns, c.close, c.trades) for c in p.on_idle(now=tick))
        tick += 1.0
    keep(p.handle(rows(SECOND), now=wall_gap_s))
    return out


def run_timeout() -> float:
    return for_run(Settings(), "pace-test").candle.idle_timeout_s


def test_a_run_emits_the_same_candles_at_any_pace() -> None:
    fast, slow = play(run_timeout(), wall_gap_s=0.5), play(run_timeout(), wall_gap_s=120.0)
    # expected by hand: minute 0 (10, 12, 9: close 9), minute 1 (11, 13: close 13); minute 2 stays open
    assert fast == slow == [("candle", T0, Decimal("9"), 3), ("candle", T0 + 60 * SEC, Decimal("13"), 2)]


def test_live_idle_close_depends_on_the_pace() -> None:
    # the oracle of the test above can fail: with the live idle close, 120 s of wall silence pushes
    # the watermark past minute 1 before its trades arrive, and they come out late
    live = Settings().candle.idle_timeout_s
    slow = play(live, wall_gap_s=120.0)
    assert slow != play(live, wall_gap_s=0.5)
    assert ("quality", "late_trade", ("4", "5")) in slow
