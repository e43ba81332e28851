"""Issue 18, finding 13 (the smaller ones): a book's levels bounded between snapshots, the
ClickHouse password a SecretStr, the data directories private (0700), and client-facing
reasons without exception class or topic names."""

from __future__ import annotations

import os
import stat
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from api.portfolio_repository import KafkaPortfolioBus
from api.portfolio_service import BusUnavailable
from infra.config.settings import ClickHouseSettings, Settings
from infra.dev.chdb_server import private_dirs
from schemas.portfolio import OpenPosition, PositionRejected, PositionType, RejectCode
from streams.core.orderbook import L2Book
from streams.core.portfolio import AccountDefaults, Ledger, decide


def test_book_levels_are_bounded_between_snapshots_and_the_top_stays_exact() -> None:
    book = L2Book(max_levels=4096)
    book.load([(D("100"), D("1"))], [(D("101"), D("1"))])
    held: dict[D, D] = {D("100"): D("1")}  # the oracle: every bid ever applied, in a plain dict
    price = D("100")
    for _ in range(100):  # a producer that only ever adds deeper bids, never deletes one
        diff = []
        for _ in range(100):
            price -= D("0.01")
            diff.append((price, D("2")))
            held[price] = D("2")
        book.apply(diff, [])
    assert len(held) == 10_001
    assert len(book.bids) <= 4096
    want = sorted(held.items(), reverse=True)[:100]
    assert book.top(100)[0] == want
    # a trimmed level that changes again comes back, exact (sizes are absolute)
    deepest = min(held)
    book.apply([(deepest, D("5"))], [])
    assert (deepest, D("5")) in book.bids.items()


def test_a_snapshot_over_the_cap_is_trimmed_to_its_best_levels() -> None:
    book = L2Book(max_levels=4096)
    bids = [(D(10_000 - i), D("1")) for i in range(6000)]
    book.load(bids, [(D("20000"), D("1"))])
    assert len(book.bids) <= 4096
    assert book.top(5)[0] == bids[:5]
    with pytest.raises(ValueError):
        L2Book(max_levels=10)


def test_the_clickhouse_password_is_a_secret_everywhere_but_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    import infra.store.clickhouse as clickhouse

    settings = Settings(
        clickhouse=ClickHouseSettings(url="http://db.example:8123", password=SecretStr("hunter2-do-not-print"))
    )
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.clickhouse)
    assert "hunter2" not in settings.model_dump_json()
    seen: dict[str, Any] = {}
    monkeypatch.setattr(clickhouse, "client_for_url", lambda url, **kwargs: seen.update(kwargs))
    clickhouse.make_client(settings)
    assert seen["password"] == "hunter2-do-not-print"
    # a child process still gets it (it must connect too)
    assert settings.to_env()["ENTASIS_CLICKHOUSE_PASSWORD"] == "hunter2-do-not-print"


def test_data_directories_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        target = tmp_path / "home" / ".entasis" / "chdb"
        private_dirs(str(target))
        for directory in (tmp_path / "home", tmp_path / "home" / ".entasis", target):
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        loose = tmp_path / "loose"
        loose.mkdir(mode=0o755)
        private_dirs(str(loose))
        assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700
    finally:
        os.umask(previous)


def test_an_arithmetic_rejection_names_no_exception_class() -> None:
    command = OpenPosition.model_construct(
        account="a",
        command_id="c1",
        symbol="BTC-USDT",
        type=PositionType.LONG,
        size=D("1"),
        leverage=D("0"),
        price=D("1"),
        price_ts_ns=1,
        idempotency_key=None,
        request_hash="h",
        issued_ts_ns=1,
    )
    answer = decide(Ledger(), command, AccountDefaults())[-1]
    assert isinstance(answer, PositionRejected) and answer.code is RejectCode.BAD_REQUEST
    reason = answer.details["reason"]
    assert "Error" not in reason and "DivisionByZero" not in reason and "InvalidOperation" not in reason


class _FailingProducer:
    async def send_and_wait(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("it-secret.pf.commands.v1 unreachable")


async def test_a_bus_failure_reason_names_neither_the_exception_nor_the_topic() -> None:
    bus = KafkaPortfolioBus("127.0.0.1:1", namespace="it-secret.", signing_key=b"k" * 32)
    bus._producer = _FailingProducer()  # type: ignore[assignment]
    bus._ready.set()
    command = OpenPosition(
        account="a",
        command_id="c2",
        symbol="BTC-USDT",
        type=PositionType.LONG,
        size=D("1"),
        leverage=D("1"),
        price=D("1"),
        price_ts_ns=1,
        idempotency_key=None,
        request_hash="h",
        issued_ts_ns=1,
    )
    with pytest.raises(BusUnavailable) as caught:
        await bus.submit(command, timeout_s=1.0)
    reason = str(caught.value)
    assert "ConnectionRefusedError" not in reason and "it-secret" not in reason and "pf." not in reason
