"""examples/replay_consumer.py against a real replay run: `entasis worker --run-id` and `entasis
replay --run-id --digest` over two minutes of the recorded Binance capture, then the example, run
as a user runs it (its own process, importing nothing of the engine), reads every derived topic
of the run from the beginning and checks each value against the published schemas.

Oracles: the broker's offsets (how many messages each topic holds), the run's database (the
final 1m candles stored, queried here) and the capture itself (its first trade's price, read as
plain text); a value written off its schema into one of the run's topics by this test must be
counted as invalid."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from infra.cli import status
from infra.config.run import for_run
from infra.config.settings import Settings
from schemas import topics
from streams.ingest.publisher import KafkaPublisher
from tests.integration.conftest import Infra
from tests.integration.pipeline import rows, wait_for
from tests.integration.test_replay_digest import finish, replay, slice_of_capture, start_worker, stop

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def example(infra: Infra, run_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "examples/replay_consumer.py", "--run-id", run_id, "--bootstrap", infra.bootstrap, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def worker_done(infra: Infra, run: Settings) -> bool:
    view = status.broker_view(infra.bootstrap, run.topic_namespace)
    mine = [row for row in view.lag if row.group == run.worker.id]
    return bool(mine) and all(row.lag == 0 for row in mine)


def test_the_replay_consumer_reads_every_derived_topic_of_a_run_and_checks_each_value(
    infra: Infra, tmp_path: Path
) -> None:
    capture, trades = slice_of_capture(tmp_path / "capture")
    run_id = f"it-{uuid.uuid4().hex[:8]}-example"
    log = tmp_path / "worker.log"
    run = for_run(infra.settings(), run_id)
    worker = start_worker(infra, run_id, log)
    try:
        finish(replay(infra, run_id, capture), [log])  # returns once the stored rows stopped changing
        # and the worker has acknowledged every message of the run's topics (on a busy machine the
        # rows can pause while it still works through the books): nothing more will be derived
        wait_for(lambda: worker_done(infra, run), 180, "the run's worker at the end of every topic", interval_s=1.0)
    finally:
        stop(worker)

    done = example(infra, run_id, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["run_id"] == run_id
    summary = result["topics"]
    # every message each topic holds (its size by the broker's own offsets, the worker stopped), all valid
    sizes: dict[str, int] = {}
    for (topic, _), (low, end) in status.broker_view(infra.bootstrap, run.topic_namespace).ends.items():
        name = topic.removeprefix(run.topic_namespace)
        sizes[name] = sizes.get(name, 0) + end - low
    for topic, read in summary.items():
        assert read["messages"] == sizes[topic], topic
        assert read["valid"] == read["messages"] and read["invalid"] == 0, topic
        assert read["streams"] == (["binance:ETH-USDT"] if read["messages"] else []), topic
    # the candles the run stored came through these topics (the sink reads them), so they are not empty
    assert summary["md.candles.1m.v1"]["messages"] > 0 and summary["md.candles.5m.v1"]["messages"] > 0

    # the final 1m candles it read are the ones the run stored, first open and last close included
    stored = rows(
        run,
        "SELECT count(), argMin(open, open_ts), argMax(close, open_ts) FROM candles FINAL "
        "WHERE venue = 'binance' AND symbol = 'ETH-USDT' AND interval = '1m' AND is_final = 1",
    )
    ((count, first_open, last_close),) = stored
    candles = result["final_1m_candles"]["binance:ETH-USDT"]
    assert candles["candles"] == count >= 2
    assert Decimal(candles["first_open"]) == first_open and Decimal(candles["last_close"]) == last_close
    # and the first open is the capture's first trade price (as plain text, no engine code)
    with gzip.open(capture, "rt") as lines:
        # each line: the receive time in ns, a space, the frame as the venue sent it
        first_trade = next(json.loads(line.split(" ", 1)[1]) for line in lines if '"stream":"ethusdt@trade"' in line)
    assert Decimal(candles["first_open"]) == Decimal(first_trade["data"]["p"])
    assert trades == 2225

    # a value that breaks its schema is counted, reported and makes the exit status 1
    with KafkaPublisher(infra.bootstrap) as out:
        out.publish(
            topics.VWAP.full_name(run.topic_namespace),
            b"binance:ETH-USDT",
            b'{"schema_version": "vwap.v1", "venue": "binance"}',
        )
    broken = example(infra, run_id)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "invalid an.vwap.v1 binance:ETH-USDT" in broken.stderr
    vwap_line = next(line for line in broken.stdout.splitlines() if line.startswith("an.vwap.v1"))
    assert vwap_line.split()[3] == "1"  # messages, valid, invalid: one invalid
    assert "final 1m candles" in broken.stdout

    missing = example(infra, f"it-{uuid.uuid4().hex[:8]}-none")
    assert missing.returncode == 2
