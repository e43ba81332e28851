"""The trade store's process (streams/sinks/trade_store.py), on a real database: it stores what
the in-process sink stores (the oracle: `trades.decode` message by message), raises what the
insert raises, survives a Ctrl-C meant for the worker, is replaced when it dies, and does not
outlive a worker that is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from infra.config.settings import Settings
from infra.store.clickhouse import client_for_url
from infra.store.migrate import apply_migrations
from schemas.codecs import trades
from schemas.codecs.envelope import WireError
from streams.sinks.trade_store import TradeStoreProcess
from tests.integration import chdb_fixture

chdb_server_module = chdb_fixture.chdb_server_module  # pytest finds fixtures by module attribute name

pytestmark = pytest.mark.integration

T0 = 1_723_161_600 * 10**9
DATABASE = "trade_store"


def message(rows: list[list[object]], symbol: str = "BTC-USDT") -> bytes:
    return orjson.dumps({"schema_version": "trade_batch.v1", "venue": "binance", "symbol": symbol, "trades": rows})


def row(i: int, price: str = "60000.5") -> list[object]:
    return [str(i), price, "0.125", "buy" if i % 2 else "sell", T0 + i * 1000, T0 + i * 1000 + 7]


@pytest.fixture(scope="module")
def settings(chdb_server_module: str) -> Settings:
    client_for_url(chdb_server_module).command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    apply_migrations(client_for_url(chdb_server_module, database=DATABASE))
    return Settings(clickhouse_url=chdb_server_module, clickhouse_database=DATABASE)  # type: ignore[call-arg]


@pytest.fixture
def store(settings: Settings) -> Iterator[TradeStoreProcess]:
    client_for_url(settings.clickhouse.url, database=DATABASE).command("TRUNCATE TABLE trades")
    process = TradeStoreProcess(settings)
    try:
        yield process
    finally:
        process.close()


def stored(settings: Settings) -> set[tuple[object, ...]]:
    rows = client_for_url(settings.clickhouse.url, database=DATABASE).query(
        "SELECT venue, symbol, trade_id, price, size, toString(side), toUnixTimestamp64Nano(event_ts), "
        "toUnixTimestamp64Nano(recv_ts) FROM trades FINAL").result_rows
    return {tuple(r) for r in rows}


def decoded(batch: list[bytes]) -> set[tuple[object, ...]]:
    out: set[tuple[object, ...]] = set()
    for raw in batch:
        try:
            venue, symbol, rows = trades.decode(raw)
        except WireError:
            continue
        out.update((venue, symbol, r.trade_id, r.price, r.size, r.side, r.event_ts_ns, r.recv_ts_ns) for r in rows)
    return out


def test_stores_what_decode_accepts_and_counts_it(store: TradeStoreProcess, settings: Settings) -> None:
    batch = [message([row(1), row(2, "60001.25")]), message([row(3, "-1")]),  # the second: a negative price
             b"not json", message([row(4, "0.00000001")], symbol="ETH-USDT")]
    assert asyncio.run(store.store(batch)) == 3
    assert stored(settings) == decoded(batch)
    assert ("binance", "ETH-USDT", "4", Decimal("0.00000001"), Decimal("0.125"), "sell", T0 + 4000,
            T0 + 4007) in stored(settings)


def test_a_refused_insert_raises_in_the_worker(settings: Settings) -> None:
    from infra.dev.processes import free_port

    nowhere = TradeStoreProcess(settings.model_copy(
        update={"clickhouse": settings.clickhouse.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})}))
    try:
        with pytest.raises(RuntimeError, match="trade insert failed"):
            asyncio.run(nowhere.store([message([row(1)])]))
        assert nowhere.restarts == 0  # an error, not a dead process
    finally:
        nowhere.close()


def test_ignores_ctrl_c_and_is_replaced_when_it_dies(store: TradeStoreProcess, settings: Settings) -> None:
    async def scenario() -> tuple[int, int]:
        first = await store.pid()
        os.kill(first, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
        await asyncio.sleep(0.2)
        assert await store.store([message([row(1)])]) == 1
        assert await store.pid() == first and store.restarts == 0
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.2)
        assert await store.store([message([row(2)])]) == 1  # stored by its replacement
        return first, await store.pid()

    first, second = asyncio.run(scenario())
    assert second != first and store.restarts == 1
    assert {r[2] for r in stored(settings)} == {"1", "2"}


CHILD = """
import asyncio, sys, time
from infra.config.settings import Settings
from streams.sinks.trade_store import TradeStoreProcess

if __name__ == "__main__":
    store = TradeStoreProcess(Settings())
    print(asyncio.run(store.pid()), flush=True)
    time.sleep(60)
"""


def test_does_not_outlive_a_killed_worker(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(CHILD)
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        os.kill(pid, 0)  # running
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            assert time.monotonic() < deadline, "the trade store's process outlived its worker"
            time.sleep(0.05)
    finally:
        parent.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
