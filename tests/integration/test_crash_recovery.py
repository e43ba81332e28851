"""A worker killed with SIGKILL mid-stream and restarted leaves exactly the rows of an
uninterrupted run: the same trades and the same candles, each once."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from infra.cli.feeds import FeedResult, simulate_into, wait_until_stored
from infra.config.settings import Settings
from schemas import topics
from tests.integration.conftest import Infra, start_worker
from tests.integration.pipeline import command, prepare, rows, scalar, wait_drained, wait_for

pytestmark = pytest.mark.integration

TRADES = 60_000
START_NS = 1_723_161_600 * 10**9  # 2024-08-09T00:00:00Z: fixed, so both runs get the same trades
TRADE_ROWS = "SELECT venue, symbol, trade_id, price, size, side, event_ts FROM trades FINAL ORDER BY ALL"
CANDLE_ROWS = ("SELECT venue, symbol, interval, open_ts, open, high, low, close, volume, trades, first_trade_id, "
               "last_trade_id, revision, is_final FROM candles FINAL ORDER BY ALL")


def feed(settings: Settings) -> FeedResult:
    # 2 symbols at 200 trades/s of event time: 60k trades span 2.5 minutes, so several candles close
    return simulate_into(settings, rate=200.0, seed=11, count=TRADES, start_ns=START_NS)


def settle(settings: Settings, result: FeedResult) -> None:
    assert wait_until_stored(settings, result, timeout_s=180)
    wait_for(lambda: scalar(settings, "SELECT count() FROM trades FINAL") == result.trades_published, 120,
             f"all {result.trades_published} published trades stored")
    # No candle count is known beforehand (the baseline's is what the crashed run is compared
    # with). Settled means the worker's group committed every trade record (so every candle they
    # made is on its topic) and every candle record (so it is stored): a stall of any length
    # cannot pass for that, and re-delivered input after the restart is covered as well.
    wait_drained(settings, topics.TRADES, *topics.CANDLES.values(), timeout_s=180)


def test_sigkill_mid_stream_then_restart_stores_exactly_the_uninterrupted_rows(infra: Infra, tmp_path: Path) -> None:
    # small batches: many inserts, so the kill lands between them
    # (no idle close: it runs on the wall clock, which differs between the two runs)
    tuning = {"sink_batch_messages": 4, "sink_flush_seconds": 0.05, "candle_lateness_ms": 500,
              "checkpoint_every_s": 0.2, "candle_idle_timeout_s": 3600.0}

    baseline = infra.settings(**tuning)
    prepare(baseline)
    published = feed(baseline)
    assert published.trades_published == TRADES
    worker = start_worker(baseline, tmp_path / "baseline.log")
    try:
        settle(baseline, published)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    crashed = infra.settings(**tuning)
    prepare(crashed)
    assert feed(crashed).last_trade_ids == published.last_trade_ids
    log = tmp_path / "crashed.log"
    worker = start_worker(crashed, log)
    try:
        # Kill only once a checkpoint is stored: a kill before it would restart from nothing and
        # prove only that a fresh start works, not that a checkpoint is loaded and honoured.
        wait_for(lambda: scalar(crashed, "SELECT count() FROM candle_checkpoints") != 0, 60, "a stored checkpoint",
                 interval_s=0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        at_kill = scalar(crashed, "SELECT count() FROM trades FINAL")
        assert isinstance(at_kill, int) and 0 < at_kill < TRADES, "the kill must land mid-stream to mean anything"
        checkpointed = scalar(crashed, "SELECT max(offset) FROM candle_checkpoints FINAL")
        assert isinstance(checkpointed, int) and checkpointed > 0, "a checkpoint past the first message existed"
        worker = start_worker(crashed, log)
        settle(crashed, published)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    want_trades, got_trades = rows(baseline, TRADE_ROWS), rows(crashed, TRADE_ROWS)
    assert len(got_trades) == TRADES and got_trades == want_trades
    want_candles, got_candles = rows(baseline, CANDLE_ROWS), rows(crashed, CANDLE_ROWS)
    assert len(want_candles) >= 4 and got_candles == want_candles
    # FINAL above is what readers see; once merged, the disk holds each key once as well
    for table, n in (("trades", TRADES), ("candles", len(want_candles))):
        command(crashed, f"OPTIMIZE TABLE {table} FINAL")
        assert scalar(crashed, f"SELECT count() FROM {table}") == n
