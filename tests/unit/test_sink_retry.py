"""A sink whose insert fails (the database down, restarting, refusing) tries the same rows again
until the database takes them (`streams.runtime.retrying.until_done`), and does what the batch
does besides (dead letters, forged-event counts) once. Faust alone would restart the agent on the
values after the failed batch, which the process then never stores (tests/agents/test_batch_take.py
runs a failing database under a real Faust stream)."""

from __future__ import annotations

import asyncio
import logging
import random
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from schemas.codecs import candles as candle_codec
from schemas.events import Candle, DeadLetter, Interval
from streams.agents.sinks import CandleSink, PortfolioEventSink, ProcessTradeSink
from streams.core.backoff import Backoff
from streams.runtime import retrying
from streams.runtime.retrying import until_done
from streams.sinks.clickhouse import ClickHouseSink
from tests.unit.test_portfolio_event_signing import SIGNING_KEY, _Event, forged_balance, forgeries, signed_record


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrying, "RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(retrying, "RETRY_MAX_S", 0.004)


class FlakyDatabase:
    """A sink's database: the first `failures` inserts fail, then every insert is taken."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.failed: list[str] = []

    async def insert(self, table: str, data: pa.Table) -> int:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            self.note_failure(table)  # as ClickHouseSink.insert counts it
            raise ConnectionError("database down")
        self.rows.setdefault(table, []).extend(data.to_pylist())
        return data.num_rows

    def note_failure(self, table: str) -> None:
        self.failed.append(table)


async def test_until_stored_tries_again_with_growing_delays_and_returns_the_result(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    async def store() -> int:
        calls.append(len(calls))
        if len(calls) <= 3:
            raise ConnectionError(f"down {len(calls)}")
        return 42

    failures: list[int] = []
    backoff = Backoff(0.001, 0.004, random.Random(7))
    ceilings = []
    real_next = backoff.next

    def next_delay() -> float:
        ceilings.append(backoff.ceiling())
        return real_next()

    backoff.next = next_delay  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="streams.runtime.retrying"):
        assert await until_done(store, "inserting 9 rows into t", lambda: failures.append(1), backoff) == 42
    assert calls == [0, 1, 2, 3] and len(failures) == 3
    assert ceilings == [0.001, 0.002, 0.004]  # doubling, capped at the maximum
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all("inserting 9 rows into t failed" in m for m in messages)
    assert "attempt 3: ConnectionError: down 3" in messages[2]


async def test_a_stop_during_the_retries_ends_them_and_stores_nothing() -> None:
    attempts = 0

    async def store() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("down")

    task = asyncio.create_task(until_done(store, "x", backoff=Backoff(0.02, 0.02)))
    while attempts == 0:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = attempts  # one, or more if a delay drawn near 0 came first
    await asyncio.sleep(0.2)  # ten times the longest delay
    assert attempts == seen >= 1


def candle(minute: int) -> bytes:
    open_ns = 1_723_161_240_000_000_000 + minute * 60 * 10**9
    return candle_codec.encode(Candle(
        venue="binance", symbol="BTC-USDT", interval=Interval.M1, open_ts_ns=open_ns, open=Decimal("1"),
        high=Decimal("2"), low=Decimal("0.5"), close=Decimal("1.5"), volume=Decimal("3"), trades=2,
        first_trade_id="a", last_trade_id="b", revision=0, is_final=True, event_ts_ns=open_ns + 1,
        recv_ts_ns=open_ns + 2))


async def test_the_candle_sink_stores_the_batch_once_the_database_is_back_and_dead_letters_once() -> None:
    database, dead = FlakyDatabase(failures=3), []

    async def dead_letter(letter: DeadLetter) -> None:
        dead.append(letter)

    sink = CandleSink(database, dead_letter, "t.candles")  # type: ignore[arg-type]
    await sink.write([candle(0), b"{not a candle", candle(1)])
    assert database.attempts == 4 and database.failed == ["candles"] * 3
    assert [(row["open_ts"].minute, row["close"]) for row in database.rows["candles"]] == [
        (54, Decimal("1.5")), (55, Decimal("1.5"))]
    assert [bytes.fromhex(letter.raw_hex) for letter in dead] == [b"{not a candle"]  # once, not per attempt


async def test_the_portfolio_event_sink_counts_and_dead_letters_a_forgery_once_across_retries() -> None:
    genuine = forged_balance("alice", 1)
    signed = signed_record(SIGNING_KEY, 0, 0, genuine)
    forged = forged_balance("victim", 2)
    key, headers = forgeries(forged)[0]
    database, dead = FlakyDatabase(failures=2), []

    async def dead_letter(letter: DeadLetter) -> None:
        dead.append(letter)

    writer = PortfolioEventSink(database, SIGNING_KEY, dead_letter, "t.pf.events")  # type: ignore[arg-type]
    await writer.write([_Event(signed.key, signed.value, list(signed.headers)),  # type: ignore[list-item]
                        _Event(key, forged, dict(headers))])
    assert [(row["account"], row["seq"]) for row in database.rows["portfolio_events"]] == [("alice", 1)]
    assert database.failed == ["portfolio_events"] * 2
    assert writer.forged == 1 and len(dead) == 1


class FlakyTradeStore:
    """The trade store's process as the sink sees it: `store(messages)` -> rows stored."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.stored: list[list[bytes]] = []

    async def store(self, messages: list[bytes]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("trade insert failed: OperationalError: connection refused")
        self.stored.append(list(messages))
        return 3 * len(messages)


async def test_the_trade_sink_sends_the_same_messages_to_its_process_until_they_are_stored() -> None:
    store, counting = FlakyTradeStore(failures=2), ClickHouseSink(lambda: None)  # type: ignore[arg-type,return-value]
    try:
        await ProcessTradeSink(store, counting).write([b"m1", b"m2"])  # type: ignore[arg-type]
        assert store.stored == [[b"m1", b"m2"]]
        assert counting.failed_inserts == {"trades": 2} and counting.rows_written == {"trades": 6}
    finally:
        counting.close()
