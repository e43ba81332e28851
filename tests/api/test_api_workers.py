"""`entasis api --workers N`: N processes on one port (api/workers.py).

The served test reads each answer's `entasis_api_process_info{pid=...}` to see which process
answered: a fresh connection per scrape, until
two different processes have answered. Then a worker is killed and must be replaced, and
SIGTERM to the parent stops every worker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.workers import MAX_QUICK_EXITS, Supervisor, child_command, worker_problems
from infra.config.api import ApiSettings
from infra.config.settings import Settings
from infra.dev.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def _settings(url: str = "http://127.0.0.1:18123") -> Settings:
    return Settings(clickhouse={"url": url})  # type: ignore[call-arg, arg-type]


def test_worker_problems() -> None:
    plain = ApiSettings()
    assert worker_problems(1, _settings("chdb:///tmp/x"), plain, dev=False) == []  # one process: no new rule
    assert worker_problems(2, _settings(), plain, dev=True) == []
    in_process = worker_problems(2, _settings("chdb:///tmp/x"), plain, dev=True)
    assert len(in_process) == 1 and "chdb://" in in_process[0]
    shared_limits = worker_problems(2, _settings(), plain, dev=False)
    assert len(shared_limits) == 1 and "ENTASIS_API_REDIS_URL" in shared_limits[0]
    assert worker_problems(2, _settings(), ApiSettings(redis_url="redis://127.0.0.1:6379/0"), dev=False) == []
    assert "between 1 and" in worker_problems(0, _settings(), plain, dev=True)[0]


def test_child_command_keeps_the_arguments_and_takes_the_socket() -> None:
    command = child_command(["api", "--dev", "--port", "9"])
    assert command[1:3] == ["-m", "infra.cli"]
    assert command[3:] == ["api", "--dev", "--port", "9", "--workers", "1", "--reuse-port"]


class _FakeProc:
    def __init__(self, pid: int, lives: int) -> None:
        self.pid, self.lives, self.signals = pid, lives, []  # polls before it exits (-1: until signalled)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.lives == 0:
            self.returncode = 1
        self.lives -= 1
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode or 0


def test_supervisor_gives_up_on_children_that_die_at_start() -> None:
    spawned: list[_FakeProc] = []

    def spawn(command: list[str], preexec_fn: object = None) -> _FakeProc:
        spawned.append(_FakeProc(len(spawned), lives=-1 if len(spawned) == 1 else 0))  # only the 2nd lives
        return spawned[-1]

    now = [0.0]
    supervisor = Supervisor(["x"], 2, spawn=spawn, clock=lambda: now[0], sleep=lambda s: None)  # type: ignore[arg-type]
    assert supervisor.run() == 1
    # the first child died at once every time: it was started MAX_QUICK_EXITS times, then everyone stopped
    assert len(spawned) == 1 + MAX_QUICK_EXITS
    assert all(p.returncode is not None for p in spawned)
    assert spawned[1].signals == [signal.SIGTERM]  # the healthy one was told to stop


def test_supervisor_restarts_a_child_that_dies_while_serving() -> None:
    spawned: list[_FakeProc] = []
    now = [0.0]

    def spawn(command: list[str], preexec_fn: object = None) -> _FakeProc:
        spawned.append(_FakeProc(len(spawned), lives=3 if not spawned else -1))
        return spawned[-1]

    def sleep(seconds: float) -> None:
        now[0] += 60.0  # every pause is long: no exit counts as a failed start
        if len(spawned) == 2:
            supervisor.stop()

    supervisor = Supervisor(["x"], 1, spawn=spawn, clock=lambda: now[0], sleep=sleep)  # type: ignore[arg-type]
    assert supervisor.run() == 0
    assert len(spawned) == 2 and spawned[0].returncode == 1 and spawned[1].signals == [signal.SIGTERM]


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def _two_children(pid: int, without: int | None = None) -> set[int] | None:
    children = _children(pid)
    return children if len(children) == 2 and without not in children else None


def _healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=5, headers={"Connection": "close"}).status_code == 200
    except httpx.HTTPError:
        return False


def _start_time(base: str) -> str:
    # a new connection each time: the kernel hands it to whichever worker accepts first
    text = httpx.get(base + "/metrics", timeout=10, headers={"Connection": "close"}).text
    return next(line for line in text.splitlines() if line.startswith("entasis_api_process_info{"))


def _until(condition, what: str, seconds: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_two_workers_share_the_port_and_are_replaced(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTASIS_API_")}
    env.update(ENTASIS_DATA_DIR=str(tmp_path), ENTASIS_LOGLEVEL="INFO")
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "api", "--dev", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, timeout_s=90, what="api")
        base = f"http://127.0.0.1:{port}"
        workers = _until(lambda: _two_children(proc.pid), "two worker processes")
        # the parent binds the port at once; the workers accept once they have started
        _until(lambda: _healthy(base), "a worker serving", seconds=120)
        seen: set[str] = set()
        _until(lambda: seen.add(_start_time(base)) or len(seen) == 2, f"answers from both workers: {seen}")

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = _until(lambda: _two_children(proc.pid, without=victim), "a replacement worker")
        assert replaced & workers == workers - {victim}
        _until(lambda: _healthy(base), "serving after the replacement")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert not any(Path(f"/proc/{pid}").exists() for pid in replaced)  # reaped: no process left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "exited with status" in text and "restarting it" in text


def test_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTASIS_API_")}
    env.update(ENTASIS_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "api", "--dev", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    workers: set[int] = set()
    try:
        workers = _until(lambda: _two_children(proc.pid), "two worker processes")
        proc.kill()  # no chance to stop them itself
        proc.wait(timeout=30)
        _until(lambda: not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers),
               "the workers gone with their supervisor")
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_refuse_shared_limits_they_cannot_keep(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTASIS_API_")}
    env.update(ENTASIS_DATA_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "api", "--port", str(free_port()), "--workers", "2"],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "ENTASIS_API_REDIS_URL" in done.stderr and "plain HTTP" in done.stderr
    assert "Traceback" not in done.stderr


pytestmark = pytest.mark.timeout(240)
