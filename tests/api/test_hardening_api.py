"""Issue 18, the API server's hardening: each test plays the attack first.

- finding 5: credentials after the rate limit (a flood of random API keys costs no store query
  once the address is over its limit; a cheap per-address budget before any credential work;
  concurrent lookups of one key share a query; random ids do not evict real keys);
- finding 10: bounded connections (request-head deadline and header limits, concurrency,
  keep-alive) and bounded request bodies;
- finding 11: `--dev` only on loopback;
- finding 13 (part): wildcard allowlists however spelled, TLS 1.2 ciphers, certificate expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, ApiKeyVerifier, generate_key
from api.main import TLS12_CIPHERS, UnsafeSettings, is_loopback_host, run, startup_problems, uvicorn_config
from api.network import covers_a_whole_family
from api.security import AddressBudget, SecurityGate, SecurityMiddleware
from api.tls import self_signed
from infra.config.settings import get_settings
from infra.dev.processes import free_port
from infra.store.repository import MarketRepository
from tests.api.conftest import TEST_JWT_SECRET, bearer, error_of, new_account, new_address, test_api_settings, token_for

ROOT = Path(__file__).resolve().parents[2]
CHEAP = "/api/v1/market/price/BTC$USDT"  # 400 MARKET_001 once through the gate, no database work
POSITIONS = "/api/v1/portfolio/positions"


def random_key() -> str:
    """A well-formed key whose id no store holds: what a key-guessing flood sends."""
    return generate_key().key


class CountingKeys(ApiKeyRepository):
    """A key store that only counts its queries (no database: the count is the oracle)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def get(self, key_id: str) -> ApiKeyRecord | None:
        self.queries.append(key_id)
        return None

    def close(self) -> None:
        pass


# --- finding 5: the rate limit before credential work ------------------------------------


def test_random_keys_cost_no_query_once_the_address_is_over_its_limit(repository: MarketRepository) -> None:
    keys = CountingKeys()
    app = create_app(repository=repository, api_settings=test_api_settings(rate_limit="5/minute"), key_repository=keys)
    with TestClient(app, client=(new_address(), 1)) as attacker:
        statuses = [attacker.get(CHEAP, headers={"X-API-Key": random_key()}).status_code for _ in range(30)]
        # The first five are the address's budget: looked up, refused as invalid; every one after is
        # refused 429 without a query (before the fix: thirty queries, one per key).
        assert statuses == [401] * 5 + [429] * 25
        assert len(keys.queries) == 5
        refused = attacker.get(CHEAP, headers={"X-API-Key": random_key()})
        assert error_of(refused)["code"] == "RATE_LIMITED" and "retry-after" in refused.headers
        # A valid token from the same address is still served: the account's budget is its own.
        served = attacker.get(CHEAP, headers=bearer(token_for(new_account())))
        assert served.status_code == 400 and served.headers["x-ratelimit-remaining"] == "4"
    assert len(keys.queries) == 5


def test_a_looked_up_key_is_counted_once_against_the_address(repository: MarketRepository) -> None:
    """The lookup is paid from the address's limit before it runs; the failed attempt is not then
    counted a second time."""
    keys = CountingKeys()
    app = create_app(repository=repository, api_settings=test_api_settings(rate_limit="5/minute"), key_repository=keys)
    with TestClient(app, client=(new_address(), 1)) as client:
        remaining = [
            client.get(CHEAP, headers={"X-API-Key": random_key()}).headers["x-ratelimit-remaining"] for _ in range(3)
        ]
    assert remaining == ["4", "3", "2"]


