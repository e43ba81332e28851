"""`Idempotency-Key` on every POST, the same on every retry of one call: against the real API,
with a transport in between that loses the first answer (the server did open the position; the
client only sees a 503) or the first connection. The retry must be answered with the first result:
one position, not two."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from entasis_client import AsyncClient, Client

from tests.api.conftest import NS, Market, TradeRow, new_account, token_for

T0 = 1_723_161_600 * NS
LOST = {"error": {"code": "UNAVAILABLE", "message": "Service temporarily unavailable", "details": None,
                  "request_id": "0" * 32}}


def seed(market: Market, symbol: str) -> None:
    market.trades([TradeRow("binance", symbol, "i1", Decimal("50"), Decimal("1"), T0)])


class LoseFirstAnswer(httpx.BaseTransport):
    """Forwards to the real server; the first POST's answer never reaches the client, which
    gets a 503 with `Retry-After: 0` instead (a proxy that gave up waiting). With `refuse`, the
    first POST does not even reach the server (the connection fails)."""

    def __init__(self, refuse: bool = False) -> None:
        self.inner = httpx.HTTPTransport()
        self.refuse = refuse
        self.posts: list[httpx.Request] = []
        self.gets: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        (self.posts if request.method == "POST" else self.gets).append(request)
        first_post = request.method == "POST" and len(self.posts) == 1
        if first_post and self.refuse:
            raise httpx.ConnectError("connection refused", request=request)
        response = self.inner.handle_request(request)
        if first_post:
            response.read()
            response.close()
            return httpx.Response(503, headers={"Retry-After": "0"}, json=LOST, request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncLoseFirstAnswer(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.posts: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.posts.append(request)
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and len(self.posts) == 1:
            await response.aread()
            await response.aclose()
            return httpx.Response(503, headers={"Retry-After": "0"}, json=LOST, request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def keys(requests: list[httpx.Request]) -> list[str | None]:
    return [r.headers.get("idempotency-key") for r in requests]


@pytest.mark.parametrize("refuse", [False, True], ids=["answer-lost", "connection-refused"])
def test_a_retried_post_repeats_its_key_and_opens_one_position(
    base_url: str, market: Market, new_symbol: Callable[[str], str], refuse: bool
) -> None:
    symbol = new_symbol("IK")
    seed(market, symbol)
    transport = LoseFirstAnswer(refuse=refuse)
    slept: list[float] = []
    with Client(base_url, token=token_for(new_account("idem")), transport=transport, sleep=slept.append) as api:
        opened = api.open_position(symbol, "0.25", "short")
        held = api.positions().positions
    sent = keys(transport.posts)
    assert len(sent) == 2 and sent[0] == sent[1]  # one key for both attempts
    assert sent[0] is not None and uuid.UUID(sent[0]).version == 4
    assert transport.posts[0].content == transport.posts[1].content  # the same body
    assert len(slept) == 1 and (slept[0] == 0.0 or refuse)  # Retry-After: 0, or backoff after a refusal
    # the server decided once: the answer the client finally got is the first one
    assert [p.position_id for p in held] == [opened.position_id]
    assert all(r.headers.get("idempotency-key") is None for r in transport.gets)  # only POSTs carry a key


def test_every_call_gets_a_key_of_its_own_unless_the_caller_gives_one(
    base_url: str, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("IN")
    seed(market, symbol)
    transport = LoseFirstAnswer()
    with Client(base_url, token=token_for(new_account("idem")), transport=transport, sleep=lambda s: None) as api:
        first = api.open_position(symbol, "0.1", "long")
        second = api.open_position(symbol, "0.1", "long")  # a new call: a new position
        third = api.open_position(symbol, "0.1", "long", idempotency_key="my-key-1")
        fourth = api.open_position(symbol, "0.1", "long", idempotency_key="my-key-1")
        held = {p.position_id for p in api.positions().positions}
    sent = keys(transport.posts)
    assert sent[0] == sent[1] and len(set(sent[1:3])) == 2  # first call retried once, second call new key
    assert sent[3:] == ["my-key-1", "my-key-1"]
    assert first.position_id != second.position_id and third.position_id == fourth.position_id
    assert held == {first.position_id, second.position_id, third.position_id}


async def test_the_async_client_repeats_its_key_too(
    base_url: str, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("IA")
    seed(market, symbol)
    transport = AsyncLoseFirstAnswer()

    async def no_wait(seconds: float) -> None:
        return None

    async with AsyncClient(base_url, token=token_for(new_account("idem")), transport=transport, sleep=no_wait) as api:
        opened = await api.open_position(symbol, Decimal("0.3"), "long", leverage=Decimal("1.5"))
        held = (await api.positions()).positions
    sent = keys(transport.posts)
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0] is not None
    assert [(p.position_id, p.size, p.leverage) for p in held] == [(opened.position_id, Decimal("0.3"), Decimal("1.5"))]
