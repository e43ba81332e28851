"""/portfolio endpoints against the embedded database for prices, with the portfolio agent's
own decisions in process (LocalPortfolioBus): every contract error code, the check order, marking
to market, closing, idempotency, ownership and the retryable 503."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import API_PREFIX, create_app
from api.key_repository import ApiKeyRepository
from api.portfolio_service import BusTimeout, LocalPortfolioBus, PortfolioBus, PortfolioCommand
from api.principal import PORTFOLIO_READ
from infra.store.repository import MarketRepository
from schemas.portfolio import PortfolioEvent
from streams.core.portfolio import AccountDefaults
from tests.api.conftest import Market, TradeRow, bearer, error_of, new_account, test_api_settings, token_for

P = f"{API_PREFIX}/portfolio"
DEFAULTS = AccountDefaults(balance=D("10000"), max_open_positions=3, max_symbol_notional=D("200000"))
_ts = itertools.count(1)


def portfolio_app(repository: MarketRepository, key_repository: ApiKeyRepository, bus: PortfolioBus) -> FastAPI:
    return create_app(repository=repository, api_settings=test_api_settings(), key_repository=key_repository,
                      portfolio_bus=bus)


@pytest.fixture
def bus() -> LocalPortfolioBus:
    return LocalPortfolioBus(DEFAULTS)


@pytest.fixture
def papp(repository: MarketRepository, key_repository: ApiKeyRepository, bus: LocalPortfolioBus) -> FastAPI:
    return portfolio_app(repository, key_repository, bus)


@pytest.fixture
def client(papp: FastAPI, account: str) -> Iterator[TestClient]:
    with TestClient(papp, headers=bearer(token_for(account))) as c:
        yield c


@pytest.fixture
def priced(market: Market, new_symbol: Callable[[str], str]) -> Callable[[str], str]:
    """A new symbol whose latest trade is at `price`; call `trade(symbol, price)` to move it."""

    def make(price: str) -> str:
        symbol = new_symbol("PF")
        trade(market, symbol, price)
        return symbol

    return make


def trade(market: Market, symbol: str, price: str) -> None:
    n = next(_ts)
    market.trades([TradeRow("binance", symbol, f"t{n}", D(price), D("1"), time.time_ns() + n)])


def order(symbol: str, size: str = "1", kind: str = "long", leverage: str | None = None) -> dict[str, str]:
    body = {"symbol": symbol, "size": size, "type": kind}
    if leverage is not None:
        body["leverage"] = leverage
    return body


def test_open_mark_and_close_a_long_and_a_short(client: TestClient, market: Market,
                                                priced: Callable[[str], str]) -> None:
    btc, eth = priced("4000"), priced("200")
    r = client.post(f"{P}/positions", json=order(btc, "1.5", "long", "2"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"position_id", "status", "timestamp"} and body["status"] == "success"
    assert body["timestamp"].endswith("Z")
    short = client.post(f"{P}/positions", json=order(eth.lower(), "10", "short"))
    assert short.status_code == 201

    trade(market, btc, "4100")
    trade(market, eth, "210")
    positions = {p["symbol"]: p for p in client.get(f"{P}/positions").json()["positions"]}
    assert positions[btc] == {
        "position_id": body["position_id"], "symbol": btc, "type": "long", "size": "1.50000000",
        "leverage": "2.00000000", "entry_price": "4000.00000000", "current_price": "4100.00000000",
        "pnl": "150.00000000", "timestamp": body["timestamp"],
    }
    assert positions[eth]["pnl"] == "-100.00000000" and positions[eth]["leverage"] == "1.00000000"

    balance = client.get(f"{P}/balance").json()
    # margin 1.5 × 4000 ÷ 2 = 3000 plus 10 × 200 = 2000
    assert (balance["balance"], balance["used_margin"], balance["free_balance"]) == (
        "10000.00000000", "5000.00000000", "5000.00000000")
    assert (balance["unrealized_pnl"], balance["equity"], balance["open_positions"]) == (
        "50.00000000", "10050.00000000", 2)

    closed = client.delete(f"{P}/positions/{short.json()['position_id']}")
    assert closed.status_code == 200, closed.text
    assert closed.json()["pnl"] == "-100.00000000" and closed.json()["exit_price"] == "210.00000000"
    balance = client.get(f"{P}/balance").json()
    assert (balance["balance"], balance["used_margin"], balance["open_positions"]) == (
        "9900.00000000", "3000.00000000", 1)
    again = client.delete(f"{P}/positions/{short.json()['position_id']}")
    assert again.status_code == 404 and error_of(again)["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"symbol": "BTC-USDT", "size": "0", "type": "long"}, "size"),
        ({"symbol": "BTC-USDT", "size": "-1", "type": "long"}, "size"),
        ({"symbol": "BTC-USDT", "size": "NaN", "type": "long"}, "size"),
        ({"symbol": "BTC-USDT", "size": "1", "type": "sideways"}, "type"),
        ({"symbol": "BTC-USDT", "size": "1", "type": "long", "leverage": "0.5"}, "leverage"),
        ({"symbol": "BTC-USDT", "size": "1", "type": "long", "leverage": "101"}, "leverage"),
        ({"size": "1", "type": "long"}, "symbol"),
        ({"symbol": "BTC-USDT", "type": "long"}, "size"),
    ],
)
def test_shape_errors_are_400_bad_request(client: TestClient, body: dict[str, str], field: str) -> None:
    r = client.post(f"{P}/positions", json=body)
    assert r.status_code == 400
    error = error_of(r)
    assert error["code"] == "BAD_REQUEST"
    assert any(field in e["field"] for e in error["details"]["errors"])  # type: ignore[index]


def test_symbol_errors_and_shape_before_symbol(client: TestClient) -> None:
    malformed = client.post(f"{P}/positions", json=order("BTC$USDT"))
    assert malformed.status_code == 400 and error_of(malformed)["code"] == "MARKET_001"
    unknown = client.post(f"{P}/positions", json=order("XYZQ-USDT"))
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "MARKET_001"
    both = client.post(f"{P}/positions", json=order("BTC$USDT", size="0"))
    assert both.status_code == 400 and error_of(both)["code"] == "BAD_REQUEST"


def test_margin_before_limits(client: TestClient, priced: Callable[[str], str]) -> None:
    symbol = priced("1000")
    far = client.post(f"{P}/positions", json=order(symbol, "1000000"))
    assert far.status_code == 422
    error = error_of(far)
    assert error["code"] == "PORT_001" and error["message"] == "Insufficient balance"
    assert error["details"] == {"required_margin": "1000000000.00000000", "free_balance": "10000.00000000"}
    ko = client.post(f"{P}/positions", json=order(symbol, "1000000"), headers={"Accept-Language": "ko"})
    assert error_of(ko)["message"] == "잔액 부족"
    # notional 1000 × 250 = 250000 > 200000 with a margin that fits (2500 at 100x): PORT_002
    notional = client.post(f"{P}/positions", json=order(symbol, "250", leverage="100"))
    assert notional.status_code == 422 and error_of(notional)["code"] == "PORT_002"
    for _ in range(3):
        assert client.post(f"{P}/positions", json=order(symbol, "0.1")).status_code == 201
    count = client.post(f"{P}/positions", json=order(symbol, "0.1"))
    assert count.status_code == 422 and error_of(count)["code"] == "PORT_002"
    assert error_of(count)["details"] == {"limit": "max_open_positions", "max": "3"}


def test_idempotency_key_returns_the_first_response_even_after_a_restart(
    papp: FastAPI, repository: MarketRepository, key_repository: ApiKeyRepository, bus: LocalPortfolioBus,
    account: str, market: Market, priced: Callable[[str], str],
) -> None:
    symbol = priced("100")
    headers = {**bearer(token_for(account)), "Idempotency-Key": "order-1"}
    with TestClient(papp, headers=headers) as c:
        first = c.post(f"{P}/positions", json=order(symbol, "2"))
        trade(market, symbol, "150")  # a retry sees another price: still the first answer
        retry = c.post(f"{P}/positions", json=order(symbol, "2.0"))
        assert first.status_code == retry.status_code == 201 and first.json() == retry.json()
        conflict = c.post(f"{P}/positions", json=order(symbol, "3"))
        assert conflict.status_code == 409 and error_of(conflict)["code"] == "IDEMPOTENCY_CONFLICT"
        big = c.post(f"{P}/positions", json=order(symbol, "9999"), headers={"Idempotency-Key": "order-2"})
        assert big.status_code == 422
    # a new API process: the answers come from the agent's state, which the events rebuild
    with TestClient(portfolio_app(repository, key_repository, bus), headers=headers) as c:
        again = c.post(f"{P}/positions", json=order(symbol, "2"))
        assert again.status_code == 201 and again.json() == first.json()
        big_again = c.post(f"{P}/positions", json=order(symbol, "9999"), headers={"Idempotency-Key": "order-2"})
        assert big_again.status_code == 422 and error_of(big_again)["details"] == error_of(big)["details"]
        assert len(c.get(f"{P}/positions").json()["positions"]) == 1


def test_a_feed_marked_down_refuses_orders_until_the_next_trade(client: TestClient, market: Market,
                                                                priced: Callable[[str], str]) -> None:
    # The rule of GET /market/price: no order fills at a price the market data API would refuse to show.
    symbol = priced("100")
    opened = client.post(f"{P}/positions", json=order(symbol))
    assert opened.status_code == 201, opened.text
    down_ns = time.time_ns() + 10**9 + 234 * 10**6  # after every trade so far
    market.quality("binance", symbol, "feed_disconnected", down_ns)
    since = f"{datetime.fromtimestamp(down_ns // 10**9, UTC):%Y-%m-%dT%H:%M:%S}.{down_ns // 10**6 % 1000:03d}Z"
    for refused in (client.post(f"{P}/positions", json=order(symbol)),
                    client.delete(f"{P}/positions/{opened.json()['position_id']}")):
        assert refused.status_code == 503
        error = error_of(refused)
        assert error["code"] == "MARKET_002"
        assert error["details"] == {"symbol": symbol, "exchange": "binance", "state": "feed_disconnected",
                                    "since": since}
    assert client.get(f"{P}/balance").json()["open_positions"] == 1  # nothing was decided
    market.trades([TradeRow("binance", symbol, "after-the-mark", D("101"), D("1"), down_ns + 1)])
    closed = client.delete(f"{P}/positions/{opened.json()['position_id']}")
    assert closed.status_code == 200 and closed.json()["exit_price"] == "101.00000000"


def test_concurrent_orders_that_fit_alone_but_not_together(papp: FastAPI, account: str,
                                                            priced: Callable[[str], str]) -> None:
    symbol = priced("6000")  # 6000 each against 10000
    results: list[int] = []
    with TestClient(papp, headers=bearer(token_for(account))) as c:
        barrier = threading.Barrier(2)

        def post() -> None:
            barrier.wait()
            results.append(c.post(f"{P}/positions", json=order(symbol)).status_code)

        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results) == [201, 422]


def test_an_account_sees_and_closes_only_its_own_positions(papp: FastAPI, client: TestClient,
                                                           priced: Callable[[str], str]) -> None:
    position_id = client.post(f"{P}/positions", json=order(priced("10"))).json()["position_id"]
    with TestClient(papp, headers=bearer(token_for(new_account()))) as other:
        assert other.get(f"{P}/positions").json() == {"positions": []}
        stolen = other.delete(f"{P}/positions/{position_id}")
        assert stolen.status_code == 404 and error_of(stolen)["code"] == "NOT_FOUND"
        fresh = other.get(f"{P}/balance").json()
        assert fresh["balance"] == "10000.00000000" and fresh["open_positions"] == 0
    assert len(client.get(f"{P}/positions").json()["positions"]) == 1
    with TestClient(papp, headers=bearer(token_for(new_account(), scopes=[PORTFOLIO_READ]))) as reader:
        denied = reader.post(f"{P}/positions", json=order("BTC-USDT"))
        assert denied.status_code == 403 and error_of(denied)["code"] == "FORBIDDEN"
        assert reader.delete(f"{P}/positions/{position_id}").status_code == 403


class StalledBus(LocalPortfolioBus):
    async def submit(self, command: PortfolioCommand, timeout_s: float) -> PortfolioEvent:
        raise BusTimeout(command.command_id)


def test_no_answer_in_time_is_a_retryable_503(repository: MarketRepository, key_repository: ApiKeyRepository,
                                              account: str, priced: Callable[[str], str]) -> None:
    app = portfolio_app(repository, key_repository, StalledBus(DEFAULTS))
    with TestClient(app, headers=bearer(token_for(account))) as c:
        r = c.post(f"{P}/positions", json=order(priced("10")), headers={"Idempotency-Key": "k"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert error_of(r)["code"] == "UNAVAILABLE"


def test_unauthenticated_is_401(papp: FastAPI) -> None:
    with TestClient(papp) as c:
        assert c.get(f"{P}/positions").status_code == 401


def test_openapi_documents_the_portfolio_routes_and_their_errors(papp: FastAPI) -> None:
    paths = papp.openapi()["paths"]
    post = paths[f"{P}/positions"]["post"]
    assert set(post["responses"]) >= {"201", "400", "404", "409", "422", "503", "401", "403", "429"}
    assert "PORT_001" in str(post["responses"]["422"]) and "PORT_002" in str(post["responses"]["422"])
    assert "Idempotency-Key" in str(post["parameters"])
    assert {"get"} <= set(paths[f"{P}/balance"]) and {"delete"} <= set(paths[f"{P}/positions/{{position_id}}"])
