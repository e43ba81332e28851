"""End to end throughput against a raw Kafka baseline, in one run on one embedded broker:

    python -m tests.bench.bench_pipeline [--trades 500000] [--rate 20000] [--json PATH]

1. Baseline: the simulated feed's own `trade_batch.v1` messages (same seed, start, rate and
   count as step 2, so the same keys, bytes and batching) produced with confluent-kafka to a
   scratch topic, consumed back (`fetch.queue.backoff.ms=10`, partitions assigned: no group
   join), and both at once (a consumer thread that has reached the end of every partition
   before the producer starts). Best of `--raw-repeat` runs; start-up is reported apart.
2. Pipeline: a fresh namespace and database, the trades published with `simulate_into`, then
   the real worker (`python -m infra.cli worker`) started on that backlog; timed from its
   spawn until every trade is stored (`wait_until_stored`) and every candle that closes is in
   the `candles` table (counted beforehand by running the agent's `CandleStream`, i.e. a
   `CandleBuilder` per interval, over the same messages). The stored-row count is sampled as
   it grows, so the worker's start-up (process and imports, Faust services, group join, up to
   "Ready", from its log) and the steady rate after the first insert are both visible. CPU
   seconds of worker, database owner and broker tell which one was busy.

Prints a table, then the figures as JSON on the last line (and to `--json`). Starts and stops
its own Tansu, chdb owner and worker, also on error and Ctrl-C. Reported, never asserted.

`--metrics on|off|both` (default on): the worker's Prometheus metrics counted, served and scraped
every `--scrape-every` seconds (on), or not counted at all (`ENTASIS_WORKER_METRICS=false`, off).
`both` runs the pipeline with and without them on the same broker and database, in `--metrics-rounds`
rounds of alternating order (off, on, then on, off, ...: the embedded broker slows as it fills,
so neither setting always runs on the fuller broker), and reports the best of each and their ratio.

The worker inherits this environment, and Faust reads its own settings from it (over the
App's arguments), so a consumer setting can be tried without code changes, e.g.
`CONSUMER_MAX_FETCH_SIZE=16777216 python -m tests.bench.bench_pipeline`. `--profile-worker
out.txt` samples the worker with py-spy (on PATH or in $PY_SPY).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from infra.cli.feeds import DEFAULT_SIM_SYMBOLS, simulate_into, wait_until_stored
from infra.config.settings import Settings
from infra.dev.broker import tansu_binary
from infra.dev.processes import free_port, wait_for_port
from infra.store.clickhouse import make_client
from schemas.topics import RAW_PARTITIONS
from schemas.wire import decode_trade_batch
from streams.core.candle_stream import CandleStream
from streams.ingest.publisher import ListPublisher, Published, producer_config
from streams.ingest.simulated import simulate
from tests.bench.report import report as report_figure
from tests.integration.chdb_fixture import start_chdb_server
from tests.integration.conftest import child_env
from tests.integration.pipeline import prepare

START_NS = (1_723_161_600 - 5) * 10**9  # 5 s before a minute ends: that window closes within the run
SEED = 7
# 20k trades/s per symbol with the simulator's 50 ms windows: ~1000 trades a window, cut into
# batches of at most 100, so ~95 trades a message (at 2k/s a Poisson(100) window splits into
# 100 + a few half the time: ~68 a message).
DEFAULT_RATE = 20_000.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat(5)


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # ppid: field 4 of stat(5)
            found.append(int(stat.parent.name))
    return found


# ---------------------------------------------------------------------------------------------
# the messages


@dataclass
class Feed:
    messages: list[Published]
    trades: int

    @property
    def per_message(self) -> float:
        return self.trades / len(self.messages)


def feed_messages(n_trades: int, rate: float) -> Feed:
    """Exactly what `simulate_into(..., rate, SEED, count=n_trades, start_ns=START_NS)` publishes."""
    publisher = ListPublisher()
    summary = simulate(publisher, list(DEFAULT_SIM_SYMBOLS), seed=SEED, start_ns=START_NS, trades_per_s=rate,
                       n_trades=n_trades)
    return Feed(publisher.messages, summary.trades)


def expected_candles(feed: Feed, settings: Settings) -> int:
    """Distinct candles (venue, symbol, interval, open time) that the trades' own watermark
    closes: what the worker's candles agent (every interval, through CandleStream) must store.
    Windows closed later by the worker's idle timeout are not waited for."""
    streams: dict[tuple[str, str], CandleStream] = {}
    keys: set[tuple[str, str, str, int]] = set()
    for message in feed.messages:
        venue, symbol, rows = decode_trade_batch(message.value)
        stream = streams.get((venue, symbol))
        if stream is None:
            stream = streams[(venue, symbol)] = CandleStream(
                venue, symbol, lateness_ns=settings.candle.lateness_ms * 10**6,
                grace_ns=settings.candle.grace_ms * 10**6)
        keys.update((venue, symbol, c.interval, c.open_ts_ns) for c in stream.update(rows).candles)
    return len(keys)


