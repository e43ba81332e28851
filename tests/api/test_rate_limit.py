"""Rate limit: exact at the limit, moving window, per account or per address, headers on every
response, and counters shared by two API processes through a real Redis."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.ratelimit import MemoryRateLimiter
from infra.dev.processes import free_port, wait_for_port
from infra.store.repository import MarketRepository
from tests.api.conftest import TEST_JWT_SECRET, bearer, error_of, new_account, new_address, test_api_settings, token_for

# Answered without touching the database (400 MARKET_001), so only the limiter is measured.
CHEAP = "/api/v1/market/price/BTC$USDT"
LIMIT = 1000


@pytest.fixture
def make_app(repository: MarketRepository, key_repository: ApiKeyRepository) -> Callable[..., FastAPI]:
    def make(**overrides: Any) -> FastAPI:
        return create_app(
            repository=repository, api_settings=test_api_settings(**overrides), key_repository=key_repository
        )

    return make


def _headers(response: httpx.Response) -> tuple[int, int, int]:
    return (
        int(response.headers["x-ratelimit-limit"]),
        int(response.headers["x-ratelimit-remaining"]),
        int(response.headers["x-ratelimit-reset"]),
    )


def test_limit_is_exact_at_1000_per_account(make_app: Callable[..., FastAPI]) -> None:
    account = new_account()
    with TestClient(make_app(), headers=bearer(token_for(account)), client=(new_address(), 1)) as client:
        for i in range(LIMIT):
            response = client.get(CHEAP)
            assert response.status_code == 400, (i, response.text)  # served: not limited
            limit, remaining, reset = _headers(response)
            assert (limit, remaining) == (LIMIT, LIMIT - 1 - i)
            assert 0 < reset <= 60
        for headers in ({}, {"Accept-Language": "ko"}):
            refused = client.get(CHEAP, headers=headers)
            assert refused.status_code == 429
            error = error_of(refused)
            assert error["code"] == "RATE_LIMITED"
            assert error["message"] == ("요청 한도 초과" if headers else "Rate limit exceeded")
            limit, remaining, reset = _headers(refused)
            assert (limit, remaining) == (LIMIT, 0)
            retry_after = int(refused.headers["retry-after"])
            assert 1 <= retry_after <= 60 and retry_after == max(1, reset)
        # Per account: the same account is refused from any address, on any path, even a valid one.
        elsewhere = client.get("/api/v1/market/history/BTC-USDT", headers={"X-Forwarded-For": "203.0.113.1"})
        assert elsewhere.status_code == 429
        # ...and another account, from the very same client, is not.
        other = client.get(CHEAP, headers=bearer(token_for(new_account())))
        assert other.status_code == 400 and _headers(other)[1] == LIMIT - 1


def test_limit_per_address_when_unauthenticated(make_app: Callable[..., FastAPI]) -> None:
    app = make_app()
    address = new_address()
    with TestClient(app, client=(address, 1)) as anon:
        for i in range(LIMIT):
            response = anon.get("/nowhere" if i % 2 else CHEAP)
            assert response.status_code in (401, 404), response.text
            assert _headers(response)[1] == LIMIT - 1 - i
        refused = anon.get("/nowhere")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) <= 60
        # invalid credentials spend the address's budget, never the account's
        account = new_account()
        assert anon.get(CHEAP, headers=bearer("a.b.c")).status_code == 429
        assert anon.get(CHEAP, headers=bearer(token_for(account))).status_code == 400  # the account is untouched
    with TestClient(app, client=(new_address(), 1)) as neighbour:
        assert neighbour.get("/nowhere").status_code == 404


def test_failed_attempts_never_spend_the_account_budget(make_app: Callable[..., FastAPI]) -> None:
    account = new_account()
    with TestClient(make_app(rate_limit="5/minute"), client=(new_address(), 1)) as client:
        expired = token_for(account, ttl_s=-3600)
        for _ in range(4):
            assert client.get(CHEAP, headers=bearer(expired)).status_code == 401
    with TestClient(make_app(rate_limit="5/minute"), client=(new_address(), 1)) as client:
        response = client.get(CHEAP, headers=bearer(token_for(account)))
        assert _headers(response)[1] == 4


class ManualClock:
    """Stands in for the `time` module where the limiter reads the clock (api.ratelimit), so
    the window moves only when the test says so: no assertion
    here depends on how fast this machine serves requests."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    import api.ratelimit

    manual = ManualClock()
    monkeypatch.setattr(api.ratelimit, "time", manual)
    return manual


