"""The database goes away mid-stream and comes back: the running worker stores every trade and
every candle once, without a restart of its own.

Before the sinks retried, a failed insert raised out of the sink agent; Faust restarted the agent on
the messages after the failed batch, so that batch was never stored by this worker (its consumer
also stopped committing at the gap). On the embedded broker, whose topics die with it, nothing
would ever store it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from infra.cli.feeds import simulate_into
from infra.config.settings import Settings
from schemas import topics
from tests.integration.chdb_fixture import ChdbServerProcess, start_chdb_server
from tests.integration.conftest import Infra, start_worker
from tests.integration.pipeline import prepare, scalar, wait_drained, wait_for

pytestmark = pytest.mark.integration

TRADES = 40_000
START_NS = 1_723_161_600 * 10**9  # 2024-08-09T00:00:00Z
OUTAGE_S = 4.0


def restart_on_same_port(server: ChdbServerProcess) -> ChdbServerProcess:
    """The stopped server started again on its data, its port and its password, as a database server
    comes back (the worker keeps its URL); the embedded owner draws a new password at each start."""
    port = int(server.base_url.rsplit(":", 1)[1])
    again = start_chdb_server(server.path, server.log_path.with_name("chdb-after.log"), port=port,
                              password=server.password)
    assert again.base_url == server.base_url
    return again


def trade_count(settings: Settings) -> int:
    n = scalar(settings, "SELECT count() FROM trades FINAL")
    assert isinstance(n, int)
    return n


def test_a_database_outage_mid_stream_loses_and_duplicates_nothing(infra: Infra, tmp_path: Path) -> None:
    server = start_chdb_server(tmp_path / "chdb", tmp_path / "chdb.log")
    # small batches, many inserts: the outage lands between two of them, with more to come
    settings = infra.settings(clickhouse_url=server.url, sink_batch_messages=4, sink_flush_seconds=0.05,
                              candle_lateness_ms=500, checkpoint_every_s=0.2, candle_idle_timeout_s=3600.0)
    log = tmp_path / "worker.log"
    worker = None
    try:
        prepare(settings)
        published = simulate_into(settings, rate=200.0, seed=5, count=TRADES, start_ns=START_NS)
        assert published.trades_published == TRADES
        worker = start_worker(settings, log)
        wait_for(lambda: trade_count(settings) > 0, 120, "the first stored trades", interval_s=0.02)
        assert server.stop() == 0
        time.sleep(OUTAGE_S)  # the worker's inserts fail meanwhile, and are tried again
        assert worker.poll() is None, log.read_text(errors="replace")
        server = restart_on_same_port(server)
        at_restart = trade_count(settings)
        assert at_restart < TRADES, "the outage must land mid-stream to mean anything"

        wait_for(lambda: trade_count(settings) == TRADES, 180, f"all {TRADES} trades stored")
        wait_drained(settings, topics.TRADES, *topics.CANDLES.values(), timeout_s=180)
        assert worker.poll() is None, log.read_text(errors="replace")
        text = log.read_text(errors="replace")
        assert "failed (attempt 1" in text and "trying again" in text, text[-3000:]

        # each trade once (no insert was half-taken: the server was gone), every candle once
        assert scalar(settings, "SELECT count() FROM trades") == TRADES
        assert scalar(settings, "SELECT uniqExact(venue, symbol, trade_id) FROM trades") == TRADES
        # the 1m candles hold every trade but those of each stream's last, still open, minute
        in_candles = scalar(settings, "SELECT sum(trades) FROM candles FINAL WHERE interval = '1m' AND is_final")
        last_minutes = scalar(settings, "SELECT sum(n) FROM (SELECT count() AS n FROM trades FINAL "
                                        "WHERE (venue, symbol, toStartOfMinute(event_ts)) IN (SELECT venue, symbol, "
                                        "toStartOfMinute(max(event_ts)) FROM trades GROUP BY venue, symbol))")
        assert isinstance(in_candles, int) and isinstance(last_minutes, int)
        assert in_candles + last_minutes == TRADES
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        server.stop()