# ---------------------------------------------------------------------------------------------
# baseline: raw confluent-kafka


def create_scratch_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=RAW_PARTITIONS, replication_factor=1)]).values():
        future.result()


def produce_all(bootstrap: str, topic: str, messages: list[Published]) -> float:
    """Seconds to produce and flush every message, with the feed's producer configuration."""
    producer = Producer(producer_config(bootstrap, {}))
    started = time.perf_counter()
    for m in messages:
        while True:
            try:
                producer.produce(topic, m.value, m.key)
                break
            except BufferError:
                producer.poll(0.01)  # sending what is queued frees room
    if producer.flush(60):
        raise RuntimeError("raw produce: messages left undelivered")
    return time.perf_counter() - started


def raw_consumer(bootstrap: str, topic: str, eof: bool = False) -> Consumer:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        # librdkafka's default (1000 ms) stalls a consumer whose local queue filled (DESIGN.md).
        "fetch.queue.backoff.ms": 10,
        # Tansu answers a fetch at the end of a partition only after this long-poll wait (default
        # 500 ms), even when data arrives meanwhile: it would time the poll, not the transfer.
        "fetch.wait.max.ms": 10,
        "enable.partition.eof": eof,
    })
    # Assigned, not subscribed: a group join on Tansu waits half the session timeout, which is
    # start-up, not throughput (the worker's join is reported on its own below).
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(RAW_PARTITIONS)])
    return consumer


def consume_count(consumer: Consumer, count: int, timeout_s: float = 60.0) -> tuple[float, float]:
    """(seconds from the call to the first message, seconds from the first to the last) for `count` messages."""
    started = time.perf_counter()
    first = None
    got = 0
    deadline = started + timeout_s
    while got < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"raw consume: {got} of {count} messages after {timeout_s:.0f}s")
        # One message first, so start-up ends when data flows, not when a first batch is full;
        # then never more than is left: consume() waits for a full batch or its timeout.
        for m in consumer.consume(1 if first is None else min(1000, count - got), 0.5):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"raw consume: {err}")
            if first is None:
                first = time.perf_counter()
            got += 1
    assert first is not None
    return first - started, time.perf_counter() - first


def produce_and_consume(bootstrap: str, topic: str, messages: list[Published]) -> float:
    """Seconds from the producer's start until a concurrent consumer has every message."""
    consumer = raw_consumer(bootstrap, topic, eof=True)
    try:
        # Wait until the consumer has fetched to the (empty) end of every partition, so its
        # start-up is not counted.
        at_end: set[int] = set()
        deadline = time.monotonic() + 30
        while len(at_end) < RAW_PARTITIONS and time.monotonic() < deadline:
            for m in consumer.consume(100, 0.1):
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition() or 0)
        done = threading.Event()
        finished: list[float] = []

        def consume() -> None:
            consume_count(consumer, len(messages))
            finished.append(time.perf_counter())
            done.set()

        thread = threading.Thread(target=consume, daemon=True)
        started = time.perf_counter()
        thread.start()
        produce_all(bootstrap, topic, messages)
        if not done.wait(60):
            raise RuntimeError("raw produce+consume: the consumer did not get every message")
        thread.join()
        return finished[0] - started
    finally:
        consumer.close()