def test_limit_resets_as_the_window_moves(make_app: Callable[..., FastAPI], clock: ManualClock) -> None:
    with TestClient(make_app(), headers=bearer(token_for(new_account())), client=(new_address(), 1)) as client:
        for i in range(LIMIT):
            assert client.get(CHEAP).status_code == 400
            if i == 0:
                clock.advance(20.0)  # the first request leaves the window 20 s before the others
        refused = client.get(CHEAP)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) == 40  # when the first request leaves the window
        clock.advance(39.0)
        assert client.get(CHEAP).status_code == 429, "freed before Retry-After"
        clock.advance(1.5)  # past the boundary
        again = client.get(CHEAP)
        assert again.status_code == 400, "the window did not free a request after Retry-After"
        assert client.get(CHEAP).status_code == 429, "only the oldest request left the window"


def test_moving_window_frees_requests_one_batch_at_a_time(clock: ManualClock) -> None:
    # A fixed window would forget everything at its boundary; a moving one only the oldest hits.
    limiter = MemoryRateLimiter("10 per 3 seconds")
    first = [limiter.hit_now("k") for _ in range(5)]
    clock.advance(1.5)
    second = [limiter.hit_now("k") for _ in range(5)]
    assert all(d.allowed for d in first + second)
    assert not limiter.hit_now("k").allowed
    clock.advance(1.6)  # the first five have left the window; the second five stay in it for 1.4 s more
    freed = [limiter.hit_now("k").allowed for _ in range(6)]
    assert freed == [True] * 5 + [False]


def test_the_window_matches_a_plain_count_of_recent_hits(clock: ManualClock) -> None:
    """Oracle: every hit time kept in a list; a request is allowed while fewer than the limit are
    at most the window old, the reset is when the oldest of them leaves. 3,000 seeded hits over
    five identities, with steps that land exactly on the window's edge."""
    rng = Random(11)
    limiter = MemoryRateLimiter("7 per 10 seconds")
    kept: dict[str, list[float]] = {}
    for _ in range(3000):
        clock.advance(rng.choice((0.0, 0.25, 1.0, 2.5, 10.0, 3.0)))
        who = rng.choice("abcde")
        counted = [t for t in kept.get(who, []) if t >= clock.now - 10.0]
        allowed = len(counted) < 7
        if allowed:
            counted.append(clock.now)
        kept[who] = counted
        reset = math.ceil(min(counted, default=clock.now) + 10.0 - clock.now)
        decision = limiter.hit_now(who)
        assert (decision.allowed, decision.remaining, decision.reset_s) == (
            allowed, 7 - len(counted) if allowed else 0, reset
        )  # fmt: skip


def test_idle_identities_are_forgotten(clock: ManualClock) -> None:
    limiter = MemoryRateLimiter("5/minute")
    for i in range(1000):
        limiter.hit_now(f"ip:10.0.{i // 250}.{i % 250}")
    clock.advance(61.0)  # every one of them out of its window
    for i in range(300):
        limiter.hit_now(f"account:{i}")
    assert len(limiter._hits) == 300, "idle identities must leave as fast as new ones arrive"
    assert not any(key.startswith("ip:") for key in limiter._hits)


