"""Portfolio snapshots against the running system (issue 18, finding 8): a worker process with a small
snapshot interval stores per-account snapshots in ClickHouse with the offsets the broker gave its
events; killed with SIGKILL and restarted, it decides the next order against the state it had; an
API bus started from the snapshots reads only the events after the marks and holds exactly what a bus
that replayed the whole topic holds (which is also the fold of every event: the oracle)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import uuid
from decimal import Decimal as D
from pathlib import Path

import pytest

from api.portfolio_repository import KafkaPortfolioBus, clickhouse_snapshots
from infra.config.settings import Settings, portfolio_admin_key, portfolio_signing_key
from infra.store.clickhouse import make_client
from schemas import topics
from schemas.portfolio import (
    OpenPosition,
    PortfolioEvent,
    PositionOpened,
    PositionRejected,
    PositionType,
    RejectCode,
    SetBalance,
    decode_event,
)
from streams.core.portfolio import Ledger
from streams.runtime.topic_reader import read_topic
from tests.integration.conftest import Infra, start_worker
from tests.integration.pipeline import prepare, rows, wait_for
from tests.unit.test_portfolio_snapshot import assert_same

pytestmark = pytest.mark.integration

EVERY = 3
ACCOUNTS = [f"snap-{i}" for i in range(6)]


def order(account: str, size: str, n: int) -> OpenPosition:
    ts = time.time_ns()
    return OpenPosition(account=account, command_id=uuid.uuid4().hex, symbol="BTC-USDT", type=PositionType.LONG,
                        size=D(size), leverage=D(1), price=D("100"), price_ts_ns=ts, request_hash=f"h{n}",
                        issued_ts_ns=ts)


async def submit_all(settings: Settings, commands: list[OpenPosition | SetBalance],
                     deadline_s: float = 120.0) -> list[PortfolioEvent]:
    """Each command through a bus of its own process (the API's signing, the operator's admin key),
    retried until a worker holds the partition and answers."""
    bus = KafkaPortfolioBus(settings.kafka_bootstrap, settings.topic_namespace,
                            signing_key=portfolio_signing_key(settings), admin_key=portfolio_admin_key(settings))
    await bus.start()
    answers = []
    try:
        for command in commands:
            until = time.monotonic() + deadline_s
            while True:
                try:
                    answers.append(await bus.submit(command, 5.0))
                    break
                except Exception:
                    assert time.monotonic() < until, "the portfolio worker never answered"
                    command = command.model_copy(update={"command_id": uuid.uuid4().hex})
    finally:
        await bus.close()
    return answers


async def read_model(settings: Settings, with_snapshots: bool) -> KafkaPortfolioBus:
    loader = clickhouse_snapshots(lambda: make_client(settings)) if with_snapshots else None
    # the agent's key: the read model folds only the events the agent signed with it
    bus = KafkaPortfolioBus(settings.kafka_bootstrap, settings.topic_namespace,
                            signing_key=portfolio_signing_key(settings), snapshots=loader)
    await bus.start()
    await bus.ledger()  # caught up
    return bus


def oracle(settings: Settings) -> tuple[Ledger, int]:
    values = asyncio.run(read_topic(settings.kafka_bootstrap, topics.PF_EVENTS.full_name(settings.topic_namespace)))
    ledger = Ledger()
    for raw in values:
        ledger.apply(decode_event(raw))
    return ledger, len(values)


def test_snapshots_against_the_running_system(infra: Infra, tmp_path: Path) -> None:
    settings = infra.settings(portfolio_snapshot_every=EVERY)
    prepare(settings)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        balances: list[OpenPosition | SetBalance] = [
            SetBalance(account=a, command_id=uuid.uuid4().hex, balance=D("1000"), issued_ts_ns=time.time_ns())
            for a in ACCOUNTS]
        asyncio.run(submit_all(settings, balances))
        # three orders of 300 per account: 900 of 1000 used
        orders: list[OpenPosition | SetBalance] = [order(a, "3", n) for n in range(3) for a in ACCOUNTS]
        assert all(isinstance(e, PositionOpened) for e in asyncio.run(submit_all(settings, orders)))

        marks = "SELECT count() FROM portfolio_snapshots FINAL WHERE account = '' AND topic = {t:String}"
        events_topic = topics.PF_EVENTS.full_name(settings.topic_namespace)
        wait_for(lambda: rows(settings, marks.replace("{t:String}", f"'{events_topic}'"))[0][0] > 0, 60,
                 "a snapshot round")
        stored = rows(settings, "SELECT partition, account, offset FROM portfolio_snapshots FINAL "
                                f"WHERE topic = '{events_topic}' AND account != ''")
        assert {account for _, account, _ in stored} <= set(ACCOUNTS) and stored

        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        worker = start_worker(settings, tmp_path / "worker2.log")
        # decided by the restarted worker against the restored state: 200 more do not fit in 100
        [rejected] = asyncio.run(submit_all(settings, [order(ACCOUNTS[0], "2", 9)]))
        assert isinstance(rejected, PositionRejected) and rejected.code is RejectCode.PORT_001
        assert rejected.details["free_balance"] == "100.00000000"
        [opened] = asyncio.run(submit_all(settings, [order(ACCOUNTS[1], "1", 10)]))
        assert isinstance(opened, PositionOpened)

        expected, total = oracle(settings)

        async def compare() -> None:
            snapped, full = await read_model(settings, True), await read_model(settings, False)
            try:
                assert_same(snapped._book.ledger, expected)
                assert_same(full._book.ledger, expected)
                assert full.replayed == total
                assert snapped.restored_accounts > 0 and snapped.replayed < total
            finally:
                await snapped.close()
                await full.close()

        asyncio.run(compare())
    finally:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=30)
