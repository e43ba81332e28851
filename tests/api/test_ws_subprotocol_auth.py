"""`/ws/market` credentials offered as WebSocket subprotocols, the way a browser can send them
(it cannot set headers on a WebSocket): `entasis.bearer.<jwt>` or `entasis.key.<key>` beside
`entasis.v1`, which is the protocol the server selects; the credential is never echoed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, generate_key
from api.principal import MARKET_READ, PORTFOLIO_READ
from api.ws import MarketHub
from infra.store.repository import MarketRepository
from tests.api.conftest import new_account, test_api_settings, token_for
from tests.api.test_ws_support import Served, close_code, recv_json, send_json, serve

TS = 1_711_013_400_123_000_000


@pytest.fixture
async def served(repository: MarketRepository, key_repository: ApiKeyRepository) -> AsyncIterator[Served]:
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository)
    async with serve(app, MarketHub()) as s:
        yield s


def new_key(key_repository: ApiKeyRepository, scopes: tuple[str, ...]) -> str:
    key = generate_key()
    key_repository.insert(ApiKeyRecord(key.key_id, new_account("wskey"), key.key_hash, scopes, (), "ws-protocol"))
    return key.key


async def test_a_token_or_a_key_as_subprotocol_opens_the_socket(
    served: Served, key_repository: ApiKeyRepository, new_symbol: Callable[[str], str]
) -> None:
    sym = new_symbol("WP")
    served.hub.publish_trades("binance", sym, Decimal("5"), TS, Decimal("1"))
    credentials = [
        f"entasis.bearer.{token_for(new_account('wsp'), [MARKET_READ])}",
        f"entasis.key.{new_key(key_repository, (MARKET_READ,))}",
    ]
    for credential in credentials:
        async with served.connect(subprotocols=["entasis.v1", credential]) as ws:
            assert ws.subprotocol == "entasis.v1"  # selected; the credential is never echoed
            await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [sym]})
            assert (await recv_json(ws))["type"] == "subscribed"
            assert (await recv_json(ws))["price"] == "5.00000000"


@pytest.mark.parametrize(
    ("offered", "query", "code"),
    [
        (["entasis.v1", "entasis.bearer.not-a-token"], "", 4401),
        (["entasis.v1", "entasis.key.ek_0123456789abcdef_" + "A" * 43], "", 4401),
        (["entasis.v1", "entasis.bearer.{token}"], "?token={token}", 4401),  # the token once, not twice
        (["entasis.v1", "entasis.bearer.{token}", "entasis.bearer.{token}"], "", 4401),
        (["entasis.v1", "entasis.bearer.{narrow}"], "", 4403),  # valid, but without market:read
        (["entasis.v1"], "", 4401),  # the protocol alone is no credential
    ],
)
async def test_refusals_reach_the_browser_as_close_codes(
    served: Served, offered: list[str], query: str, code: int
) -> None:
    token = token_for(new_account("wsp"), [MARKET_READ])
    narrow = token_for(new_account("wsp"), [PORTFOLIO_READ])
    protocols = [p.format(token=token, narrow=narrow) for p in offered]
    async with served.connect(query=query.format(token=token), subprotocols=protocols) as ws:
        # accepted with the protocol the browser offered, so that it sees the close code
        assert ws.subprotocol == "entasis.v1"
        assert await close_code(ws) == code


async def test_a_subprotocol_key_with_a_header_key_is_refused(served: Served, key_repository: ApiKeyRepository) -> None:
    key = new_key(key_repository, (MARKET_READ,))
    async with served.connect(headers={"X-API-Key": key}, subprotocols=["entasis.v1", f"entasis.key.{key}"]) as ws:
        assert await close_code(ws) == 4401
