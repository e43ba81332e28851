"""`entasis up`: the whole system on one machine, embedded broker and database included.

Start order: broker -> database owner -> migrations -> topics -> worker -> API -> feed.
Stop order (Ctrl-C): feed -> wait until everything the broker acknowledged is stored ->
worker -> API -> database -> broker. The embedded broker keeps topics in memory only, so
the drain step is what makes "nothing acknowledged is lost" true across a shutdown.

Children run in their own session, so a Ctrl-C in the terminal reaches only this process,
which then stops them in order; they also get SIGTERM if this process dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from infra.config.settings import Settings
from infra.dev.processes import wait_for_port
from schemas.venues import Feed

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    with contextlib.suppress(OSError):  # not Linux: children just won't follow us down
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _interrupt_on(*signals: signal.Signals) -> None:
    """Ctrl-C and SIGTERM both mean "stop cleanly" (even where SIGINT was inherited ignored,
    as for a background job of a non-interactive shell)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in signals:
        signal.signal(sig, interrupt)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    settings: Settings
    data_dir: Path
    children: list[Child] = field(default_factory=list)
    tls_cert: Path = Path()
    tls_created: bool = False

    def __post_init__(self) -> None:
        # This process's own clients (checkpoints, drain) read the database owner's password
        # under the data directory, so `--data-dir` must reach them as it reaches the children.
        self.settings = self.settings.model_copy(update={"data_dir": self.data_dir})

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.settings.to_env(), ENTASIS_DATA_DIR=str(self.data_dir))
        return env

    def _spawn(self, name: str, argv: list[str]) -> Child:
        log = self.data_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self._env(),
                                preexec_fn=_die_with_parent)
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def _entasis(self, name: str, *args: str) -> Child:
        return self._spawn(name, [sys.executable, "-m", "infra.cli", *args])

    def start_infrastructure(self) -> None:
        from infra.dev.broker import tansu_command

        self.data_dir.mkdir(parents=True, exist_ok=True)
        host, port = self.settings.kafka_bootstrap.rsplit(":", 1)
        broker = self._spawn("broker", tansu_command(host, int(port)))
        self._wait(broker, host, int(port))
        db_url = urlparse(self.settings.clickhouse.url)
        db = self._entasis("db", "db", "--path", str((self.data_dir / "chdb").resolve()))
        self._wait(db, db_url.hostname or "127.0.0.1", db_url.port or 8123, timeout_s=60)
        self._run_step("migrate")
        self._forget_checkpoints()
        self._run_step("topics", "create")

    def _forget_checkpoints(self) -> None:
        """The embedded broker starts empty, so offsets start again at 0: checkpoints of the
        previous broker's offsets would make the worker skip new messages. Workaround for
        Tansu's memory storage only; a real Kafka keeps its offsets and its checkpoints."""
        from infra.store.clickhouse import make_client

        client = make_client(self.settings)
        try:
            client.command("TRUNCATE TABLE IF EXISTS candle_checkpoints")
        finally:
            client.close()

    def _run_step(self, *args: str) -> None:
        argv = [sys.executable, "-m", "infra.cli", *args]
        done = subprocess.run(argv, env=self._env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`entasis {' '.join(args)}` failed:\n{done.stdout}{done.stderr}")
        print(done.stdout.strip())

    def _wait(self, child: Child, host: str, port: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; see {child.log}")
            try:
                wait_for_port(host, port, timeout_s=0.5, what=child.name)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def start_services(self) -> None:
        """The API runs in development mode (`--dev`: development JWT secret, every address
        allowed) but over HTTPS with a self-signed certificate made here on first use."""
        from api.tls import ensure_self_signed

        self.tls_cert, key = self.data_dir / "tls" / "cert.pem", self.data_dir / "tls" / "key.pem"
        hosts = list(dict.fromkeys(["localhost", "127.0.0.1", self.settings.api.host]))
        self.tls_created = ensure_self_signed(self.tls_cert, key, hosts=hosts)
        self._entasis("worker", "worker")
        api = self._entasis("api", "api", "--dev", "--host", self.settings.api.host, "--port",
                            str(self.settings.api.port), "--tls-cert", str(self.tls_cert), "--tls-key", str(key))
        self._wait(api, self.settings.api.host, self.settings.api.port, timeout_s=60)

    def start_exchange_double(self, port: int, speed: float | None) -> str:
        """The local exchange double (`entasis double`), for live connectors without internet."""
        args = ["double", "--port", str(port)] + (["--speed", str(speed)] if speed else [])
        double = self._entasis("exchange-double", *args)
        self._wait(double, "127.0.0.1", port, timeout_s=60)
        return f"http://127.0.0.1:{port}"

    def run(self, replay: Path | None, speed: float | None, exit_after_feed: bool, sim_rate: float, seed: int,
            live: tuple[Feed, ...] = (), endpoint: str | None = None, double_port: int | None = None,
            book_gaps: float = 0.0, history_days: int = 90) -> int:
        from infra.cli import feeds

        started = time.monotonic()
        stop = threading.Event()
        _interrupt_on(signal.SIGINT, signal.SIGTERM)
        feed_result: dict[str, Any] = {}
        feed_done = threading.Event()
        try:
            self.start_infrastructure()
            self.start_services()
            if live and double_port:
                endpoint = self.start_exchange_double(double_port, speed)
            base = f"https://{self.settings.api.host}:{self.settings.api.port}"
            print(f"Entasis is up in {time.monotonic() - started:.1f}s: API {base}/docs; logs in "
                  f"{self.data_dir / 'logs'}; Ctrl-C stops.\n"
                  f"DEVELOPMENT MODE: self-signed certificate {self.tls_cert} "
                  f"({'new' if self.tls_created else 'reused'}), development JWT secret, every client address "
                  f"allowed. Try:\n  TOKEN=$(.venv/bin/entasis token)\n  curl --cacert {self.tls_cert} "
                  f"-H \"Authorization: Bearer $TOKEN\" {base}/api/v1/market/price/ETH-USDT")
            if live:
                print(f"live feeds: {', '.join(map(str, live))}" + (f" through the exchange double {endpoint}"
                                                                      if endpoint else ""))

                def feed() -> None:
                    feed_result["summary"] = feeds.live_into(self.settings, live, stop=stop, endpoint=endpoint)
            elif replay is not None:
                def feed() -> None:
                    feed_result["summary"] = feeds.replay_into(self.settings, replay, speed=speed, stop=stop)
            else:
                def feed() -> None:
                    # A warm default: seeded history first (risk and predictions need days of
                    # candles), through the import path; the live feed continues from its last price.
                    start_ns = time.time_ns()
                    if history_days:
                        from infra.cli.history import simulate_history_into

                        for summary in simulate_history_into(self.settings, end_ns=start_ns, days=history_days,
                                                             seed=seed):
                            print(f"warm history: {summary}", flush=True)
                    feed_result["summary"] = feeds.simulate_into(self.settings, rate=sim_rate, seed=seed, stop=stop,
                                                                 start_ns=start_ns, book_gaps=book_gaps)
            def feed_then_done() -> None:
                try:
                    feed()
                finally:
                    feed_done.set()

            # Ended by an Event, not Thread.join: a join interrupted by Ctrl-C can leave the
            # Thread object reporting a running thread as stopped (CPython 3.11).
            thread = threading.Thread(target=feed_then_done, name="feed", daemon=True)
            thread.start()
            while not feed_done.wait(0.5):
                self._check_children()
            if "summary" in feed_result:
                print(f"feed finished: {feed_result['summary']}")
            if exit_after_feed:
                self._drain(feed_result.get("summary"))
                return 0
            while True:
                time.sleep(0.5)
                self._check_children()
        except KeyboardInterrupt:
            print("\nstopping: feed, then draining what the broker acknowledged into the database...")
            stop.set()
            if not feed_done.wait(timeout=15):
                print("the feed did not stop within 15s: nothing to drain against")
            self._drain(feed_result.get("summary"))
            return 0
        finally:
            self.stop_all()

    def _check_children(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; see {child.log}")

    def _drain(self, summary: Any, timeout_s: float = 60.0) -> None:
        from infra.cli import feeds

        if summary is None:
            return
        stored = feeds.wait_until_stored(self.settings, summary, timeout_s=timeout_s)
        print("everything acknowledged is stored" if stored else f"drain timed out after {timeout_s:.0f}s")

    def stop_all(self) -> None:
        # reverse start order: feed is already stopped; worker, api, db, broker
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        self.children.clear()
