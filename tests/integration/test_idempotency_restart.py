"""An `Idempotency-Key` holds across a restart of the worker process, not only of the API: the
portfolio agent that answers a retried POST after a SIGKILL is a new process, which knows the
key only from what it rebuilt out of `pf.events.v1`. (The API tier's restart test reuses one
in-memory bus; here the broker, the worker and the API's Kafka bus are the real ones, as in
test_portfolio_pipeline.py, whose helpers this uses.)

Oracle: the first answer (201 and its body), the positions the API serves, and the events
topic itself read back with a plain consumer: one `position_opened` for the key, and each retry
answered by a `request_replayed` carrying that same position, written by the restarted worker."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from infra.store.clickhouse import make_client
from schemas import topics
from tests.api.conftest import TRADE_COLUMNS, bearer, token_for
from tests.integration.conftest import Infra, start_worker
from tests.integration.pipeline import prepare
from tests.integration.test_portfolio_pipeline import P, api, post, set_balance
from tests.integration.topic_read import read_all

pytestmark = pytest.mark.integration


def events_of(bootstrap: str, topic: str, account: str) -> list[dict]:  # type: ignore[type-arg]
    """The account's events, every record read (tests/integration/topic_read.py says why not read_topic)."""
    return [e for _, _, v in read_all(bootstrap, topic) for e in [orjson.loads(v)] if e["account"] == account]


def test_an_idempotency_key_repeated_after_a_worker_restart_gets_the_first_answer(infra: Infra,
                                                                                  tmp_path: Path) -> None:
    settings = infra.settings()
    prepare(settings)
    db = make_client(settings)
    now = time.time_ns()
    db.insert("trades", [["binance", "BTC-USDT", "t1", Decimal("60000"), Decimal("1"), "buy", now, now]],
              column_names=TRADE_COLUMNS)
    db.close()
    order = {"symbol": "BTC-USDT", "size": "1", "type": "long"}
    events_topic = topics.PF_EVENTS.full_name(settings.topic_namespace)

    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        set_balance(settings, "dora", "100000")
        with api(settings) as client:  # one API process that stays up while the worker restarts
            first = post(client, "dora", order, key="dora-1")
            assert first[0] == 201, first
            assert post(client, "dora", order, key="dora-1") == first  # a retry, same worker

            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            worker = start_worker(settings, tmp_path / "worker2.log")
            set_balance(settings, "erin", "5")  # returns once the new worker holds the partitions

            assert post(client, "dora", order, key="dora-1") == first
            code, body = post(client, "dora", {**order, "size": "0.5"}, key="dora-1")
            assert (code, body["code"]) == (409, "IDEMPOTENCY_CONFLICT")
            positions = client.get(f"{P}/positions", headers=bearer(token_for("dora"))).json()["positions"]
            assert [p["position_id"] for p in positions] == [first[1]["position_id"]]

        with api(settings) as client:  # and a fresh API process, against the restarted worker
            assert post(client, "dora", order, key="dora-1") == first

        events = events_of(settings.kafka_bootstrap, events_topic, "dora")
        opened = [e for e in events if e["kind"] == "position_opened"]
        assert [(e["position_id"], e["idempotency_key"]) for e in opened] == [(first[1]["position_id"], "dora-1")]
        replayed = [e for e in events if e["kind"] == "request_replayed"]
        assert len(replayed) == 3  # the retry before the kill, after it, and through the fresh API
        assert all(e["original"] == opened[0] for e in replayed)
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1))  # the restarted worker continued the account's numbering
    finally:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=30)