class ManualClock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def test_address_budget_refuses_before_any_credential_is_read(repository: MarketRepository) -> None:
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=CountingKeys())
    gate: SecurityGate = app.state.gate
    clock = ManualClock()
    gate.address_budget = AddressBudget("3/minute", clock=clock)
    checked: list[object] = []
    real_check = gate.authenticator.check

    async def spy(**kwargs: Any) -> Any:
        checked.append(kwargs)
        return await real_check(**kwargs)

    gate.authenticator.check = spy  # type: ignore[method-assign]
    token = token_for(new_account())
    with TestClient(app, client=(new_address(), 1), headers=bearer(token)) as client:
        assert [client.get(CHEAP).status_code for _ in range(3)] == [400] * 3
        over = client.get(CHEAP)  # valid credentials, but the address spent its flood budget
        assert over.status_code == 429 and error_of(over)["code"] == "RATE_LIMITED"
        assert over.headers["x-ratelimit-limit"] == "3" and 1 <= int(over.headers["retry-after"]) <= 60
        assert len(checked) == 3  # the fourth request's credentials were never looked at
        clock.now += 60  # the next window
        assert client.get(CHEAP).status_code == 400
    with TestClient(app, client=(new_address(), 1), headers=bearer(token)) as neighbour:
        assert neighbour.get(CHEAP).status_code == 400  # per address: another one is untouched


def test_address_budget_forgets_the_least_recent_address_beyond_its_bound() -> None:
    budget = AddressBudget("1/minute", clock=ManualClock(), max_addresses=2)
    assert budget.spend("a").allowed and budget.spend("b").allowed
    assert not budget.spend("a").allowed
    budget.spend("c")  # "b" is now the least recently seen, and goes
    assert not budget.spend("a").allowed and budget.spend("b").allowed


async def test_concurrent_lookups_of_one_key_share_a_single_query() -> None:
    new = generate_key()
    record = ApiKeyRecord(new.key_id, "alice", new.key_hash, ("market:read",))
    release = asyncio.Event()
    queries: list[str] = []

    async def slow_lookup(key_id: str) -> ApiKeyRecord | None:
        queries.append(key_id)
        await release.wait()
        return record

    verifier = ApiKeyVerifier(slow_lookup, ttl_s=2.0)
    waiting = [asyncio.create_task(verifier.verify(new.key)) for _ in range(20)]
    await asyncio.sleep(0)  # every task reaches the lookup before it answers
    release.set()
    assert await asyncio.gather(*waiting) == [record] * 20
    assert queries == [new.key_id]


async def test_a_waiter_going_away_does_not_cancel_the_shared_query() -> None:
    new = generate_key()
    record = ApiKeyRecord(new.key_id, "alice", new.key_hash, ("market:read",))
    release = asyncio.Event()
    queries: list[str] = []

    async def slow_lookup(key_id: str) -> ApiKeyRecord | None:
        queries.append(key_id)
        await release.wait()
        return record

    verifier = ApiKeyVerifier(slow_lookup)
    first = asyncio.create_task(verifier.verify(new.key))
    second = asyncio.create_task(verifier.verify(new.key))
    await asyncio.sleep(0)
    first.cancel()  # the client of the request that started the query disconnects
    release.set()
    assert await second == record
    assert queries == [new.key_id]


async def test_random_ids_do_not_evict_a_real_key() -> None:
    new = generate_key()
    record = ApiKeyRecord(new.key_id, "alice", new.key_hash, ("market:read",))
    queries: list[str] = []

    async def lookup(key_id: str) -> ApiKeyRecord | None:
        queries.append(key_id)
        return record if key_id == new.key_id else None

    verifier = ApiKeyVerifier(lookup, ttl_s=60.0, max_entries=10, clock=ManualClock())
    assert await verifier.verify(new.key) == record
    for _ in range(1000):
        with contextlib.suppress(Exception):
            await verifier.verify(random_key())
    assert await verifier.verify(new.key) == record
    assert queries.count(new.key_id) == 1  # still cached: the flood pushed out only unknown ids
    assert len(verifier._cache) == 10


# --- finding 10 and 13: bounded request bodies ----------------------------------------------


@pytest.fixture
def app(repository: MarketRepository, key_repository: ApiKeyRepository) -> FastAPI:
    return create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository)


