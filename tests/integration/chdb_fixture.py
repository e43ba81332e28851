"""A real `python -m infra.dev.chdb_server` subprocess for tests.

Reuse it from any test module (or a conftest.py):

    from tests.integration.chdb_fixture import chdb_server  # noqa: F401  (pytest finds fixtures by name)

    def test_something(chdb_server: str) -> None:
        client = client_for_url(chdb_server)

`chdb_server` gives each test its own server and data directory; `chdb_server_module` shares one per
module. `start_chdb_server` is the plain function underneath, for tests that stop and restart a server.

The URLs carry the server's credential (`http://default:<password>@127.0.0.1:<port>`, read from the
password file the server writes), so `client_for_url(url)` and settings built on the URL just work;
`ChdbServerProcess.base_url` is the same address without it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from infra.store.clickhouse import OWNER_PASSWORD_FILE, OWNER_USER

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
_READY_LINE = re.compile(r"chdb server ready on (http://[^\s:]+:\d+)")


@dataclass
class ChdbServerProcess:
    base_url: str  # http://127.0.0.1:<port>
    password: str
    path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The address with the credential in it, as clients and settings take it."""
        scheme, _, address = self.base_url.partition("://")
        return f"{scheme}://{OWNER_USER}:{quote(self.password, safe='')}@{address}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, as a supervisor would; returns the exit status (0 on a clean stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise RuntimeError(f"chdb server ignored SIGTERM for {timeout}s; log:\n{self.log()}") from None
        return self.process.returncode


def launch_chdb_server(path: Path, log_path: Path, port: int = 0,
                       password: str | None = None) -> subprocess.Popen[bytes]:
    """Start the process without waiting for it; port 0: the server picks a free one and logs it.
    `password`: this one rather than one drawn at random (the command has no option for it: the
    server is started through `serve`, the password in its environment, never on a command line)."""
    if password is None:
        command = [sys.executable, "-m", "infra.dev.chdb_server", "--path", str(path), "--host", "127.0.0.1",
                   "--port", str(port)]
        env = None
    else:
        code = ("import logging, os, sys; from infra.dev.chdb_server import serve; "
                "logging.basicConfig(level='INFO', stream=sys.stderr); "
                f"serve({str(path)!r}, '127.0.0.1', {port}, password=os.environ['CHDB_TEST_PASSWORD'])")
        command, env = [sys.executable, "-c", code], {**os.environ, "CHDB_TEST_PASSWORD": password}
    with log_path.open("wb") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def start_chdb_server(path: Path, log_path: Path | None = None, timeout: float = READY_TIMEOUT_S, *, port: int = 0,
                      password: str | None = None) -> ChdbServerProcess:
    """Start a server on `path` and return once it answers /ping. `port` and `password` (default: a
    free port, a random password) start a stopped server again as a database server comes back."""
    log_path = log_path or path.parent / f"{path.name}-server.log"
    process = launch_chdb_server(path, log_path, port, password)
    try:
        url = _wait_until_ready(process, log_path, timeout)
        password = (path / OWNER_PASSWORD_FILE).read_text(encoding="utf-8")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return ChdbServerProcess(base_url=url, password=password, path=path, log_path=log_path, process=process)


def _wait_until_ready(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace")
        if process.poll() is not None:
            raise RuntimeError(f"chdb server exited with {process.returncode}; log:\n{log}")
        found = _READY_LINE.search(log)
        if found and _pings(found.group(1)):
            return found.group(1)
        time.sleep(0.05)
    raise RuntimeError(f"chdb server not ready after {timeout}s; log:\n{log_path.read_text(errors='replace')}")


def _pings(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return bool(response.read() == b"Ok.\n")
    except OSError:
        return False


@pytest.fixture
def chdb_server(tmp_path: Path) -> Iterator[str]:
    """URL of a fresh server with its own data directory, stopped after the test."""
    server = start_chdb_server(tmp_path / "chdb")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chdb_server_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a server shared by the tests of one module."""
    server = start_chdb_server(tmp_path_factory.mktemp("chdb-module") / "chdb")
    try:
        yield server.url
    finally:
        server.stop()
