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
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopNow(Exception):
    """A second Ctrl-C (or SIGTERM) while `up` drains: stop without waiting for the drain."""


def _interrupt_on(*signals: signal.Signals, raising: type[BaseException] = KeyboardInterrupt) -> None:
    """Ctrl-C and SIGTERM both mean "stop cleanly" (even where SIGINT was inherited ignored,
    as for a background job of a non-interactive shell); once stopping, `raising=StopNow`."""

    def interrupt(signum: int, _frame: object) -> None:
        raise raising

    for sig in signals:
        signal.signal(sig, interrupt)


class NotReady(RuntimeError):
    """`entasis up` gave up waiting for the API to serve (the message says what it last saw)."""


# What `wait_until_ready` reads: (status, decoded JSON body or None) of a GET on an API path.
Getter = Callable[[str], tuple[int, Any]]


def _served(status: int, body: Any) -> bool:
    """A price answer that means "served": a price, or 503 MARKET_002 (served, but its feed is
    marked down). 404 MARKET_001 and 503 UNAVAILABLE ("warming up", store away) are not yet."""
    if status == 200:
        return True
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return status == 503 and code == "MARKET_002"


def wait_until_ready(get: Getter, symbols: Sequence[str], timeout_s: float, *,
                     check: Callable[[], None] = lambda: None, poll_s: float = 0.25,
                     clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Until `/readyz` answers 200 and every one of `symbols` is served by
    `/api/v1/market/price/{symbol}`. `check` runs on every poll (a child that died ends the wait
    with its own error). Raises NotReady after `timeout_s`, naming the last answer seen: a script
    that waits on `entasis up` gets an error, never a system that answers 404 for its symbols."""
    deadline = clock() + timeout_s
    paths = ["/readyz", *(f"/api/v1/market/price/{symbol}" for symbol in symbols)]
    for path in paths:
        while True:
            check()
            try:
                status, body = get(path)
            except OSError as exc:  # refused, reset, TLS not up yet: the same "not yet"
                status, body = 0, str(exc)
            if (status == 200) if path == "/readyz" else _served(status, body):
                break
            if clock() >= deadline:
                raise NotReady(f"not ready after {timeout_s:.0f}s: GET {path} last answered {status} {body}")
            sleep(poll_s)


def http_getter(base: str, cafile: Path | None = None, token: str | None = None, timeout_s: float = 5.0) -> Getter:
    """GETs on `base` (over TLS with `cafile` as the only trusted certificate, with a bearer
    `token` when given); HTTP errors are answers, not exceptions."""
    context = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(path: str) -> tuple[int, Any]:
        request = urllib.request.Request(base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw[:200].decode(errors="replace")

    return get


def _free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's choice); taken by the child a moment later."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


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
            # the portfolio's snapshots name offsets of the old broker's pf.events too (the worker
            # would also notice a mark past the end, but not one a new history has already passed)
            client.command("TRUNCATE TABLE IF EXISTS portfolio_snapshots")
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
        if not self.settings.worker.metrics_port:
            # The embedded default serves the worker's metrics: on a port free now, on loopback.
            worker = self.settings.worker.model_copy(update={"metrics_port": _free_port()})
            self.settings = self.settings.model_copy(update={"worker": worker})
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
            book_gaps: float = 0.0, history_days: int = 90, ready_timeout_s: float = 180.0,
            record_dir: str | None = None) -> int:
        """`history_days`: the warm history before the feed starts: seeded for the simulated feed,
        backfilled from the venues for live feeds (`backfill_for_up`), none for a replay.
        `record_dir`: the live connectors record their frames there (`--record`; live feeds only)."""
        from infra.cli import feeds

        started = time.monotonic()
        stop = threading.Event()
        _interrupt_on(*STOP_SIGNALS)
        feed_result: dict[str, Any] = {}
        feed_done = threading.Event()
        try:
            self.start_infrastructure()
            self.start_services()
            if live and double_port:
                endpoint = self.start_exchange_double(double_port, speed)
            base = f"https://{self.settings.api.host}:{self.settings.api.port}"
            if live and not self.settings.connector.metrics_port:
                # the live feed's connectors serve their metrics too: on a port free now, on loopback
                connector = self.settings.connector.model_copy(update={"metrics_port": _free_port()})
                self.settings = self.settings.model_copy(update={"connector": connector})
            if live:
                print(f"live feeds: {', '.join(map(str, live))}" + (f" through the exchange double {endpoint}"
                                                                      if endpoint else ""))

                def feed() -> None:
                    if history_days:
                        # what risk and predictions need (90 days of 1h by default), before the live data
                        from infra.cli.history import backfill_for_up

                        for line in backfill_for_up(self.settings, live, history_days, endpoint=endpoint):
                            print(f"history backfill: {line}", flush=True)
                    feed_result["summary"] = feeds.live_into(self.settings, live, stop=stop, endpoint=endpoint,
                                                             record_dir=record_dir)
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
            # "Up" means a caller can use it: /readyz green and the feed's symbols answered with a
            # price (a replay's symbols are only known from its file: /readyz alone).
            symbols = (list(dict.fromkeys(f.symbol for f in live)) if live
                       else [] if replay is not None else list(feeds.DEFAULT_SIM_SYMBOLS))

            def alive() -> None:
                self._check_children()
                if feed_done.is_set() and "summary" not in feed_result:
                    raise RuntimeError("the feed failed before the API served its symbols; see the output above")

            worker_base = f"http://{self.settings.worker.metrics_host}:{self.settings.worker.metrics_port}"
            connector_base = (f"http://{self.settings.connector.metrics_host}:{self.settings.connector.metrics_port}"
                              if live else None)
            self._write_up_file(base, worker_base, connector_base)
            print(f"waiting until the worker consumes and the API is ready and serves "
                  f"{', '.join(symbols) or 'the replay'} (at most {ready_timeout_s:.0f}s)...", flush=True)
            deadline = time.monotonic() + ready_timeout_s
            wait_until_ready(http_getter(worker_base), [], ready_timeout_s, check=alive)
            wait_until_ready(self._api_getter(base), symbols, max(0.0, deadline - time.monotonic()), check=alive)
            print(f"Entasis is up in {time.monotonic() - started:.1f}s: API {base}/docs; logs in "
                  f"{self.data_dir / 'logs'}; Ctrl-C stops.\n"
                  f"DEVELOPMENT MODE: self-signed certificate {self.tls_cert} "
                  f"({'new' if self.tls_created else 'reused'}), development JWT secret, every client address "
                  f"allowed. Try:\n  TOKEN=$(.venv/bin/entasis token{self._data_dir_flag()})\n"
                  f"  curl --cacert {self.tls_cert} "
                  f"-H \"Authorization: Bearer $TOKEN\" {base}/api/v1/market/price/ETH-USDT\n"
                  f"Metrics: API {base}/metrics, worker {worker_base}/metrics"
                  + (f", connectors {connector_base}/metrics" if connector_base else "")
                  + f"\nStatus: .venv/bin/entasis status{self._data_dir_flag()}",
                  flush=True)
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
            print("\nstopping: feed, then draining what the broker acknowledged into the database "
                  "(Ctrl-C again: stop without waiting)...", flush=True)
            _interrupt_on(*STOP_SIGNALS, raising=StopNow)
            try:
                stop.set()
                if not feed_done.wait(timeout=15):
                    print("the feed did not stop within 15s: nothing to drain against")
                self._drain(feed_result.get("summary"))
            except StopNow:
                print("\nstopping without the drain: what the broker acknowledged and the worker had not stored "
                      "yet goes with the embedded broker", flush=True)
            return 0
        finally:
            from infra.cli.status import remove_up_file

            remove_up_file(self.data_dir)
            self.stop_all()

    def _write_up_file(self, api: str, worker: str, connectors: str | None) -> None:
        """Where this system answers, for `entasis status` (its ports are chosen at start)."""
        from infra.cli.status import write_up_file

        s = self.settings
        write_up_file(self.data_dir, api=api, cafile=str(self.tls_cert.resolve()), worker=worker,
                      connectors=connectors, bootstrap=s.kafka_bootstrap, namespace=s.topic_namespace,
                      clickhouse_url=s.clickhouse.url, clickhouse_database=s.clickhouse.database,
                      data_dir=str(self.data_dir.resolve()), stale_feed_seconds=s.stale_feed_seconds)

    def _data_dir_flag(self) -> str:
        """What the printed commands need to find this run's data directory."""
        return "" if self.data_dir.resolve() == Path(".entasis").resolve() else f" --data-dir {self.data_dir}"

    def _api_getter(self, base: str) -> Getter:
        """The readiness probe's client: the API's own certificate and a short-lived token for
        market reads, signed as `entasis token` signs (the API runs with --dev)."""
        from api.auth import issue_token
        from api.principal import MARKET_READ
        from infra.config.settings import development_jwt_secret

        token = issue_token(self.settings.api, "entasis-up", [MARKET_READ], ttl_s=600,
                            dev_secret=lambda: development_jwt_secret(self.settings))
        return http_getter(base, self.tls_cert, token)

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
        """Each child in reverse start order (feed already stopped; worker, api, db, broker): SIGTERM,
        SIGKILL after 20 s. Another Ctrl-C meanwhile kills the rest at once."""
        _interrupt_on(*STOP_SIGNALS, raising=StopNow)
        try:
            for child in reversed(self.children):
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
                    try:
                        child.proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        child.proc.kill()
                        child.proc.wait()
        except (StopNow, KeyboardInterrupt):
            print("\nkilling what is still running", flush=True)
            for child in self.children:
                with contextlib.suppress(OSError):
                    child.proc.kill()
            for child in self.children:
                child.proc.wait()
        finally:
            for sig in STOP_SIGNALS:  # everything is stopped: a late Ctrl-C just ends this process
                signal.signal(sig, signal.SIG_DFL)
        self.children.clear()
