"""Issue 18, finding 6: the limits of `/ws/market`, each played as the attack first. A real uvicorn
on loopback and real `websockets` clients; time is a fake the test advances (`FakeTime`), so no
assertion depends on how fast this machine is."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, generate_key
from api.main import uvicorn_config
from api.principal import KNOWN_SCOPES
from api.ws import WS_PATH, MarketHub
from api.ws.endpoint import CLOSE_IDLE, CLOSE_POLICY, SocketCounts, SocketPolicy
from api.ws.protocol import PING, Command, ProtocolError, parse_command, parse_message
from infra.config.api import ApiSettings
from infra.dev.processes import free_port
from infra.store.repository import MarketRepository
from tests.api.conftest import new_account, test_api_settings, token_for
from tests.api.test_ws_support import Served, close_code, recv_json, send_json, serve


class FakeTime:
    """The socket policy's clocks and sleep: nothing moves until `advance`."""

    def __init__(self) -> None:
        self.mono = 1_000.0
        self.wall_offset = time.time() - self.mono  # token `exp`s are real epoch seconds
        self._advanced = asyncio.Event()

    def clock(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.mono + self.wall_offset

    async def sleep(self, seconds: float) -> None:
        target = self.mono + seconds
        while self.mono < target:
            await self._advanced.wait()

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        event, self._advanced = self._advanced, asyncio.Event()
        event.set()

    def policy(self, **limits: Any) -> SocketPolicy:
        return SocketPolicy(clock=self.clock, wall_clock=self.wall, sleep=self.sleep, **limits)


@contextlib.asynccontextmanager
async def served_with(
    repository: MarketRepository, key_repository: ApiKeyRepository, policy: SocketPolicy, **settings: Any
) -> AsyncIterator[Served]:
    app = create_app(repository=repository, api_settings=test_api_settings(**settings), key_repository=key_repository)
    app.state.ws_policy = policy
    async with serve(app, MarketHub(max_subscriptions=5)) as s:
        yield s


async def pong(ws: ClientConnection) -> None:
    """Proves the socket open now (and counts as client activity)."""
    await send_json(ws, {"action": "ping"})
    assert await recv_json(ws) == {"type": "pong"}


# --- frame size --------------------------------------------------------------------------


async def test_frames_over_16_kib_are_refused_by_the_protocol(
    repository: MarketRepository, key_repository: ApiKeyRepository
) -> None:
    """Served exactly as `entasis api` serves: uvicorn_config's ws_max_size, not a test default."""
    options = test_api_settings()
    app: FastAPI = create_app(repository=repository, api_settings=options, key_repository=key_repository)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, options, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        url = f"ws://127.0.0.1:{port}{WS_PATH}"
        headers = {"Authorization": f"Bearer {token_for(new_account('big'))}"}
        async with websockets.connect(url, additional_headers=headers, compression=None) as ws:
            await pong(ws)  # frames of the normal size are served
            await ws.send('{"action": "subscribe", "pad": "' + "x" * (20 * 1024) + '"}')
            # 1009 "message too big": refused by the protocol before the frame was kept whole
            # (with the old 16 MiB limit it got a BAD_REQUEST reply and the socket stayed open).
            assert await close_code(ws) == 1009
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


# --- sockets per account and in total ----------------------------------------------------


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


async def test_sockets_per_account_and_in_total_are_capped(
    repository: MarketRepository, key_repository: ApiKeyRepository
) -> None:
    fake = FakeTime()
    policy = fake.policy(max_per_account=2, max_total=3)
    async with served_with(repository, key_repository, policy) as served:
        alice, bob, carol = token_for(new_account("a")), token_for(new_account("b")), token_for(new_account("c"))
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(served.connect(alice))
            second = await stack.enter_async_context(served.connect(alice))
            await pong(first)
            await pong(second)
            async with served.connect(alice) as third:
                assert await close_code(third) == CLOSE_POLICY  # 1008: the account's third socket
            bobs = await stack.enter_async_context(served.connect(bob))
            await pong(bobs)  # another account is not limited by alice's sockets
            async with served.connect(carol) as over:
                assert await close_code(over) == 1013  # the process is full: try again later
            await first.close()
            counts: SocketCounts = served.app.state.ws_sockets
            await _until(lambda: counts.total == 2)
            async with served.connect(alice) as again:
                await pong(again)  # a closed socket gives its place back
        await _until(lambda: counts.total == 0)
        assert counts.per_account == {}  # nothing kept for accounts without sockets


# --- idle close --------------------------------------------------------------------------


async def test_a_silent_socket_is_closed_and_pings_keep_it_open(
    repository: MarketRepository, key_repository: ApiKeyRepository
) -> None:
    fake = FakeTime()
    async with (
        served_with(repository, key_repository, fake.policy(idle_s=30)) as served,
        served.connect(token_for(new_account("idle"))) as ws,
    ):
        await pong(ws)
        for _ in range(3):  # 60 s in all, but never 30 s without a client message
            fake.advance(20)
            await pong(ws)
        fake.advance(31)
        assert await close_code(ws) == CLOSE_IDLE


# --- token expiry ------------------------------------------------------------------------


async def test_a_socket_is_closed_when_its_token_expires(
    repository: MarketRepository, key_repository: ApiKeyRepository
) -> None:
    fake = FakeTime()
    policy = fake.policy(idle_s=10_000)
    # exp = issue + 600 s, accepted 30 s longer (the default leeway), as REST accepts it.
    token = token_for(new_account("exp"), ttl_s=600)
    async with (
        served_with(repository, key_repository, policy) as served,
        served.connect(query=f"?token={token}") as ws,
    ):
        fake.advance(590)
        await pong(ws)  # before exp + leeway: open
        fake.advance(45)
        assert await close_code(ws) == 4401


# --- API key revocation ------------------------------------------------------------------


def _key(key_repository: ApiKeyRepository, account: str, scopes: tuple[str, ...] = KNOWN_SCOPES) -> tuple[str, str]:
    new = generate_key()
    key_repository.insert(ApiKeyRecord(new.key_id, account, new.key_hash, scopes, (), "ws-test"))
    return new.key, new.key_id


@pytest.mark.parametrize("cache_s", [0.0, 2.0])
async def test_a_socket_is_closed_when_its_key_is_revoked(
    repository: MarketRepository, key_repository: ApiKeyRepository, cache_s: float
) -> None:
    fake = FakeTime()
    settings: dict[str, Any] = {"api_key_cache_seconds": cache_s}
    policy = SocketPolicy.from_settings(ApiSettings(**settings))
    assert policy.key_recheck_s == max(1.0, cache_s)  # each cache period, at least once a second
    policy.clock, policy.wall_clock, policy.sleep = fake.clock, fake.wall, fake.sleep
    # The verifier's own cache runs on the real clock: with a 0 s cache every re-check reads the row.
    async with served_with(repository, key_repository, policy, api_key_cache_seconds=0.0) as served:
        key, key_id = _key(key_repository, new_account("key"))
        async with served.connect(headers={"X-API-Key": key}) as ws:
            fake.advance(policy.key_recheck_s)
            await pong(ws)  # re-checked, still valid: open
            key_repository.revoke(key_id)
            fake.advance(policy.key_recheck_s)
            assert await close_code(ws) == 4401


async def test_an_unreachable_key_store_does_not_drop_sockets(
    repository: MarketRepository, key_repository: ApiKeyRepository
) -> None:
    fake = FakeTime()
    policy = fake.policy(key_recheck_s=1.0)
    async with served_with(repository, key_repository, policy, api_key_cache_seconds=0.0) as served:
        key, _ = _key(key_repository, new_account("outage"))
        async with served.connect(headers={"X-API-Key": key}) as ws:
            await pong(ws)
            failed: list[str] = []

            def down(key_id: str) -> ApiKeyRecord | None:
                failed.append(key_id)
                raise ConnectionError("store down")

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(key_repository, "get", down)
                fake.advance(1.0)
                await _until(lambda: len(failed) >= 1)  # the re-check ran, and failed
                await pong(ws)  # ...and the socket is still served


def test_the_policy_follows_the_settings() -> None:
    settings = ApiSettings(ws_max_sockets_per_account=3, ws_max_sockets=7, ws_idle_seconds=42)
    policy = SocketPolicy.from_settings(settings)
    assert (policy.max_per_account, policy.max_total, policy.idle_s) == (3, 7, 42)
    assert ApiSettings().ws_max_sockets_per_account == 10


def test_client_pings_parse_apart_from_commands() -> None:
    assert parse_message('{"action": "ping"}') is PING
    assert parse_message('{"type": "ping"}') is PING
    command = parse_message('{"type": "ping", "action": "subscribe", "channel": "market", "symbols": ["BTC-USDT"]}')
    assert isinstance(command, Command) and command.action == "subscribe"  # an action decides
    with pytest.raises(ProtocolError):
        parse_command('{"action": "ping"}')  # the command parser alone keeps refusing it