def test_a_body_over_the_cap_gets_413_before_the_route(app: FastAPI) -> None:
    headers = bearer(token_for(new_account()))
    with TestClient(app, client=(new_address(), 1), headers=headers) as client:
        declared = client.post(
            POSITIONS, content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        error = error_of(declared)
        assert error["code"] == "BAD_REQUEST" and "65536" in error["details"]["reason"]
        assert "x-request-id" in declared.headers and "x-ratelimit-remaining" in declared.headers

        def chunks() -> Any:  # no Content-Length: the size is only known by reading
            for _ in range(20):
                yield b" " * 4096

        chunked = client.post(POSITIONS, content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        # A body within the cap reaches the route (which answers about its content, not its size).
        small = client.post(POSITIONS, content=b"{}", headers={"content-type": "application/json"})
        assert small.status_code not in (408, 413)


async def test_a_body_that_never_arrives_gets_408(repository: MarketRepository) -> None:
    settings = test_api_settings(receive_timeout_seconds=0.05)
    app = create_app(repository=repository, api_settings=settings, key_repository=CountingKeys())
    reached: list[Scope] = []

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    middleware = SecurityMiddleware(route, app.state.gate)
    token = token_for(new_account()).encode()
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": POSITIONS,
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer " + token), (b"content-length", b"100")],
        "client": (new_address(), 1),
        "scheme": "http",
    }
    sent: list[Message] = []

    async def never() -> Message:  # a client that announced a body and sends nothing
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, never, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
    assert b'"BAD_REQUEST"' in sent[1]["body"]
    assert not reached


# --- finding 10: connection limits and the request-head deadline ---------------------------


@contextlib.asynccontextmanager
async def served(app: FastAPI, **overrides: Any) -> AsyncIterator[int]:
    """The app behind the very uvicorn configuration `entasis api` uses, on a loopback port."""
    port = free_port()
    config = uvicorn_config(app, "127.0.0.1", port, test_api_settings(**overrides), log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _exchange(port: int, data: bytes, *, wait_s: float = 5.0) -> bytes:
    """Send `data` and read until the server closes the connection (or `wait_s` passes: then
    whatever came, which for a server that never closes is an incomplete answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    received = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                received += chunk
    writer.close()
    return received


async def test_too_many_or_too_large_headers_get_400(app: FastAPI) -> None:
    async with served(app) as port:
        many = b"".join(b"X-Pad-%d: 1\r\n" % i for i in range(150))
        answer = await _exchange(port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n" + many + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400")
        huge = b"X-Pad: " + b"a" * 20_000 + b"\r\n"
        answer = await _exchange(port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n" + huge + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400")
        normal = await _exchange(port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert normal.startswith(b"HTTP/1.1 404")


async def test_a_request_head_that_never_completes_is_dropped(app: FastAPI) -> None:
    # A head deadline far below the read's patience: a server without one keeps the connection
    # open, and the read gives up with nothing; one with it closes the connection, unanswered.
    async with served(app, receive_timeout_seconds=0.2) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # ...and nothing more (slowloris)
        await writer.drain()
        closed = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                closed = await reader.read(1024) == b""
        writer.close()
        assert closed, "the server kept a connection whose request head never completed"


def test_uvicorn_gets_the_connection_limits_of_the_settings(app: FastAPI) -> None:
    settings = test_api_settings(limit_concurrency=123, keep_alive_seconds=7, max_header_bytes=4096)
    config = uvicorn_config(app, "127.0.0.1", 1, settings)
    assert (config.limit_concurrency, config.timeout_keep_alive) == (123, 7)
    assert config.h11_max_incomplete_event_size == 4096
    assert config.ws_max_size == 16 * 1024
    defaults = test_api_settings()
    assert defaults.limit_concurrency is not None and defaults.max_body_bytes == 64 * 1024


# --- finding 11: --dev on loopback only ------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "api.example.com"])
def test_dev_is_refused_off_loopback(host: str) -> None:
    problems = startup_problems(test_api_settings(), dev=True, host=host)
    assert any("loopback" in p for p in problems), problems
    with pytest.raises(UnsafeSettings, match="loopback"):
        run(host=host, settings=get_settings(), api_settings=test_api_settings(), dev=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_dev_is_allowed_on_loopback(host: str) -> None:
    assert is_loopback_host(host)
    assert startup_problems(test_api_settings(), dev=True, host=host) == []


def test_dev_host_defaults_to_the_configured_one() -> None:
    assert any("loopback" in p for p in startup_problems(test_api_settings(host="0.0.0.0"), dev=True))


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTASIS_API_") and k != "REDIS_URL"}
    env.update(extra)
    return env


def test_cli_refuses_dev_on_every_interface() -> None:
    """The probe of the issue: ENTASIS_API_HOST=0.0.0.0 with --dev (what `up.sh` passes)."""
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "api", "--dev", "--port", str(free_port())],
        env=_clean_env(ENTASIS_API_HOST="0.0.0.0"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "loopback" in done.stderr and "Traceback" not in done.stderr


# --- finding 13: wildcards however spelled, ciphers, certificate validity --------------------


@pytest.mark.parametrize(
    "ranges",
    [
        "0.0.0.0/1, 128.0.0.0/1",
        "::/1, 8000::/1",
        ", ".join(f"{i}.0.0.0/8" for i in range(256)),
        "10.0.0.0/8, 0.0.0.0/2, 64.0.0.0/2, 128.0.0.0/1",
    ],
)
def test_allowlists_that_add_up_to_everything_are_wildcards(ranges: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key)
    unsafe = test_api_settings(jwt_secret=TEST_JWT_SECRET, tls_cert=cert, tls_key=key, allowlist=ranges)
    problems = startup_problems(unsafe, dev=False)
    assert len(problems) == 1 and "wildcard" in problems[0], problems
    proxies = test_api_settings(jwt_secret=TEST_JWT_SECRET, tls_cert=cert, tls_key=key, allowlist="10.0.0.0/8",
                                trusted_proxies=ranges)  # fmt: skip
    assert any("forge X-Forwarded-For" in p for p in startup_problems(proxies, dev=False))


def test_partial_coverage_is_no_wildcard() -> None:
    almost = [ip_network(f"{i}.0.0.0/8") for i in range(255)]  # every /8 but 255.0.0.0/8
    assert not covers_a_whole_family(almost)
    assert not covers_a_whole_family([ip_network("0.0.0.0/1"), ip_network("8000::/1")])
    assert covers_a_whole_family([ip_network("0.0.0.0/1"), ip_network("8000::/1"), ip_network("128.0.0.0/1")])


def test_tls12_offers_aead_suites_with_forward_secrecy_only(app: FastAPI, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key)
    config = uvicorn_config(app, "127.0.0.1", 1, test_api_settings(tls_cert=cert, tls_key=key))
    assert config.ssl_ciphers == TLS12_CIPHERS
    config.load()  # builds the server's SSLContext as uvicorn serves with it
    assert config.ssl is not None
    tls12 = [c for c in config.ssl.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 suite at all"
    for cipher in tls12:
        # OpenSSL's own description of each suite is the oracle: AEAD, ECDHE/DHE, no SHA-1 MAC.
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), cipher["name"]
        assert "CBC" not in cipher["description"] and not cipher["name"].endswith("-SHA"), cipher["name"]


def test_an_expired_or_future_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key, days=30)
    options = test_api_settings(jwt_secret=TEST_JWT_SECRET, tls_cert=cert, tls_key=key, allowlist="10.0.0.0/8")
    today = dt.datetime.now(dt.UTC)
    assert startup_problems(options, dev=False, now=today) == []
    for when, fragment in (
        (today + dt.timedelta(days=31), "expired"),
        (today - dt.timedelta(days=1), "not valid before"),
    ):
        for dev in (False, True):  # a broken certificate stops a --dev server too
            problems = startup_problems(options, dev=dev, now=when)
            assert len(problems) == 1 and fragment in problems[0], problems
