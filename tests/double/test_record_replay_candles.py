"""Record, replay, compare: a live run (`entasis connect --record DIR` against the exchange double,
into a worker that stores its candles) and the replay of that recording into an isolated run
(`entasis replay DIR --run-id R --digest`, with the run's own worker) store the same candles.

Every part but the double is a real process. Oracle: the live run's own stored candles. The
live run closes its last window per interval by wall time (the idle close) once the feed stops;
the replay decides by event time only and leaves that window open: the replay's final candles
are the live run's, less at most the last window of each interval, and nothing else."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from infra.config.run import for_run
from infra.config.settings import Settings
from infra.dev.exchange_double.binance import BinanceDouble
from infra.store.clickhouse import make_client
from tests.double.test_backfill_double import serving
from tests.integration.conftest import Infra, child_env, start_worker
from tests.integration.conftest import infra as infra  # the embedded broker and database (a fixture)
from tests.integration.pipeline import prepare, scalar, wait_for
from tests.shared_data import BINANCE

pytestmark = pytest.mark.integration

FRAMES = 12_000  # about two minutes of the spot capture: two whole minutes and more
SPEED = 10.0

CANDLE_SQL = (
    "SELECT interval, toUnixTimestamp64Nano(open_ts), toString(open), toString(high), toString(low), "
    "toString(close), toString(volume), trades, first_trade_id, last_trade_id FROM candles FINAL "
    "WHERE is_final = 1 ORDER BY interval, open_ts"
)


def final_candles(settings: Settings) -> list[tuple[object, ...]]:
    client = make_client(settings)
    try:
        return [tuple(r) for r in client.query(CANDLE_SQL).result_rows]
    finally:
        client.close()


def printed_trades() -> int:
    double = BinanceDouble(BINANCE, "spot", max_frames=FRAMES)
    return sum(1 for r in double.load() if r.message.get("e") == "trade")


def test_a_replayed_recording_stores_the_live_runs_candles(infra: Infra, tmp_path: Path) -> None:
    live = infra.settings(stale_feed_seconds=0, connector_stagger_ms=50)
    prepare(live)
    record_dir = tmp_path / "recording"
    env = child_env(live)
    worker = start_worker(live, tmp_path / "live-worker.log")
    procs: list[subprocess.Popen[bytes]] = [worker]
    try:
        with serving(BinanceDouble(BINANCE, "spot", speed=SPEED, max_frames=FRAMES)) as (url, _):
            log = (tmp_path / "connect.log").open("ab")
            connect = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "connect", "--venues", "binance:ETH-USDT", "--endpoint", url,
                 "--record", str(record_dir)], env=env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(connect)
            status = lambda: httpx.get(f"{url}/_status").json()["binance"]  # noqa: E731
            wait_for(lambda: status()["subscriptions"] >= 2, 90, "the connector subscribed")
            time.sleep(1.0)  # the depth snapshot the connector asks for after subscribing
            httpx.post(f"{url}/_control/binance/play")
            wait_for(lambda: status()["finished"], 180, "the playback")
            printed = printed_trades()
            wait_for(lambda: scalar(live, "SELECT count() FROM trades FINAL") == printed, 120,
                     f"the {printed} printed trades stored")
            connect.send_signal(signal.SIGINT)  # stops cleanly: the recording is flushed and closed
            connect.wait(timeout=60)
        # the live run's idle close (10 s of wall time) closes its last windows; then nothing changes
        wait_for(lambda: scalar(live, "SELECT count() FROM candles FINAL WHERE is_final = 1 AND interval = '1m'")
                 == scalar(live, "SELECT count(DISTINCT toStartOfMinute(event_ts)) FROM trades"), 120,
                 "every minute of the live run final")
        live_candles = final_candles(live)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert sorted(p.name for p in record_dir.iterdir())  # recorded through `connect --record`

    run_id = f"rec-{uuid.uuid4().hex[:8]}"
    run = for_run(infra.settings(), run_id)
    log_path = tmp_path / "run-worker.log"
    with log_path.open("ab") as out:
        run_worker = subprocess.Popen([sys.executable, "-m", "infra.cli", "worker", "--run-id", run_id],
                                      env=child_env(infra.settings()), stdout=out, stderr=subprocess.STDOUT)
    try:
        done = subprocess.run([sys.executable, "-m", "infra.cli", "replay", str(record_dir), "--run-id", run_id,
                               "--digest", "--quiet"], env=child_env(infra.settings()), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr + log_path.read_text(errors="replace")[-3000:]
        replayed = final_candles(run)
    finally:
        run_worker.terminate()
        run_worker.wait(timeout=60)

    assert scalar(run, "SELECT count() FROM trades FINAL") == printed
    assert replayed and set(replayed) <= set(live_candles)
    by_interval: dict[object, list[tuple[object, ...]]] = {}
    for candle in live_candles:
        by_interval.setdefault(candle[0], []).append(candle)
    for interval, candles in by_interval.items():
        got = [c for c in replayed if c[0] == interval]
        # the replay's are the live run's, less at most the last (open in event time)
        assert got in (candles, candles[:-1]), interval
    assert len([c for c in replayed if c[0] == "1m"]) >= 1