def test_rate_headers_on_every_response(app: FastAPI) -> None:
    from infra.store.repository import MarketRepository

    class Exploding(MarketRepository):
        def known_symbols(self) -> frozenset[str]:
            raise RuntimeError("boom")

    broken = create_app(repository=Exploding(lambda: None), api_settings=test_api_settings())  # type: ignore[arg-type, return-value]
    token = token_for(new_account())
    with TestClient(broken, headers=bearer(token), client=(new_address(), 1)) as client:
        assert client.get("/api/v1/market/price/BTC-USDT").status_code == 500
        responses = [client.get("/api/v1/market/price/BTC-USDT")]
    with TestClient(app, headers=bearer(token), client=(new_address(), 1)) as client:
        responses += [
            client.get(CHEAP),  # 400
            client.get("/nowhere"),  # 404
            client.post(CHEAP),  # 405
            client.get("/openapi.json"),  # 200
            client.get("/docs"),  # 200, HTML
            client.get(CHEAP, headers=bearer("x.y.z")),  # 401
        ]
    assert [r.status_code for r in responses] == [500, 400, 404, 405, 200, 200, 401]
    for response in responses:
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-request-id"} <= set(
            response.headers
        ), response.status_code


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port. Missing redis-server fails, never skips:
    shared counters are part of the contract (CI installs Debian's `redis-server`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (Debian: apt-get install -y redis-server); needed for this test")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    log = (directory / "redis.log").open("wb")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, timeout_s=20, what="redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def api_processes(redis_url: str, tmp_path: Path) -> Iterator[list[str]]:
    """Two `entasis api --dev` processes sharing one Redis (and nothing else)."""
    procs: list[subprocess.Popen[bytes]] = []
    bases = []
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "ENTASIS_API_JWT_SECRET": TEST_JWT_SECRET,
        "ENTASIS_API_RATE_LIMIT": "1000/minute",
        "ENTASIS_LOGLEVEL": "WARNING",
    }
    env.pop("ENTASIS_API_REDIS_URL", None)
    try:
        for n in range(2):
            port = free_port()
            log = (tmp_path / f"api{n}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "infra.cli", "api", "--dev", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=Path(__file__).resolve().parents[2],
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        for proc, base in zip(procs, bases, strict=True):
            port = int(base.rsplit(":", 1)[1])
            try:
                wait_for_port("127.0.0.1", port, timeout_s=60, what="api")
            except TimeoutError:
                raise AssertionError((tmp_path / f"api{bases.index(base)}.log").read_text()) from None
            assert proc.poll() is None
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def test_two_api_processes_share_the_limit_through_redis(api_processes: list[str]) -> None:
    first, second = api_processes
    account = new_account()
    headers = bearer(token_for(account))
    with httpx.Client(headers=headers, timeout=10) as http:
        for i in range(LIMIT):
            base = first if i % 3 else second  # uneven on purpose: the sum is what counts
            response = http.get(base + CHEAP)
            assert response.status_code == 400, (i, response.text)
            assert int(response.headers["x-ratelimit-remaining"]) == LIMIT - 1 - i
        for base in (first, second):
            refused = http.get(base + CHEAP)
            assert refused.status_code == 429, base
            assert error_of(refused)["code"] == "RATE_LIMITED"
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        other = http.get(second + CHEAP, headers=bearer(token_for(new_account())))
        assert other.status_code == 400
    # Unauthenticated clients share a per-address budget across processes too.
    with httpx.Client(timeout=10) as anon:
        a = anon.get(first + "/nowhere")
        b = anon.get(second + "/nowhere")
        assert int(b.headers["x-ratelimit-remaining"]) == int(a.headers["x-ratelimit-remaining"]) - 1


def test_unreachable_redis_falls_back_to_counting_in_process(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit="3/minute")
    with TestClient(app, headers=bearer(token_for(new_account())), client=(new_address(), 1)) as client:
        statuses = [client.get(CHEAP).status_code for _ in range(4)]
        assert statuses == [400, 400, 400, 429]  # still limited, never 500, never unlimited
        assert client.get(CHEAP).headers["x-ratelimit-remaining"] == "0"
