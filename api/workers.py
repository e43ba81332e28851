"""Several API processes on one port: `entasis api --workers N`.

The parent reserves the port and starts N children (`entasis api ... --reuse-port`), each a
whole single-process API listening on the port with SO_REUSEPORT: its own socket, event loop,
read model and Kafka feed. The kernel spreads new connections over the children's sockets by
a hash of the connection; one listening socket shared by all (uvicorn's way) leaves that to
whichever process wakes first, and on this machine one process took every connection of a
light load (tests/api/test_api_workers.py). Why processes and not uvicorn's
own `workers=`: uvicorn pickles its config into spawned children, and ours carries objects built
from the settings (the bounded HTTP protocol class); a child that parses the same command line
rebuilds them exactly, and runs the same start-up checks.

What is per process (documented in the README): the in-memory rate limiter (so N > 1 needs the
shared Redis limiter outside development), the WebSocket socket caps, the read model and the
metrics registry. The embedded `chdb://` engine can be opened by one process only, so N > 1
needs the database owner's URL or a ClickHouse server.

The parent forwards SIGINT/SIGTERM, restarts a child that dies while serving (after a short
pause), and gives up, stopping the others, when children keep dying right after their start."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.config.api import ApiSettings
from infra.config.settings import Settings

logger = logging.getLogger("api")

MAX_WORKERS = 64
# A child that exits within this long of its start counts as a failed start; this many in a row
# and the supervisor gives up (a broken setting would otherwise restart forever).
QUICK_EXIT_S = 10.0
MAX_QUICK_EXITS = 3
RESTART_PAUSE_S = 1.0
STOP_GRACE_S = 15.0


def worker_problems(workers: int, settings: Settings, api_settings: ApiSettings, *, dev: bool) -> list[str]:
    """Why `workers` processes cannot serve with these settings (empty: they can)."""
    problems: list[str] = []
    if not 1 <= workers <= MAX_WORKERS:
        problems.append(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}")
    if workers > 1 and settings.clickhouse.url.startswith("chdb:"):
        problems.append(
            "--workers > 1 with an in-process chdb:// database: only one process may open it; "
            "serve from the embedded database owner's URL (what `entasis up` does) or a ClickHouse server"
        )
    if workers > 1 and not dev and not api_settings.redis_url:
        # Each process would count an account's requests alone: N times the contract's limit.
        problems.append(
            "--workers > 1 needs the shared rate limiter (ENTASIS_API_REDIS_URL): with per-process "
            "limits every account would get N times its limit (allowed only with --dev)"
        )
    return problems


def _port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Linux lets only sockets of the same user share a port this way.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """The parent's hold on the port: bound, never listening, so no connection is routed to it,
    and a port another program holds fails here, once, with a clear error."""
    return _port_socket(host, port)


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """One child's own socket on the shared port."""
    sock = _port_socket(host, port)
    sock.listen(backlog)
    return sock


def child_command(args: Sequence[str]) -> list[str]:
    """The command of one child: the parent's `entasis api` arguments, one worker, sharing the port."""
    return [sys.executable, "-m", "infra.cli", *args, "--workers", "1", "--reuse-port"]


def _die_with_parent() -> None:
    """In a child, before it runs: the kernel sends it SIGTERM when the supervisor dies, however
    (a SIGKILLed supervisor would otherwise leave its workers serving the port, unsupervised)."""
    import ctypes

    PR_SET_PDEATHSIG = 1  # linux/prctl.h
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    quick_exits: int = 0


@dataclass
class Supervisor:
    """Runs `count` children of `command` until a signal, restarting those that die."""

    command: list[str]
    count: int
    spawn: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stopping: bool = False
    children: list[_Child] = field(default_factory=list)

    def _start(self, index: int, quick_exits: int = 0) -> _Child:
        proc = self.spawn(self.command, preexec_fn=_die_with_parent)
        logger.info("API worker %d started (pid %d)", index, proc.pid)
        return _Child(index, proc, self.clock(), quick_exits)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        self.stopping = True
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.send_signal(signum)

    def run(self) -> int:
        self.children = [self._start(i) for i in range(self.count)]
        code = 0
        while not self.stopping:
            for slot, child in enumerate(self.children):
                status = child.proc.poll()
                if status is None or self.stopping:
                    continue
                quick = self.clock() - child.started < QUICK_EXIT_S
                exits = child.quick_exits + 1 if quick else 0
                if exits >= MAX_QUICK_EXITS:
                    logger.error("API worker %d keeps exiting at start (status %s): stopping", child.index, status)
                    code = 1
                    self.stop()
                    break
                logger.warning("API worker %d exited with status %s: restarting it", child.index, status)
                self.sleep(RESTART_PAUSE_S)
                self.children[slot] = self._start(child.index, exits)
            else:
                self.sleep(0.2)
        self._reap()
        return code

    def _reap(self) -> None:
        deadline = self.clock() + STOP_GRACE_S
        for child in self.children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                logger.warning("API worker %d did not stop in time: killing it", child.index)
                child.proc.kill()
                child.proc.wait()


def serve_workers(args: Sequence[str], host: str, port: int, count: int) -> int:
    """Bind `host:port`, run `count` children with `args` (the `entasis api` arguments) on it
    until SIGINT/SIGTERM; the exit status is 0 unless the children could not be kept running."""
    try:
        held = reserve_port(host, port)
    except OSError as exc:
        logger.error("cannot bind %s:%s: %s", host, port, exc)
        return 2
    supervisor = Supervisor(child_command(args), count)

    def forward(signum: int, _frame: Any) -> None:
        supervisor.stop(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    logger.info("serving the API with %d worker processes on %s:%s", count, host, port)
    try:
        return supervisor.run()
    finally:
        held.close()
