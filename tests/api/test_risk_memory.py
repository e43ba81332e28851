"""The risk route from memory (api/risk_memory.py): the same bodies as from the store.

Oracle: the store itself. Estimates are written to `risk_estimates` through the sink's own
table (schemas/codecs/risk.py, which rounds to 8 places) and given to memory as the feed would
give them; an app without memory (it reads the store) and an app with it must answer byte for
byte alike, including when memory is fresher or holds only some keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import API_PREFIX, create_app
from api.key_repository import ApiKeyRepository
from api.risk_memory import LatestRisk
from api.ws.feed import apply_risk
from infra.store.risk_repository import RiskRepository, RiskRow
from schemas.codecs import risk as risk_codec
from schemas.events import Interval
from schemas.risk import RiskEstimate, RiskMethod
from tests.api.conftest import HOUR, Market, TradeRow, bearer, new_account, token_for
from tests.api.conftest import test_api_settings as secured_api_settings

BASE = 1_704_067_200 * 10**9
D = Decimal


def estimate(symbol: str, method: RiskMethod, as_of: int, var: str) -> RiskEstimate:
    return RiskEstimate(
        venue="binance", symbol=symbol, interval=Interval.H1, method=method, event_ts_ns=as_of, recv_ts_ns=as_of,
        # more places than the store keeps: memory must round as the sink does
        price=D("65000.123456789"), var_95=D(var), expected_shortfall=D(var) * 2, volatility=D("0.51234567891"),
        window=2160,
    )


@pytest.fixture(scope="module")
def apps(client_factory: Callable[[], Client], key_repository: ApiKeyRepository) -> Iterator[tuple[FastAPI, FastAPI]]:
    store_repo = RiskRepository(client_factory, symbols_ttl_s=0)
    memory_repo = RiskRepository(client_factory, symbols_ttl_s=0)
    memory_repo.risk_memory = LatestRisk()  # type: ignore[attr-defined]
    settings = secured_api_settings()
    yield (create_app(repository=store_repo, api_settings=settings, key_repository=key_repository),
           create_app(repository=memory_repo, api_settings=settings, key_repository=key_repository))
    store_repo.close()
    memory_repo.close()


def _get(app: FastAPI, path: str) -> tuple[int, bytes]:
    with TestClient(app, headers=bearer(token_for(new_account(), scopes=["analysis:read"]))) as client:
        response = client.get(API_PREFIX + path)
    return response.status_code, response.content


def test_memory_answers_as_the_store(apps: tuple[FastAPI, FastAPI], db: Client, market: Market,
                                     new_symbol: Callable[[str], str]) -> None:
    store_app, memory_app = apps
    memory: LatestRisk = memory_app.state.repository.risk_memory
    s = new_symbol("RM")
    market.trades([TradeRow("binance", s, "t1", D("65000"), D("1"), BASE + 30 * HOUR)])
    # stored before the API "started": memory never saw these
    old = [estimate(s, RiskMethod.EWMA, BASE + h * HOUR, f"{1000 + h}.123456789") for h in (20, 21)]
    db.insert_arrow("risk_estimates", risk_codec.table(old))
    path = f"/analysis/risk/{s}"
    expected = _get(store_app, path)
    assert expected[0] == 200 and b'"timestamp":"2024-01-01T21:00:00.000Z"' in expected[1].replace(b" ", b"")
    misses = memory.misses
    assert _get(memory_app, path) == expected  # a miss: from the store, then kept
    assert memory.misses == misses + 1
    hits = memory.hits
    assert _get(memory_app, path) == expected  # now from memory
    assert memory.hits == hits + 1

    # consumed and stored afterwards: both answer the newer estimate; an older one consumed late
    # (a replayed message) does not replace it
    newer = estimate(s, RiskMethod.EWMA, BASE + 22 * HOUR, "999.987654321")
    late = estimate(s, RiskMethod.EWMA, BASE + 19 * HOUR, "5.5")
    for e in (newer, late):
        apply_risk(memory, risk_codec.encode(e))
    db.insert_arrow("risk_estimates", risk_codec.table([newer, late]))
    assert _get(memory_app, path) == _get(store_app, path)
    assert b"999.98765432" in _get(memory_app, path)[1]

    # another method: nothing anywhere is 503 from both; stored only is a miss then kept
    assert _get(memory_app, path + "?method=garch")[0] == 503 == _get(store_app, path + "?method=garch")[0]
    db.insert_arrow("risk_estimates", risk_codec.table([estimate(s, RiskMethod.GARCH, BASE + 22 * HOUR, "7")]))
    assert _get(memory_app, path + "?method=garch") == _get(store_app, path + "?method=garch")


def test_rounding_is_the_stores() -> None:
    # oracle: the sink's Arrow table, whose Decimal(38, 8) values are what ClickHouse stores
    e = estimate("BTC-USDT", RiskMethod.HISTORICAL, BASE, "1234.567890125")
    stored = risk_codec.table([e]).to_pylist()[0]
    memory = LatestRisk()
    memory.apply(e)
    row = memory.held(("binance", "BTC-USDT", "historical", "1h"))
    assert row == RiskRow(BASE, stored["price"], stored["var_95"], stored["expected_shortfall"], stored["volatility"],
                          2160)
    assert str(row.var_95) == "1234.56789012"  # half-even, as Decimal.quantize in the sink


def test_newest_as_of_wins_whatever_the_order() -> None:
    memory = LatestRisk()
    key = ("v", "S-T", "ewma", "1h")
    rows = [RiskRow(t, D(1), D(t), D(t), D(0), 1) for t in (5, 9, 7)]
    for row in rows:
        memory.offer(key, row)
    held = memory.held(key)
    assert held is not None and held.as_of_ns == 9

    class Store:
        calls = 0

        def latest_risk(self, symbol: str, venue: str, method: str, interval: str) -> RiskRow | None:
            self.calls += 1
            return None

    store = Store()
    assert memory.latest_risk(store, "S-T", "v", "garch", "1h") is None
    assert memory.latest_risk(store, "S-T", "v", "garch", "1h") is None
    assert store.calls == 2  # "none yet" is never kept: an estimate may be stored any moment