@dataclass
class Baseline:
    produce_s: float = float("inf")
    consume_s: float = float("inf")
    consume_startup_s: float = float("inf")
    both_s: float = float("inf")


def baseline(bootstrap: str, feed: Feed, repeat: int) -> Baseline:
    best = Baseline()
    count = len(feed.messages)
    for run in range(repeat):
        topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
        create_scratch_topic(bootstrap, topic)
        best.produce_s = min(best.produce_s, produce_all(bootstrap, topic, feed.messages))
        consumer = raw_consumer(bootstrap, topic)
        try:
            startup, consume_s = consume_count(consumer, count)
        finally:
            consumer.close()
        best.consume_s = min(best.consume_s, consume_s)
        best.consume_startup_s = min(best.consume_startup_s, startup)
        both_topic = f"bench.rawboth.{uuid.uuid4().hex[:8]}"
        create_scratch_topic(bootstrap, both_topic)
        best.both_s = min(best.both_s, produce_and_consume(bootstrap, both_topic, feed.messages))
        print(f"  raw run {run + 1}/{repeat} done", file=sys.stderr)
    return best


# ---------------------------------------------------------------------------------------------
# pipeline: simulate_into, then the real worker


@dataclass
class PipelineRun:
    publish_s: float = 0.0
    published: int = 0
    startup: dict[str, float] = field(default_factory=dict)  # spawn -> Faust start-up milestones (its log)
    first_rows_s: float | None = None  # spawn -> first trade rows visible
    first_rows: int = 0
    trades_done_s: float | None = None  # spawn -> wait_until_stored true
    candles_done_s: float | None = None  # spawn -> every expected candle stored
    expected_candles: int = 0
    stored_trades: int = 0
    stored_candles: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    worker_steady_cpu_share: float = 0.0
    worker_exit: int | None = None
    scrapes: int = 0  # /metrics answers during the run (--scrape-every)


# Faust's INFO lines that mark start-up phases; the log stamps them with the local wall clock.
_LOG_LINE = re.compile(rb"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\d+\] \[INFO\] (.*)$", re.MULTILINE)
_MILESTONES = (
    ("faust_starting", b"[^Worker]: Starting"),
    ("joining_group", b"(Re-)joining group"),
    ("joined_group", b"Joined group"),
    ("ready", b"[^Worker]: Ready"),
)


