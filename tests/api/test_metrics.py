"""`/metrics`: every metric the README names is exposed; the request counter and the latency
histogram move by exactly the requests made (counted here, by the test); 429s, 500s and
WebSocket sessions show up; client-chosen paths and methods never become label values.

Scrapes are parsed with prometheus_client's own text parser, not with code under test."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.ratelimit import MemoryRateLimiter
from tests.api.conftest import bearer, new_account, new_address, test_api_settings, token_for
from tests.api.test_health import SwitchableRepository
from tests.api.test_ws_support import recv_json, send_json, serve

README = Path(__file__).resolve().parents[2] / "README.md"
CHEAP = "/market/price/BTC$USDT"  # 400 MARKET_001 before any query: routed, no database

Labels = tuple[tuple[str, str], ...]


def scrape(client: TestClient) -> dict[str, dict[Labels, float]]:
    """sample name -> {sorted labels -> value}"""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def requests_by_label(samples: dict[str, dict[Labels, float]]) -> Counter[tuple[str, str, str]]:
    counts: Counter[tuple[str, str, str]] = Counter()
    for labels, value in samples.get("entasis_api_requests_total", {}).items():
        d = dict(labels)
        counts[(d["route"], d["method"], d["status"])] = int(value)
    return counts


def readme_metric_names() -> set[str]:
    """The metric names in the README's "Health and metrics" section (as Prometheus exposes them)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Health and metrics")
    end = text.find("\n## ", start + 1)
    return set(re.findall(r"`(entasis_api_[a-z_]+)", text[start : end if end != -1 else None]))


def _app(**kwargs: Any) -> FastAPI:
    return create_app(
        repository=SwitchableRepository(),
        api_settings=test_api_settings(),
        key_repository=ApiKeyRepository(lambda: None),  # type: ignore[arg-type,return-value]  # never queried
        **kwargs,
    )


@pytest.fixture
def app() -> FastAPI:
    return _app()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, client=(new_address(), 1), raise_server_exceptions=False) as c:
        yield c


def test_every_metric_in_the_readme_is_exposed(client: TestClient) -> None:
    documented = readme_metric_names()
    assert len(documented) >= 8, documented  # the section exists and names them
    client.get("/healthz")  # so the labelled request series have a sample
    exposed = set(scrape(client))
    # Histograms and counters are documented by their family name; Prometheus adds suffixes.
    missing = {name for name in documented if not {name, name + "_count", name + "_total"} & exposed}
    assert not missing, missing


def test_request_counter_moves_by_exactly_the_requests_made(client: TestClient) -> None:
    token = bearer(token_for(new_account()))
    made: Counter[tuple[str, str, str]] = Counter()

    def call(path: str, template: str, status: int, **kwargs: Any) -> None:
        response = client.get(path, **kwargs)
        assert response.status_code == status, (path, response.text)
        made[(template, "GET", str(status))] += 1

    before = scrape(client)
    for _ in range(3):
        call("/openapi.json", "/openapi.json", 200)
    for _ in range(2):
        call("/api/v1" + CHEAP, "/api/v1/market/price/{symbol}", 400, headers=token)
    call("/v1" + CHEAP, "/v1/market/price/{symbol}", 400, headers=token)  # the alias keeps its own template
    call("/api/v1/market/price/BTC-USDT", "/api/v1/market/price/{symbol}", 401)  # routed, then no credentials
    call("/healthz", "/healthz", 200)
    call("/no/such/path", "unmatched", 404)
    after = scrape(client)

    made[("/metrics", "GET", "200")] += 1  # the first scrape is counted once it has answered
    moved = requests_by_label(after) - requests_by_label(before)
    assert moved == made
    assert sum(moved.values()) == 10

    # One latency observation per request, under the same template.
    def observed(samples: dict[str, dict[Labels, float]], route: str) -> float:
        return samples.get("entasis_api_request_duration_seconds_count", {}).get((("route", route),), 0.0)

    for route in ("/openapi.json", "/api/v1/market/price/{symbol}", "/v1/market/price/{symbol}", "unmatched"):
        expected = sum(n for (r, _, _), n in made.items() if r == route)
        assert observed(after, route) - observed(before, route) == expected, route


def test_a_429_counts_as_a_refusal() -> None:
    app = _app(rate_limiter=MemoryRateLimiter("2/minute"))
    with TestClient(app, client=(new_address(), 1)) as c:
        statuses = [c.get("/openapi.json").status_code for _ in range(5)]
        samples = scrape(c)  # not rate limited itself
    assert statuses == [200, 200, 429, 429, 429]
    assert samples["entasis_api_rate_limited_total"][()] == 3
    # Refused before routing: no template to name.
    assert requests_by_label(samples)[("unmatched", "GET", "429")] == 3


def test_an_unhandled_error_counts_as_the_500_the_client_got(app: FastAPI, client: TestClient) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    assert client.get("/boom").status_code == 500
    assert requests_by_label(scrape(client))[("/boom", "GET", "500")] == 1


def test_client_chosen_paths_and_methods_are_not_labels(client: TestClient) -> None:
    for i in range(3):
        client.get(f"/random-{i}")
    client.request("BREW", "/healthz")
    labels = requests_by_label(scrape(client))
    assert not [route for route, _, _ in labels if route.startswith("/random")]
    assert labels[("unmatched", "GET", "404")] == 3
    assert [m for _, m, _ in labels if m not in {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}] == [
        "other"
    ]


async def test_websocket_sessions_and_hub_updates(app: FastAPI) -> None:
    # A real server: the session must be open in the app while the test scrapes it.
    async with serve(app) as served, httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as http:

        async def sessions_and_updates() -> tuple[float, float]:
            response = await http.get("/metrics")
            assert response.status_code == 200
            samples = {s.name: s.value for f in text_string_to_metric_families(response.text) for s in f.samples}
            return samples["entasis_api_websocket_sessions"], samples["entasis_api_websocket_updates_total"]

        assert await sessions_and_updates() == (0, 0)
        served.hub.publish_trades("binance", "MX-USDT", Decimal("100"), 1_711_013_400_123_000_000, Decimal("1"))
        async with served.connect(token_for(new_account())) as ws:
            await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": ["MX-USDT"]})
            assert (await recv_json(ws))["type"] == "subscribed"
            assert (await recv_json(ws))["symbol"] == "MX-USDT"  # open, subscribed, served
            assert await sessions_and_updates() == (1, 1)
        # The server forgets the session once it has seen the close; wait for that, boundedly.
        for _ in range(500):
            if (await sessions_and_updates())[0] == 0:
                break
            await asyncio.sleep(0.01)
        assert await sessions_and_updates() == (0, 1)
