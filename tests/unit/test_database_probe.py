"""The worker's `/readyz` database check (streams/runtime/metrics.py `DatabaseProbe`): a `SELECT 1`
on a client of its own, at most `timeout_s` waited for, the answer kept for `cache_s`; a hung
query is not asked again while it hangs; a failed client is replaced. Over a real aiohttp server
on loopback for the endpoint itself."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from streams.runtime.metrics import DatabaseProbe, WorkerMetrics, web_app


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Database:
    """What the probe's clients reach: up, failing, or hanging until released."""

    def __init__(self) -> None:
        self.mode = "up"
        self.queries = 0
        self.clients = 0
        self.closed = 0
        self.release = threading.Event()

    def client(self) -> Any:
        self.clients += 1
        database = self

        class Client:
            def query(self, sql: str) -> None:
                assert sql == "SELECT 1"
                database.queries += 1
                if database.mode == "down":
                    raise ConnectionRefusedError("refused")
                if database.mode == "hang":
                    database.release.wait(10)

            def close(self) -> None:
                database.closed += 1

        return Client()


async def test_answers_are_kept_for_cache_s_and_a_failed_client_is_replaced() -> None:
    db, clock = Database(), Clock()
    probe = DatabaseProbe(db.client, timeout_s=1.0, cache_s=1.5, clock=clock)
    first = await probe.check()
    assert (first.ok, first.state) == (True, "reachable")
    assert (await probe.check()) == first and db.queries == 1  # within cache_s: not asked again

    db.mode = "down"
    clock.now += 1.6
    down = await probe.check()
    assert (down.ok, down.state) == (False, "unreachable")
    assert db.closed == 1  # the client that failed is closed and forgotten

    db.mode = "up"
    clock.now += 1.6
    assert (await probe.check()).state == "reachable"
    assert db.clients == 2  # a fresh client after the failure


async def test_a_hung_query_times_out_and_is_not_asked_again_while_it_hangs() -> None:
    db, clock = Database(), Clock()
    db.mode = "hang"
    probe = DatabaseProbe(db.client, timeout_s=0.1, cache_s=0.0, clock=clock)
    try:
        first = await probe.check()
        assert (first.ok, first.state) == (False, "timeout")
        clock.now += 1
        assert (await probe.check()).state == "timeout"
        assert db.queries == 1  # the second check waited on the same query
    finally:
        db.release.set()
    await asyncio.sleep(0.05)  # the hung query returns
    clock.now += 1
    db.mode = "up"
    assert (await probe.check()).state == "reachable"


async def test_the_worker_is_ready_only_while_assigned_and_its_database_answers() -> None:
    db, clock = Database(), Clock()
    metrics = WorkerMetrics()
    metrics.database = DatabaseProbe(db.client, timeout_s=1.0, cache_s=0.0, clock=clock)
    metrics.ready = True
    async with TestClient(TestServer(web_app(metrics), host="127.0.0.1")) as client:
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["checks"] == {
            "consumer": {"ok": True, "state": "assigned"},
            "database": {"ok": True, "state": "reachable"},
        }
        db.mode = "down"
        red = await client.get("/readyz")
        assert red.status == 503
        body = await red.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == {"ok": False, "state": "unreachable"}
        assert (await client.get("/healthz")).status == 200  # alive all the same
        db.mode = "up"
        assert (await client.get("/readyz")).status == 200