def spawn_worker(settings: Settings, log: Path, served: bool) -> subprocess.Popen[bytes]:
    """`entasis worker` on the run's settings; only a `served` one serves its metrics (one port)."""
    env = child_env(settings)
    if not served:
        env["ENTASIS_WORKER_METRICS_PORT"] = "0"
    with log.open("wb") as fh:
        # INFO only for Faust's one "Ready" line at the end of start-up; nothing per message.
        return subprocess.Popen([sys.executable, "-m", "infra.cli", "worker", "--loglevel", "info"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT)


def startup_milestones(log: bytes, spawned_wall: float) -> dict[str, float]:
    """Seconds from the worker's spawn to each start-up milestone its log shows (first occurrence)."""
    found: dict[str, float] = {}
    for stamp, text in _LOG_LINE.findall(log):
        for name, needle in _MILESTONES:
            if name not in found and needle in text:
                at = datetime.strptime(stamp.decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found[name] = at - spawned_wall
    return found


@contextlib.contextmanager
def scraping(settings: Settings, every_s: float) -> Iterator[list[int]]:
    """GET the worker's /metrics every `every_s` while the block runs, as Prometheus would (more
    often: it usually scrapes every 15 s); yields the list of answered scrapes' sizes in bytes."""
    answered: list[int] = []
    port = settings.worker.metrics_port
    if not every_s or not port:
        yield answered
        return
    import urllib.request

    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(every_s):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    answered.append(len(response.read()))
            except OSError:
                pass  # not listening yet (start-up), or gone

    thread = threading.Thread(target=scrape, name="scraper", daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(timeout=10)


def run_pipeline(settings: Settings, feed: Feed, rate: float, work: Path, pids: dict[str, int],
                 children: list[subprocess.Popen[bytes]], timeout_s: float, profile: Path | None = None,
                 scrape_every_s: float = 0.0, n_workers: int = 1) -> PipelineRun:
    with scraping(settings, scrape_every_s) as scrapes:
        out = _run_pipeline(settings, feed, rate, work, pids, children, timeout_s, profile, n_workers)
    out.scrapes = len(scrapes)
    return out


def _run_pipeline(settings: Settings, feed: Feed, rate: float, work: Path, pids: dict[str, int],
                  children: list[subprocess.Popen[bytes]], timeout_s: float, profile: Path | None,
                  n_workers: int) -> PipelineRun:
    out = PipelineRun()
    prepare(settings)
    out.expected_candles = expected_candles(feed, settings)

    result = simulate_into(settings, rate=rate, seed=SEED, count=feed.trades, start_ns=START_NS)
    out.publish_s, out.published = result.elapsed_s, result.trades_published
    gc.collect()  # the feed's producer sits in a reference cycle: close it now, not at exit (after the broker)
    if out.published != feed.trades:
        raise RuntimeError(f"published {out.published} trades, expected {feed.trades}")

    log = work / "worker.log"
    client = make_client(settings)
    try:
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        own_before = time.process_time()
        spawned, spawned_wall = time.monotonic(), time.time()
        logs = [log, *(work / f"worker-{i}.log" for i in range(1, n_workers))]
        workers = [spawn_worker(settings, path, served=i == 0) for i, path in enumerate(logs)]
        children.extend(workers)
        worker = workers[0]
        profiler = start_profiler(worker.pid, profile) if profile is not None else None
        if profiler is not None:
            children.append(profiler)
        deadline = spawned + timeout_s

        def elapsed() -> float:
            return time.monotonic() - spawned

        first_rows_s: float | None = None
        worker_cpu_at_first = 0.0
        # Trades: sample the growing row count (no FINAL: cheap, from part metadata), and once it
        # reaches the feed's size ask wait_until_stored, which checks the last trade id of each stream.
        while True:
            for w, path in zip(workers, logs, strict=True):
                if w.poll() is not None:
                    raise RuntimeError(f"a worker exited with {w.returncode}; log:\n{path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"trades not stored within {timeout_s:.0f}s; log:\n{log.read_text()[-3000:]}")
            count = int(client.command("SELECT count() FROM trades"))  # type: ignore[arg-type]
            out.samples.append((elapsed(), count))
            if count and first_rows_s is None:
                first_rows_s, out.first_rows = elapsed(), count
                worker_cpu_at_first = sum(cpu_seconds(w.pid) for w in workers)
            if count >= feed.trades and wait_until_stored(settings, result, timeout_s=1.0):
                trades_done_s = elapsed()
                break
            time.sleep(0.05)
        while True:
            out.stored_candles = int(client.command("SELECT count() FROM candles FINAL"))  # type: ignore[arg-type]
            if out.stored_candles >= out.expected_candles:
                out.candles_done_s = elapsed()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{out.stored_candles} of {out.expected_candles} candles within {timeout_s:.0f}s")
            time.sleep(0.05)
        out.cpu_s = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        out.cpu_s["worker"] = sum(cpu_seconds(w.pid) for w in workers)
        # the trade store's process of each worker (streams/sinks/trade_store.py), started at its spawn
        out.cpu_s["trade store"] = sum(cpu_seconds(child) for w in workers for child in children_of(w.pid))
        # Busy share of one core once past start-up: near 1.0 means CPU-bound on the event loop.
        assert first_rows_s is not None
        out.worker_steady_cpu_share = (out.cpu_s["worker"] - worker_cpu_at_first) / (trades_done_s - first_rows_s)
        out.first_rows_s, out.trades_done_s = first_rows_s, trades_done_s
        out.cpu_s["bench (polling)"] = time.process_time() - own_before
        out.startup = startup_milestones(log.read_bytes(), spawned_wall)
        out.stored_trades = int(client.command("SELECT count() FROM trades FINAL"))  # type: ignore[arg-type]
    finally:
        client.close()
    out.worker_exit = max(stop_process(w) for w in workers)
    if profiler is not None:
        try:
            profiler.wait(timeout=60)  # it writes its output once the worker is gone
        except subprocess.TimeoutExpired:
            stop_process(profiler)
    return out


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the worker, idle time included (a worker that waits is the finding, not
    noise); it writes `out` when the worker exits. .svg: flame graph, .json: speedscope, else
    collapsed stacks, one `frame;frame;... count` line each."""
    binary = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if binary is None:
        raise RuntimeError("--profile-worker needs py-spy on PATH or in $PY_SPY")
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    # --nonblocking: pausing the worker for every sample halved its rate (39k against ~100k
    # trades/s steady), which made the profile describe a different run
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--idle", "--threads", "--nonblocking",
                             "--rate", "200", "--format", fmt, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# ---------------------------------------------------------------------------------------------
# report


def report(feed: Feed, raw: Baseline, run: PipelineRun, import_s: float) -> dict[str, Any]:
    n, msgs = feed.trades, len(feed.messages)
    assert run.trades_done_s is not None and run.candles_done_s is not None and run.first_rows_s is not None

    def rates(seconds: float, trades: int = n, messages: int = msgs) -> dict[str, float]:
        return {"seconds": seconds, "trades_per_s": trades / seconds, "messages_per_s": messages / seconds}

    both = rates(raw.both_s)
    sequential = rates(raw.produce_s + raw.consume_s)
    e2e_trades = rates(run.trades_done_s)
    e2e_all = rates(run.candles_done_s)
    after_first = run.trades_done_s - run.first_rows_s
    steady = rates(after_first, n - run.first_rows, round((n - run.first_rows) / feed.per_message))
    # Start-up estimate: the time to the first insert minus what its rows take at the steady rate.
    # (a feed so small that the first insert held it all has no steady part to extrapolate)
    startup = run.first_rows_s - run.first_rows / steady["trades_per_s"] if steady["trades_per_s"] else run.first_rows_s
    figures: dict[str, Any] = {
        "trades": n,
        "messages": msgs,
        "trades_per_message": feed.per_message,
        "raw_produce": rates(raw.produce_s),
        "raw_consume": rates(raw.consume_s),
        "raw_consume_startup_s": raw.consume_startup_s,
        "raw_produce_then_consume": sequential,
        "raw_produce_and_consume_at_once": both,
        "publish_simulate_into": rates(run.publish_s),
        "worker_import_s": import_s,
        "worker_startup_milestones_s": run.startup,
        "worker_first_rows_s": run.first_rows_s,
        "worker_first_rows": run.first_rows,
        "worker_startup_estimate_s": startup,
        "pipeline_trades_stored": e2e_trades,
        "pipeline_trades_and_candles_stored": e2e_all,
        "pipeline_steady_after_first_insert": steady,
        "ratio_pipeline_to_raw_both": e2e_all["trades_per_s"] / both["trades_per_s"],
        "ratio_steady_to_raw_both": steady["trades_per_s"] / both["trades_per_s"],
        "ratio_pipeline_to_raw_sequential": e2e_all["trades_per_s"] / sequential["trades_per_s"],
        "target_trades_per_s": 200_000,
        "ratio_pipeline_to_target": e2e_all["trades_per_s"] / 200_000,
        "ratio_steady_to_target": steady["trades_per_s"] / 200_000,
        "expected_candles": run.expected_candles,
        "stored_candles": run.stored_candles,
        "stored_trades_final": run.stored_trades,
        "cpu_seconds": run.cpu_s,
        "worker_steady_cpu_share": run.worker_steady_cpu_share,
        "worker_exit": run.worker_exit,
        "samples": run.samples,
    }

    def row(name: str, r: dict[str, float]) -> str:
        return f"{name:44} {r['seconds']:9.3f} {r['trades_per_s']:14,.0f} {r['messages_per_s']:12,.0f}"

    print()
    print(f"{n:,} trades in {msgs:,} messages ({feed.per_message:.1f} trades a message), {RAW_PARTITIONS} partitions, "
          f"{run.expected_candles} candles to close")
    print(f"{'path':44} {'seconds':>9} {'trades/s':>14} {'messages/s':>12}")
    print(row("raw produce (confluent-kafka, feed config)", figures["raw_produce"]))
    print(row("raw consume (after first message)", figures["raw_consume"]))
    print(row("raw produce, then consume", sequential))
    print(row("raw produce + consume at once", both))
    print(row("publish: simulate_into (generate + produce)", figures["publish_simulate_into"]))
    print(row("pipeline: worker spawn -> trades stored", e2e_trades))
    print(row("pipeline: worker spawn -> trades + candles", e2e_all))
    print(row("pipeline: steady, after first insert", steady))
    print(f"start-up: raw consumer to first message {raw.consume_startup_s:.2f} s (assigned, no group join)")
    report_figure("pipeline", f"{n:,} trades, worker spawn -> trades + candles stored", e2e_all["trades_per_s"],
                  "trades/s", anchor="raw confluent-kafka produce + consume", anchor_value=both["trades_per_s"],
                  target=">= 200k trades/s, >= 0.10 of raw")
    report_figure("pipeline", "steady, after the first insert", steady["trades_per_s"], "trades/s",
                  anchor="raw produce + consume", anchor_value=both["trades_per_s"])
    report_figure("pipeline", "feed publish (simulate_into)", figures["publish_simulate_into"]["trades_per_s"],
                  "trades/s", anchor="raw produce", anchor_value=figures["raw_produce"]["trades_per_s"],
                  target=">= 1M trades/s")
    m = run.startup
    phases = [("process start + imports + build", None, "faust_starting"),
              ("Faust services until the join request", "faust_starting", "joining_group"),
              ("group join (Tansu)", "joining_group", "joined_group"),
              ("assignment, seek, fetcher -> Ready", "joined_group", "ready")]
    for label, since, until in phases:
        if until in m and (since is None or since in m):
            print(f"  worker {label:40} {m[until] - (m[since] if since else 0.0):6.2f} s")
    print(f"  worker spawn -> Ready {m.get('ready', float('nan')):.2f} s (imports alone, timed apart: "
          f"{import_s:.2f} s); -> first {run.first_rows:,} rows stored {run.first_rows_s:.2f} s; "
          f"start-up by extrapolating the steady rate back: {startup:.2f} s")
    print(f"ratios: pipeline / raw at once {figures['ratio_pipeline_to_raw_both']:.3f} (steady "
          f"{figures['ratio_steady_to_raw_both']:.3f}), pipeline / raw sequential "
          f"{figures['ratio_pipeline_to_raw_sequential']:.3f}; pipeline / 200k target "
          f"{figures['ratio_pipeline_to_target']:.2f} (steady {figures['ratio_steady_to_target']:.2f})")
    window = run.candles_done_s
    cores = os.cpu_count() or 1
    print(f"CPU during the pipeline run ({window:.2f} s wall, {cores} cores = {cores * window:.2f} CPU-s): "
          + ", ".join(f"{k} {v:.2f} s ({v / window:.0%})" for k, v in run.cpu_s.items())
          + f"; worker after its first insert: {run.worker_steady_cpu_share:.0%} of a core")
    print(f"stored: {run.stored_trades:,} trades (FINAL), {run.stored_candles} of {run.expected_candles} candles; "
          f"worker exit {run.worker_exit}")
    return figures


def time_imports() -> float:
    """A fresh interpreter importing what the worker imports: the part of start-up no broker causes."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import faust, infra.cli, infra.store.clickhouse, streams.app"], check=True)
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # The first Ctrl-C or SIGTERM unwinds through the finally blocks that stop the children; a
    # second one (a terminal sends SIGINT to the whole group, `entasis bench` may pass one on)
    # must not cut that clean-up short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def start_broker(port: int, log: Path) -> subprocess.Popen[bytes]:
    """Tansu with infra.dev.broker.start_tansu's command line, but in its own session: a terminal's
    Ctrl-C (sent to the whole foreground group) must not kill the broker under the feed's final
    flush, which would then wait its full 60 s. Tansu exits on SIGINT even when it is ignored,
    so only a separate session keeps it out of reach; we stop it last, with SIGTERM."""
    url = f"tcp://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                                 "--storage-engine", "memory://tansu/"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, what="tansu broker")
    except TimeoutError:
        stop_process(proc)
        raise
    return proc


@contextlib.contextmanager
def embedded(work: Path) -> Iterator[tuple[str, str, dict[str, int], list[subprocess.Popen[bytes]]]]:
    """Tansu and the chdb owner, and a list for children started later; all stopped on the way out."""
    children: list[subprocess.Popen[bytes]] = []
    port = free_port()
    broker = start_broker(port, work / "tansu.log")
    db = None
    try:
        db = start_chdb_server(work / "chdb", work / "chdb.log")
        yield f"127.0.0.1:{port}", db.url, {"tansu": broker.pid, "chdb server": db.process.pid}, children
    finally:
        for child in children:
            stop_process(child)
        if db is not None:
            db.stop()
        stop_process(broker)


def metrics_settings(bootstrap: str, clickhouse_url: str, metrics: str, scrape_every_s: float) -> Settings:
    """A fresh namespace, database and worker id, with the worker's metrics on (counted, and served
    on a free port when scraped) or off (not counted at all)."""
    tag = uuid.uuid4().hex[:8]
    on = metrics == "on"
    return Settings(kafka_bootstrap=bootstrap, broker_flavour="tansu", clickhouse_url=clickhouse_url,
                    clickhouse_database=f"bench_{tag}", topic_namespace=f"bench-{tag}.",
                    worker_id=f"bench-worker-{tag}", worker_metrics=on,
                    worker_metrics_port=free_port() if on and scrape_every_s else 0)


def metrics_order(rounds: int) -> list[str]:
    """off, on, then on, off, ...: each setting runs first as often as second."""
    return [mode for r in range(rounds) for mode in (("off", "on") if r % 2 == 0 else ("on", "off"))]


def metrics_report(feed: Feed, runs: list[tuple[str, PipelineRun]], scrape_every_s: float) -> dict[str, Any]:
    """Pipeline throughput with and without the worker's metrics, best of each, and the ratio."""
    n = feed.trades

    def rate(run: PipelineRun) -> float:
        assert run.candles_done_s is not None
        return n / run.candles_done_s

    def steady(run: PipelineRun) -> float | None:
        """None when the first insert held every trade (a feed too small to have a steady part)."""
        assert run.trades_done_s is not None and run.first_rows_s is not None
        if run.first_rows >= n or run.trades_done_s <= run.first_rows_s:
            return None
        return (n - run.first_rows) / (run.trades_done_s - run.first_rows_s)

    def best_of(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return max(known) if known else None

    def ratio_of(on: float | None, off: float | None) -> float | None:
        return on / off if on is not None and off else None

    def shown(value: float | None) -> str:
        return f"{value:12,.0f}" if value is not None else f"{'-':>12}"

    by_mode = {mode: [r for m, r in runs if m == mode] for mode in ("on", "off")}
    best = {mode: max(rate(r) for r in found) for mode, found in by_mode.items()}
    best_steady = {mode: best_of([steady(r) for r in found]) for mode, found in by_mode.items()}
    print()
    scraped = f", scraped every {scrape_every_s:g} s" if scrape_every_s else ", not scraped"
    print(f"worker metrics, {n:,} trades a run, {len(runs)} runs in this order: {', '.join(m for m, _ in runs)}")
    for mode, run in runs:
        print(f"  metrics {mode:3}  spawn -> trades + candles {rate(run):12,.0f} trades/s   steady {shown(steady(run))}"
              f" trades/s" + (f"   {run.scrapes} scrapes" if mode == "on" and scrape_every_s else ""))
    ratio, ratio_steady = best["on"] / best["off"], ratio_of(best_steady["on"], best_steady["off"])
    steady_text = f"{ratio_steady:.3f} steady (cost {1 - ratio_steady:+.1%})" if ratio_steady else "no steady part"
    print(f"best with metrics (counted{scraped}) / best without: {ratio:.3f} end to end (cost {1 - ratio:+.1%}), "
          f"{steady_text}; target: a cost under 3 %")
    anchor = "same pipeline, ENTASIS_WORKER_METRICS=false"
    report_figure("pipeline", f"with worker metrics (counted{scraped}), spawn -> trades + candles stored",
                  best["on"], "trades/s", anchor=anchor, anchor_value=best["off"],
                  target="metrics cost < 3 % (ratio >= 0.97)")
    if best_steady["on"] is not None and best_steady["off"] is not None:
        report_figure("pipeline", f"with worker metrics (counted{scraped}), steady after the first insert",
                      best_steady["on"], "trades/s", anchor=anchor, anchor_value=best_steady["off"],
                      target="metrics cost < 3 % (ratio >= 0.97)")
    return {"order": [m for m, _ in runs], "trades_per_s": {m: [rate(r) for r in rs] for m, rs in by_mode.items()},
            "steady_trades_per_s": {m: [steady(r) for r in rs] for m, rs in by_mode.items()},
            "ratio_on_to_off": ratio, "ratio_steady_on_to_off": ratio_steady, "scrape_every_s": scrape_every_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trades", type=int, default=500_000, help="simulated trades (default 500000)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE,
                        help="simulated trades/s of event time per symbol; sets the batching "
                             "(default 20000: ~95 a message)")
    parser.add_argument("--raw-repeat", type=int, default=3, help="baseline runs; the best is reported")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the partitions, one consumer group (default 1)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the worker may take")
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, database)")
    parser.add_argument("--profile-worker", type=Path,
                        help="sample the worker with py-spy into this file (.svg, .json or collapsed text)")
    parser.add_argument("--metrics", choices=("on", "off", "both"), default="on",
                        help="the worker's metrics: on (counted, served, scraped), off (not counted), or both, "
                             "measured in one run with their ratio (default on)")
    parser.add_argument("--metrics-rounds", type=int, default=2,
                        help="--metrics both: rounds of one run each, in alternating order (default 2)")
    parser.add_argument("--scrape-every", type=float, default=1.0, metavar="SECONDS",
                        help="with metrics on: GET the worker's /metrics this often during a run (0: never, "
                             "and not served; default 1)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)

    feed = feed_messages(args.trades, args.rate)
    print(f"feed: {feed.trades:,} trades in {len(feed.messages):,} messages", file=sys.stderr)
    import_s = time_imports()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    modes = metrics_order(args.metrics_rounds) if args.metrics == "both" else [args.metrics]
    runs: list[tuple[str, PipelineRun]] = []
    try:
        with embedded(work) as (bootstrap, clickhouse_url, pids, children):
            raw = baseline(bootstrap, feed, args.raw_repeat)
            for i, mode in enumerate(modes):
                settings = metrics_settings(bootstrap, clickhouse_url, mode, args.scrape_every)
                profile = args.profile_worker.resolve() if args.profile_worker and i == len(modes) - 1 else None
                if len(modes) > 1:
                    print(f"  pipeline run {i + 1}/{len(modes)}: metrics {mode}", file=sys.stderr)
                runs.append((mode, run_pipeline(settings, feed, args.rate, work, pids, children, args.timeout,
                                                profile, scrape_every_s=args.scrape_every if mode == "on" else 0.0,
                                                n_workers=args.workers)))
        # the table and figures of one run as before: the last one with metrics as asked
        shown = next(run for mode, run in reversed(runs) if mode == ("on" if args.metrics == "both" else args.metrics))
        figures = report(feed, raw, shown, import_s)
        figures["worker_metrics"] = args.metrics
        if args.metrics == "both":
            figures["metrics"] = metrics_report(feed, runs, args.scrape_every)
    except KeyboardInterrupt:
        print(f"interrupted; logs in {work}", file=sys.stderr)
        return 130
    except Exception:
        print(f"failed; logs in {work}", file=sys.stderr)
        raise
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}", file=sys.stderr)
    line = orjson.dumps(figures)
    if args.json:
        Path(args.json).write_bytes(line + b"\n")
    print(line.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
