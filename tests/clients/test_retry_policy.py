"""The retry policy alone (pure), and the clients' retry loop over a scripted transport: bounded
attempts, `Retry-After` waited exactly, backoff without it, what is never retried; the mapping of
error bodies (envelopes or not) to exceptions."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator

import httpx
import pytest
from entasis_client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    EntasisError,
    InvalidResponse,
    NotFound,
    RateLimited,
    ReconnectPolicy,
    RetryPolicy,
    ServerError,
    Unavailable,
    ValidationFailed,
)
from entasis_client.errors import SymbolNotFound, error_class, error_from_body
from entasis_client.retry import parse_retry_after

PRICE = {"symbol": "BTC-USDT", "price": "1.00000000", "timestamp": "2024-01-01T00:00:00.000Z",
         "volume": "2.00000000", "exchange": "sim"}


def envelope(code: str, message: str = "m", details: object = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "details": details, "request_id": "r" * 32}}


# --- the policy ---------------------------------------------------------------------------------


def test_attempts_are_bounded_and_count_the_first() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.delay(1, status=503, retry_after=0) is not None
    assert policy.delay(2, status=429, rand=lambda: 0.5) is not None
    assert policy.delay(3, status=503, retry_after=0) is None
    assert RetryPolicy.never().delay(1, status=429, retry_after=1) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_retry_after_is_waited_exactly_and_a_long_one_not_at_all() -> None:
    policy = RetryPolicy(max_retry_after=60)
    assert policy.delay(1, status=429, retry_after=7) == 7
    assert policy.delay(1, status=503, retry_after=0) == 0
    assert policy.delay(1, status=503, retry_after=60) == 60
    assert policy.delay(1, status=503, retry_after=61) is None  # raise now, with .retry_after
    assert policy.delay(1, status=429, retry_after=-3) == 0


def test_backoff_grows_capped_with_bounded_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_initial=0.5, backoff_multiplier=2, backoff_max=3, jitter=0.1)
    middle = [policy.delay(n, status=429, rand=lambda: 0.5) for n in range(1, 6)]
    assert middle == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, status=429, rand=lambda: 0.0) == pytest.approx(0.45)
    assert policy.delay(1, status=429, rand=lambda: 0.999999) == pytest.approx(0.55, abs=1e-5)
    assert policy.backoff(3) == 2.0


def test_a_503_is_retried_when_the_server_says_when() -> None:
    policy = RetryPolicy()
    assert policy.delay(1, status=503, retry_after=1) == 1
    assert policy.delay(1, status=503) is None  # unannounced: "no estimate yet", "feed down"
    assert policy.delay(1, status=429, rand=lambda: 0.5) == 0.5  # a 429 always is
    eager = RetryPolicy(backoff_statuses=frozenset({429, 503}))
    assert eager.delay(1, status=503, rand=lambda: 0.5) == 0.5


def test_what_is_never_retried() -> None:
    policy = RetryPolicy()
    for status in (400, 401, 403, 404, 409, 422, 500):
        assert policy.delay(1, status=status, retry_after=1) is None
    assert policy.delay(1, connection_error=False) is None  # e.g. TLS verification
    assert policy.delay(1, connection_error=True, rand=lambda: 0.5) == 0.5
    assert RetryPolicy(retry_connection_errors=False).delay(1, connection_error=True) is None
    assert RetryPolicy(retry_statuses=frozenset({502})).delay(1, status=502, retry_after=2) == 2


def test_parse_retry_after() -> None:
    now = dt.datetime(2024, 3, 21, 9, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("12") == 12
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Thu, 21 Mar 2024 09:00:30 GMT", now=lambda: now) == 30
    assert parse_retry_after("Thu, 21 Mar 2024 08:00:00 GMT", now=lambda: now) == 0
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(unreadable) is None


def test_reconnect_policy() -> None:
    policy = ReconnectPolicy(initial=1, multiplier=2, maximum=10, jitter=0.2, max_attempts=5)
    assert [policy.delay(n, rand=lambda: 0.5) for n in range(1, 7)] == [1, 2, 4, 8, 10, None]
    assert policy.delay(1, rand=lambda: 0.0) == pytest.approx(0.8)
    assert ReconnectPolicy().delay(10_000, rand=lambda: 0.5) == 30  # forever, capped


# --- error bodies -------------------------------------------------------------------------------


def test_error_bodies_map_by_code_then_status() -> None:
    error = error_from_body(429, b'{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded","details":'
                                 b'{"limit":1000},"request_id":"abc"}}', retry_after=12)
    assert isinstance(error, RateLimited)
    assert (error.code, error.status, error.message, error.details, error.request_id, error.retry_after) == (
        "RATE_LIMITED", 429, "Rate limit exceeded", {"limit": 1000}, "abc", 12)
    assert type(error_from_body(404, b'{"error":{"code":"MARKET_001","message":"x"}}')) is SymbolNotFound
    assert type(error_from_body(400, b'{"error":{"code":"MARKET_001","message":"x"}}')).__name__ == "InvalidSymbol"
    # a code this client does not know: the class of its status
    assert type(error_from_body(503, b'{"error":{"code":"NEW_CODE","message":"x"}}')) is Unavailable
    assert error_class("NEW_CODE") is EntasisError
    # not an envelope (a proxy's page): HTTP_<status>
    proxy = error_from_body(502, b"<html>Bad Gateway</html>", reason="Bad Gateway", request_id="q")
    assert isinstance(proxy, ServerError) and (proxy.code, proxy.message, proxy.request_id) == (
        "HTTP_502", "Bad Gateway", "q")
    assert isinstance(error_from_body(404, b""), NotFound)
    assert str(error_from_body(400, b'{"error":{"code":"BAD_REQUEST","message":"Bad request","details":{"a":1},'
                                    b'"request_id":"r1"}}')) == 'BAD_REQUEST (400): Bad request {"a": 1} [request r1]'


def test_errors_pickle() -> None:
    import pickle

    error = error_from_body(400, b'{"error":{"code":"BAD_REQUEST","message":"Bad request","details":{"a":1}}}')
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ValidationFailed and (copy.code, copy.status, copy.details) == ("BAD_REQUEST", 400, {"a": 1})


# --- the clients' loop over a scripted transport --------------------------------------------------


class Script:
    """Answers each request with the next scripted reply (a response or an exception)."""

    def __init__(self, *replies: httpx.Response | Exception) -> None:
        self.replies: Iterator[httpx.Response | Exception] = itertools.chain(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = next(self.replies)
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_the_loop_waits_retry_after_then_succeeds() -> None:
    script = Script(
        httpx.Response(503, headers={"Retry-After": "2"}, json=envelope("UNAVAILABLE")),
        httpx.Response(429, headers={"Retry-After": "1"}, json=envelope("RATE_LIMITED")),
        httpx.Response(200, json=PRICE),
    )
    slept: list[float] = []
    with Client("http://api.test", transport=httpx.MockTransport(script), sleep=slept.append) as api:
        assert api.price("BTC-USDT").exchange == "sim"
    assert slept == [2, 1] and len(script.requests) == 3


def test_the_loop_gives_up_after_max_attempts_with_the_last_error() -> None:
    script = Script(*[httpx.Response(503, json=envelope("UNAVAILABLE", details={"n": i})) for i in range(5)])
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=3, jitter=0, backoff_statuses=frozenset({503}))
    transport = httpx.MockTransport(script)
    with Client("http://api.test", transport=transport, sleep=slept.append, retry=policy) as api, pytest.raises(
        Unavailable
    ) as error:
        api.price("BTC-USDT")
    assert error.value.details == {"n": 2} and len(script.requests) == 3
    assert slept == [0.5, 1.0]  # backoff: no Retry-After


def test_connection_errors_are_retried_then_reported() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(200, json=PRICE))
    slept: list[float] = []
    with Client("http://api.test", transport=httpx.MockTransport(script), sleep=slept.append) as api:
        assert api.price("BTC-USDT").symbol == "BTC-USDT"
    assert len(slept) == 2
    failing = Script(*[httpx.ConnectError("refused")] * 4)
    transport = httpx.MockTransport(failing)
    with Client("http://api.test", transport=transport, sleep=lambda s: None) as api, pytest.raises(
        ConnectionFailed
    ) as error:
        api.price("BTC-USDT")
    assert error.value.code == "CONNECTION_FAILED" and error.value.status is None and len(failing.requests) == 4


def test_a_client_error_is_raised_at_once_and_a_bad_answer_is_invalid_response() -> None:
    script = Script(httpx.Response(400, json=envelope("BAD_REQUEST")), httpx.Response(200, json={"symbol": 1}))
    slept: list[float] = []
    with Client("http://api.test", transport=httpx.MockTransport(script), sleep=slept.append) as api:
        with pytest.raises(ValidationFailed):
            api.price("BTC-USDT")
        with pytest.raises(InvalidResponse) as bad:
            api.price("BTC-USDT")
    assert slept == [] and bad.value.code == "INVALID_RESPONSE"


def test_requests_carry_credentials_and_encode_the_path() -> None:
    script = Script(httpx.Response(200, json=PRICE), httpx.Response(200, json=PRICE))
    tokens = iter(["t1", "t2"])
    with Client("http://api.test/", token=lambda: next(tokens), api_key="ek_k", language="ko",
                transport=httpx.MockTransport(script)) as api:
        api.price("BTC/USDT", exchange="binance")
        api.price("BTC-USDT")
    first, second = script.requests
    assert first.url.raw_path == b"/api/v1/market/price/BTC%2FUSDT?exchange=binance"
    assert (first.headers["authorization"], second.headers["authorization"]) == ("Bearer t1", "Bearer t2")
    assert first.headers["x-api-key"] == "ek_k" and first.headers["accept-language"] == "ko"
    assert first.headers["user-agent"].startswith("entasis-client/")


async def test_the_async_loop_is_the_same() -> None:
    script = Script(
        httpx.Response(429, headers={"Retry-After": "3"}, json=envelope("RATE_LIMITED")),
        httpx.Response(200, json=PRICE),
    )
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with AsyncClient("http://api.test", transport=httpx.MockTransport(script), sleep=sleep) as api:
        assert (await api.price("BTC-USDT")).price == 1
    assert slept == [3]
