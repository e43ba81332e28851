"""`entasis up` drains on Ctrl-C and loses nothing the broker acknowledged (README: "Ctrl-C stops
everything in order and loses nothing the broker acknowledged").

`up` runs as a user runs it: its own data directory and free ports, the simulated feed with no
seeded history (`--history-days 0`) at 400 trades a second per symbol, so that a good share of
what the broker holds at the signal is still on its way to the database. Once trades are
stored, the test sends SIGINT to `up` alone (its children run in their own sessions, as a
terminal's Ctrl-C reaches only `up`) and waits for it to exit by itself.

The oracle is the raw trades topic itself, read by a consumer of the test's own (every
partition assigned by hand, from offset 0, the rows decoded with plain `orjson`): a message a
consumer can fetch is one the broker acknowledged to the feed's producer (`acks=all`). The
embedded broker keeps topics in memory only, so the topic cannot be read back after `up` has
stopped it; instead the consumer follows it live and, once `up` has said that the feed stopped
and everything is stored, reads each partition to its end offset while the broker is still up
(`up` stops the API, the worker and the database before the broker), then empties its client's
queue (the embedded broker under-reports ends by the rest of the last record batch, which a
fetch brings whole: tests/integration/topic_read.py). Reaching those end offsets
after the feed stopped is what makes the consumer's set the whole of what was acknowledged; the
test fails, saying so, if the broker was gone first. Then the `trades` table, opened afresh
from the data directory `up` left behind, must hold exactly that set: every acknowledged trade,
each (venue, symbol, trade id) once, with its price, size, side and event time, and nothing
else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from infra.config.api import ApiSettings
from infra.config.settings import ClickHouseSettings, Settings, WorkerSettings
from infra.dev.processes import free_port
from infra.store.clickhouse import client_for_url, make_client
from schemas import topics
from tests.integration.chdb_fixture import start_chdb_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UP_LINE = "Entasis is up"
DRAINED_LINE = "everything acknowledged is stored"
RATE = 400  # trades a second per symbol (two symbols)

Row = tuple[str, str, str, Decimal, Decimal, str, int]  # venue, symbol, trade id, price, size, side, event ns


@dataclass
class TopicFollower:
    """Reads every partition of the raw trades topic from the start, until told the topic is final;
    then reads each partition up to its end offset and sets `complete`."""

    bootstrap: str
    topic: str
    rows: list[Row] = field(default_factory=list)
    final: threading.Event = field(default_factory=threading.Event)
    complete: threading.Event = field(default_factory=threading.Event)
    error: str = ""

    def run(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "up-drain-oracle",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        try:
            partitions = consumer.list_topics(self.topic, timeout=30).topics[self.topic].partitions
            tps = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(partitions)]
            consumer.assign(tps)
            position = {tp.partition: 0 for tp in tps}
            end: dict[int, int] | None = None
            reached = False
            while True:
                if end is None and self.final.is_set():
                    end = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
                # The embedded broker reports a partition's end as its last batch's first offset + 1
                # (tests/integration/topic_read.py), and a fetch brings whole batches: once every
                # position has reached the reported end, the rest of each last batch is already
                # here, in the client's queue, which the next empty poll shows drained.
                reached = reached or (end is not None and all(position[p] >= end[p] for p in end))
                message = consumer.poll(0.5)
                if message is None:
                    if reached:
                        self.complete.set()
                        return
                    continue
                if message.error():
                    raise KafkaException(message.error())
                partition, offset, value = message.partition(), message.offset(), message.value()
                assert partition is not None and offset is not None and value is not None
                position[partition] = offset + 1
                batch = orjson.loads(value)
                for trade_id, price, size, side, event_ns, _recv_ns in batch["trades"]:
                    self.rows.append((batch["venue"], batch["symbol"], str(trade_id), Decimal(price), Decimal(size),
                                      side, int(event_ns)))
        except Exception as exc:  # reported by the test
            self.error = repr(exc)
        finally:
            consumer.close()


def isolated_settings(work: Path) -> Settings:
    return Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", data_dir=work,
                    clickhouse=ClickHouseSettings(url=f"http://127.0.0.1:{free_port()}"),
                    api=ApiSettings(port=free_port()),
                    worker=WorkerSettings(web_port=free_port(), metrics_port=free_port()))


def wait_for_line(log: Path, line: str, up: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in log.read_text(errors="replace"):
        if up.poll() is not None:
            raise AssertionError(f"entasis up exited with {up.returncode} before {line!r}:\n"
                                 f"{log.read_text(errors='replace')[-4000:]}")
        assert time.monotonic() < deadline, f"no {line!r} after {timeout_s:.0f}s:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)


def stored_count(settings: Settings) -> int:
    try:
        client = make_client(settings)
    except Exception:
        return 0
    try:
        return int(client.query("SELECT count() FROM trades").result_rows[0][0])
    except Exception:
        return 0
    finally:
        client.close()


@pytest.mark.timeout(900)
def start_up(work: Path) -> tuple[Settings, Path, subprocess.Popen[bytes]]:
    """`entasis up` on the simulated feed at RATE, no history, in `work`: (settings, log, process)."""
    work.mkdir()
    settings = isolated_settings(work)
    env = {**os.environ, **settings.to_env(), "ENTASIS_LOGLEVEL": "WARNING"}
    log = work / "up.log"
    up = subprocess.Popen([sys.executable, "-m", "infra.cli", "up", "--data-dir", str(work), "--history-days", "0",
                           "--rate", str(RATE), "--ready-timeout", "400"],
                          cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return settings, log, up


def test_ctrl_c_drains_every_acknowledged_trade_into_the_table_once(tmp_path: Path) -> None:
    work = tmp_path / "up"
    settings, log, up = start_up(work)
    follower = TopicFollower(settings.kafka_bootstrap, topics.TRADES.full_name(settings.topic_namespace))
    reader = threading.Thread(target=follower.run, name="topic-follower", daemon=True)
    try:
        wait_for_line(log, UP_LINE, up, timeout_s=480)
        reader.start()
        # trades in the table, and the feed still running: the signal lands mid-stream
        deadline = time.monotonic() + 120
        while stored_count(settings) < 2 * RATE:
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        stored_at_signal = stored_count(settings)
        up.send_signal(signal.SIGINT)
        wait_for_line(log, DRAINED_LINE, up, timeout_s=180)
        follower.final.set()  # the feed has stopped: nothing more will be acknowledged
        assert up.wait(timeout=180) == 0, log.read_text()[-4000:]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    reader.join(timeout=60)
    assert follower.complete.is_set(), (
        f"the topic could not be read to its end before the broker stopped ({follower.error or 'still reading'}): "
        "the oracle is incomplete, not the product wrong")
    acknowledged = follower.rows
    print(f"acknowledged {len(acknowledged)} trades; {stored_at_signal} were stored when SIGINT was sent")
    assert len(acknowledged) > 2 * RATE
    keys = [(v, s, t) for v, s, t, *_ in acknowledged]
    assert len(set(keys)) == len(keys)  # the feed publishes each trade once
    assert {v for v, *_ in acknowledged} == {"sim"} and {s for _, s, *_ in acknowledged} == {"BTC-USDT", "ETH-USDT"}

    # the database as `up` left it, opened afresh
    db = start_chdb_server(work / "chdb", work / "chdb-after.log")
    try:
        client = client_for_url(db.url, database=settings.clickhouse.database)
        stored = [(v, s, t, p, q, side, int(ts)) for v, s, t, p, q, side, ts in client.query(
            "SELECT venue, symbol, trade_id, price, size, toString(side), toUnixTimestamp64Nano(event_ts) "
            "FROM trades FINAL").result_rows]
        assert sorted(stored) == sorted(acknowledged)  # every acknowledged trade, each once, nothing else
        client.command("OPTIMIZE TABLE trades FINAL")
        assert client.query("SELECT count() FROM trades").result_rows[0][0] == len(acknowledged)
        client.close()
    finally:
        db.stop()
    output = log.read_text()
    assert "stopping: feed, then draining" in output and "drain timed out" not in output


def processes_of(work: Path) -> list[str]:
    """Command lines of the processes still running with `work` (the run's data directory) in them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(work) in cmdline:
            found.append(cmdline)
    return found


def test_a_second_ctrl_c_stops_at_once_without_a_traceback_and_leaves_no_process(tmp_path: Path) -> None:
    # Before: the second interrupt raised out of the drain, and `up` ended with a traceback.
    work = tmp_path / "up"
    _, log, up = start_up(work)
    try:
        wait_for_line(log, UP_LINE, up, timeout_s=480)
        assert processes_of(work), "the children name the data directory: the check below would prove nothing"
        up.send_signal(signal.SIGINT)
        wait_for_line(log, "stopping: feed, then draining", up, timeout_s=60)
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=120) == 0, log.read_text()[-4000:]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    output = log.read_text(errors="replace")
    assert "Traceback" not in output, output[-4000:]
    assert "stopping without the drain" in output or "killing what is still running" in output, output[-4000:]
    deadline = time.monotonic() + 10  # a killed child is reaped by `up`; its /proc entry goes with it
    while processes_of(work) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(work) == []
