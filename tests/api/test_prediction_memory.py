"""The prediction routes from memory (api/prediction_memory.py): the same bodies as from the store.

Oracle: the store itself. The agent's own events (an AR(1) series run through the real
predictor, tests/api/test_prediction_api.py) are written to `predictions` with the sink's table
and handed to memory as the feed hands them; an app that reads the store and an app with memory
must answer byte for byte alike: stored before memory started, consumed afterwards, consumed
before stored, and the "behind the candles" 503 from final candles memory saw on the topic."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.prediction_memory import LatestPredictions, row_of
from api.ws.feed import apply_candle, apply_prediction
from infra.store.prediction_repository import PredictionRepository
from infra.store.repository import MarketRepository
from schemas.codecs import candles as candle_codec
from schemas.codecs import predictions as prediction_codec
from schemas.events import Candle, Interval
from tests.api.conftest import HOUR, CandleRow, Market, bearer, new_account, test_api_settings, token_for
from tests.api.test_prediction_api import agent_rows, store

D = Decimal


@pytest.fixture(scope="module")
def apps(client_factory: Callable[[], Client], key_repository: ApiKeyRepository) -> Iterator[tuple[FastAPI, FastAPI]]:
    store_repo = MarketRepository(client_factory, symbols_ttl_s=0)
    memory_repo = MarketRepository(client_factory, symbols_ttl_s=0)
    memory_repo.prediction_memory = LatestPredictions()  # type: ignore[attr-defined]
    settings = test_api_settings()
    yield (create_app(repository=store_repo, api_settings=settings, key_repository=key_repository),
           create_app(repository=memory_repo, api_settings=settings, key_repository=key_repository))
    store_repo.close()
    memory_repo.close()


def _get(app: FastAPI, path: str) -> tuple[int, bytes]:
    with TestClient(app, headers=bearer(token_for(new_account()))) as client:
        response = client.get("/api/v1" + path)
    body = response.content
    if response.status_code >= 400:  # an error names its request: the one part that differs by design
        body = body.replace(response.headers["x-request-id"].encode(), b"<id>")
    return response.status_code, body


PATHS = ("/analysis/prediction/{s}", "/analysis/prediction/{s}?timeframe=4h", "/analysis/prediction/{s}/metrics",
         "/analysis/prediction/{s}?model=lstm")


def _same(apps: tuple[FastAPI, FastAPI], symbol: str) -> list[tuple[int, bytes]]:
    answers = []
    for path in PATHS:
        expected = _get(apps[0], path.format(s=symbol))
        assert _get(apps[1], path.format(s=symbol)) == expected, path
        answers.append(expected)
    return answers


def test_memory_answers_as_the_store(apps: tuple[FastAPI, FastAPI], db: Client, market: Market,
                                     new_symbol: Callable[[str], str]) -> None:
    memory: LatestPredictions = apps[1].state.repository.prediction_memory
    symbol = new_symbol("PM")
    preds, outs, bars = agent_rows(symbol, 60)
    cut = len(preds) - 2  # the last candle's forecasts (1h, 4h) arrive after memory "started"
    store(db, market, symbol, preds[:cut], outs, bars)
    first = _same(apps, symbol)
    assert [status for status, _ in first] == [200, 200, 200, 503]  # no lstm forecast anywhere
    assert memory.misses >= 1

    # consumed, not yet stored: memory is fresher (the price route's rule); once stored, equal again
    for p in preds[cut:]:
        apply_prediction(memory, prediction_codec.encode(p))
    assert _get(apps[1], PATHS[0].format(s=symbol)) != _get(apps[0], PATHS[0].format(s=symbol))
    db.insert_arrow("predictions", prediction_codec.predictions_table(preds[cut:]))
    hits = memory.hits
    assert [status for status, _ in _same(apps, symbol)] == [200, 200, 200, 503]
    assert memory.hits > hits

    # a replayed older forecast consumed late changes neither
    apply_prediction(memory, prediction_codec.encode(preds[0]))
    db.insert_arrow("predictions", prediction_codec.predictions_table([preds[0]]))
    _same(apps, symbol)

    # two final candles past the last forecast, seen by memory on the topic and stored: "behind"
    last = bars[-1].open_ns
    later = [CandleRow("binance", symbol, "1h", last + k * HOUR, D(1), D(1), D(1), D(1), D(1)) for k in (1, 2)]
    market.candles(later)
    for row in later:
        candle = Candle(venue="binance", symbol=symbol, interval=Interval.H1, open_ts_ns=row.open_ns, open=D(1),
                        high=D(1), low=D(1), close=D(1), volume=D(1), trades=1, first_trade_id="a",
                        last_trade_id="a", is_final=True, revision=0, event_ts_ns=row.open_ns + HOUR,
                        recv_ts_ns=row.open_ns + HOUR)
        apply_candle(None, candle_codec.encode(candle), None, memory)
    behind = _same(apps, symbol)
    assert behind[0][0] == 503 and b"behind the candles" in behind[0][1]


def test_rows_are_the_stored_rows(db: Client, market: Market, repository: MarketRepository,
                                  new_symbol: Callable[[str], str]) -> None:
    symbol = new_symbol("PQ")
    preds, outs, bars = agent_rows(symbol, 40)
    store(db, market, symbol, preds, outs, bars)
    stored = {(r.model, r.horizon): r for r in PredictionRepository(repository).latest_each(symbol, "binance")}
    latest = {}
    for p in preds:
        latest[(p.model.value, p.horizon.value)] = row_of(p)
    assert latest == stored
