"""`entasis status` against real processes: the embedded broker and database, a worker with its
metrics port and an API (`entasis api --dev`), every one its own process; and the worker's
`/readyz` while the database owner stops and comes back.

Oracles: what this test published (trades, one message that is no trade batch), what the database
holds (queried here, not through the code under test), and which process this test stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from infra.cli import status
from infra.cli.feeds import simulate_into, wait_until_stored
from infra.config.settings import Settings
from infra.dev.processes import free_port, wait_for_port
from schemas import topics
from streams.ingest.publisher import KafkaPublisher
from tests.integration.chdb_fixture import _wait_until_ready
from tests.integration.conftest import Infra, child_env, start_worker
from tests.integration.pipeline import prepare, scalar, wait_for

pytestmark = pytest.mark.integration

START_NS = 1_723_161_600 * 10**9


def readyz(base: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_status(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "status", *argv],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_reports_a_running_worker_and_api_then_the_worker_gone(infra: Infra, tmp_path: Path) -> None:
    settings = infra.settings(worker_metrics_port=free_port(), api_port=free_port(), stale_feed_seconds=0)
    prepare(settings)
    worker_url = f"http://127.0.0.1:{settings.worker.metrics_port}"
    api_url = f"http://127.0.0.1:{settings.api.port}"
    worker = start_worker(settings, tmp_path / "worker.log")
    with (tmp_path / "api.log").open("wb") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "api", "--dev", "--port", str(settings.api.port)],
            env=child_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", settings.api.port, timeout_s=60, what="api")
        wait_for(lambda: readyz(worker_url)[0] == 200, 60, "the worker's /readyz")
        wait_for(lambda: readyz(api_url)[0] == 200, 60, "the API's /readyz")

        result = simulate_into(settings, rate=1000.0, seed=7, count=3000, start_ns=START_NS)
        trades_topic = topics.TRADES.full_name(settings.topic_namespace)
        with KafkaPublisher(settings.kafka_bootstrap) as out:
            out.publish(trades_topic, b"sim:BTC-USDT", b"{not a trade batch")  # one dead letter
        assert wait_until_stored(settings, result, timeout_s=120), (tmp_path / "worker.log").read_text()[-3000:]

        where = status.Targets(api=api_url, worker=worker_url, bootstrap=settings.kafka_bootstrap)
        group = settings.worker.id

        def settled() -> bool:  # Faust commits every few seconds: wait for the commit after the last message
            report = status.gather(settings, where)
            rows = [r for r in report["consumer_lag"] if r["group"] == group and r["topic"] == trades_topic]
            return bool(rows) and all(r["lag"] == 0 for r in rows) and report["dead_letters"]["on_topic"] == 1

        wait_for(settled, 60, "the worker's committed offsets at the end of md.trades.v1", interval_s=1.0)

        done = run_status(settings, "--api", api_url, "--worker", worker_url, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["ready"] is True
        assert report["components"]["worker"]["checks"] == {
            "consumer": {"ok": True, "state": "assigned"},
            "database": {"ok": True, "state": "reachable"},
        }
        assert report["components"]["api"]["checks"]["market_feed"] == {"ok": True, "state": "consuming"}
        assert report["components"]["connectors"]["url"] is None  # none configured: not checked

        # every trades partition: the group committed up to the partition's end, which is what was produced
        trade_rows = [r for r in report["consumer_lag"] if r["group"] == group and r["topic"] == trades_topic]
        assert trade_rows and all(r["committed"] == r["end"] and r["lag"] == 0 for r in trade_rows)
        messages = sum(r["end"] for r in trade_rows)
        assert messages >= 3000 // 100 + 1  # batches of at most 100 trades, and the bad message

        feeds = {row["feed"]: row for row in report["feeds"]}
        assert set(feeds) == {"sim:BTC-USDT", "sim:ETH-USDT"}
        for key, row in feeds.items():
            venue, symbol = key.split(":")
            newest = scalar(
                settings,
                "SELECT toUnixTimestamp64Nano(max(event_ts)) FROM trades "
                f"WHERE venue = '{venue}' AND symbol = '{symbol}'",
            )
            assert row["published_event_ns"] == row["stored_event_ns"] == newest
            assert row["sink_lag_s"] == 0
        assert report["dead_letters"]["on_topic"] == 1
        assert sum(report["dead_letters"]["published_by_worker"].values()) == 1
        assert report["sink"]["trades"] >= 3000  # rows inserted (a batch written twice would count twice)

        text = run_status(settings, "--api", api_url, "--worker", worker_url)
        assert text.returncode == 0
        assert text.stdout.startswith("Entasis READY")
        for heading in ("PROCESS", "FEED", "GROUP", "dead letters: 1 on the topic"):
            assert heading in text.stdout, text.stdout

        stop(worker)
        gone = run_status(settings, "--api", api_url, "--worker", worker_url, "--json")
        assert gone.returncode == 1
        report = json.loads(gone.stdout)
        assert report["ready"] is False
        assert report["components"]["worker"]["reachable"] is False
        assert report["components"]["api"]["ready"] is True  # the API does not depend on the worker
    finally:
        stop(worker)
        stop(api)


def test_the_workers_readyz_is_red_while_its_database_owner_is_stopped_and_green_after(
    infra: Infra, tmp_path: Path
) -> None:
    """A database of the test's own on a fixed port, so it can be stopped and started again there;
    the worker reads the owner's password from its data directory, as under `entasis up`."""
    data = tmp_path / "data"
    db_port = free_port()

    starts = 0

    def start_db() -> subprocess.Popen[bytes]:
        nonlocal starts
        starts += 1
        log = tmp_path / f"db-{starts}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "infra.dev.chdb_server",
                    "--path",
                    str(data / "chdb"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(db_port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_until_ready(proc, log, 60)
        return proc

    data.mkdir()
    db = start_db()
    settings = infra.settings(
        clickhouse_url=f"http://127.0.0.1:{db_port}", data_dir=data, worker_metrics_port=free_port()
    )
    worker = None
    try:
        prepare(settings)
        worker = start_worker(settings, tmp_path / "worker.log")
        base = f"http://127.0.0.1:{settings.worker.metrics_port}"
        wait_for(lambda: readyz(base)[0] == 200, 60, "the worker's /readyz")

        stop(db)
        wait_for(lambda: readyz(base)[0] == 503, 20, "/readyz red without the database")
        _, body = readyz(base)
        assert body["checks"]["database"] == {"ok": False, "state": "unreachable"}
        assert body["checks"]["consumer"] == {"ok": True, "state": "assigned"}  # the rest is fine
        with urllib.request.urlopen(base + "/healthz", timeout=5) as alive:
            assert alive.status == 200  # alive all the same: nothing to restart

        db = start_db()  # a new owner, a new password: the probe's next client reads it
        wait_for(lambda: readyz(base)[0] == 200, 20, "/readyz green again")
        assert worker.poll() is None
    finally:
        if worker is not None:
            stop(worker)
        stop(db)
