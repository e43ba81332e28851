"""Determinism shown to the user: `entasis replay ... --run-id R --digest` of the same recording
at full speed, at `--speed 20`, and at `--speed 5` with the worker killed (SIGKILL) and restarted midway,
each in its own isolated run, prints the same digest of every stored table. Every part is a
real process (`entasis worker --run-id`, `entasis replay --run-id --digest`)."""

from __future__ import annotations

import gzip
import itertools
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from infra.config.run import for_run
from infra.store.clickhouse import make_client
from tests.integration.conftest import Infra, child_env
from tests.integration.pipeline import wait_for
from tests.shared_data import BINANCE

pytestmark = pytest.mark.integration

# The first 14,000 lines of the spot capture: about 2 minutes 20 s of event time (2,225 trades,
# the REST snapshot and the depth diffs), so two minutes and a 5-minute window close, book
# snapshots are stored every 10 s, and `--speed 20` plays it in about 7 s.
LINES = 14_000
SOURCE = BINANCE / "spot_ethusdt_20240808.gz"


def slice_of_capture(folder: Path) -> tuple[Path, int]:
    """The slice under the capture's own name (replay reads the market and symbol from it), and
    its trade count, counted as plain text: an oracle that shares no code with the parser."""
    folder.mkdir()
    target = folder / SOURCE.name
    with gzip.open(SOURCE, "rt") as src, gzip.open(target, "wt") as dst:
        lines = list(itertools.islice(src, LINES))
        dst.writelines(lines)
    return target, sum('"stream":"ethusdt@trade"' in line for line in lines)


def start_worker(infra: Infra, run_id: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "worker", "--run-id", run_id],
            env=child_env(infra.settings()),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def replay(infra: Infra, run_id: str, path: Path | None, *extra: str) -> subprocess.Popen[str]:
    source = [str(path)] if path is not None else []
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "replay",
            *source,
            "--run-id",
            run_id,
            "--digest",
            "--quiet",
            "--timeout",
            "240",
            *extra,
        ],
        env=child_env(infra.settings()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def digests(stdout: str) -> dict[str, tuple[int, str]]:
    """`name  rows rows  sha256:hex` lines after the `digest of run` header."""
    lines = stdout.split("digest of run", 1)[1].splitlines()[1:]
    out = {}
    for line in lines:
        name, rows, _, sha = line.split()
        out[name] = (int(rows), sha.removeprefix("sha256:"))
    return out


def stored_trades(infra: Infra, run_id: str) -> int:
    try:
        client = make_client(for_run(infra.settings(), run_id))
    except DatabaseError:  # the run's database does not exist yet
        return 0
    try:
        return int(client.query("SELECT count() FROM trades").result_rows[0][0])
    except DatabaseError:  # nor its tables
        return 0
    finally:
        client.close()


def finish(proc: subprocess.Popen[str], logs: list[Path]) -> str:
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    tails = "\n".join(log.read_text(errors="replace")[-2000:] for log in logs if log.exists())
    assert proc.returncode == 0, f"{stdout}\n{stderr}\n{tails}"
    return stdout


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def test_replays_at_any_speed_and_through_a_worker_crash_print_the_same_digests(infra: Infra, tmp_path: Path) -> None:
    capture, trades = slice_of_capture(tmp_path / "capture")
    tag = uuid.uuid4().hex[:8]
    outputs: dict[str, str] = {}

    for name, extra in (("full", ()), ("speed20", ("--speed", "20"))):
        run_id = f"it-{tag}-{name}"
        log = tmp_path / f"{name}.log"
        worker = start_worker(infra, run_id, log)
        try:
            outputs[name] = finish(replay(infra, run_id, capture, *extra), [log])
        finally:
            stop(worker)

    # the third run: the worker is killed without warning once part of the replay is stored,
    # then a new one takes over from the run's checkpoints and committed offsets
    run_id = f"it-{tag}-crash"
    logs = [tmp_path / "crash-1.log", tmp_path / "crash-2.log"]
    worker = start_worker(infra, run_id, logs[0])
    # at 5x the slice takes about 28 s to publish: the worker is up and storing well before its end
    proc = replay(infra, run_id, capture, "--speed", "5")
    try:
        wait_for(lambda: stored_trades(infra, run_id) > 0, 120, "the first stored trades of the crash run")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        assert stored_trades(infra, run_id) < trades  # the kill came midway, not after the end
        worker = start_worker(infra, run_id, logs[1])
        outputs["crash"] = finish(proc, logs)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(worker)

    full, fast, crash = (digests(outputs[k]) for k in ("full", "speed20", "crash"))
    # not trivially equal: the replay was stored and derived (counts by the independent oracle)
    assert full["trades"][0] == trades == 2225
    assert full["candles_1m"][0] >= 2 and full["candles_5m"][0] >= 1 and full["book_snapshots"][0] >= 10
    assert full == fast == crash, "\n".join(outputs.values())


def test_a_replay_of_the_stored_trades_derives_what_the_capture_replay_derived(infra: Infra, tmp_path: Path) -> None:
    capture, trades = slice_of_capture(tmp_path / "capture")
    tag = uuid.uuid4().hex[:8]
    source, target = f"it-{tag}-src", f"it-{tag}-from-db"
    outputs = {}
    for run_id, args in (
        (source, (str(capture),)),
        (
            target,
            (
                "--from",
                "clickhouse",
                "--source-database",
                for_run(infra.settings(), source).clickhouse.database,
                "--venue",
                "binance",
                "--symbols",
                "ETH-USDT",
                "--start",
                "2024-08-08T23:50:00Z",
                "--end",
                "2024-08-09T00:00:00Z",
                "--speed",
                "20",
            ),
        ),
    ):
        log = tmp_path / f"{run_id}.log"
        worker = start_worker(infra, run_id, log)
        try:
            outputs[run_id] = digests(finish(replay(infra, run_id, None, *args), [log]))
        finally:
            stop(worker)

    from_capture, from_db = outputs[source], outputs[target]
    assert from_db["trades"][0] == trades == 2225
    for table in ("trades", "candles_1m", "candles_5m", "candles_1h", "candles_1d", "vwap"):
        assert from_db[table] == from_capture[table], table
    # the stored snapshots, republished, are the run's book: it stores exactly them again (the diffs
    # between them are not stored: every book state in between is lost, see the README)
    assert from_capture["book_snapshots"][0] > 0
    assert from_db["book_snapshots"] == from_capture["book_snapshots"]
