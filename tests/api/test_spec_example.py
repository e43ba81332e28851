"""The user's original specification ends with a Python `requests` example. It must work unchanged
against a running server, in the configuration `entasis api` accepts outside development (HTTPS,
a real JWT secret, an allowlist), with only its placeholders filled in: the base URL, the
`your-api-key` string and the `token` variable it leaves undefined."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, generate_key
from api.main import startup_problems, uvicorn_config
from api.portfolio_service import LocalPortfolioBus
from api.principal import KNOWN_SCOPES
from api.tls import self_signed
from infra.dev.processes import free_port
from infra.store.repository import MarketRepository
from tests.api.conftest import NS, Market, TradeRow, new_account, test_api_settings, token_for

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "seed" / "api-specification.txt"

# Verbatim from the seed document (section "REST API Call"), so the test runs where shared/ is
# absent too; where it is present, the two must be identical.
EXAMPLE = """import requests

# Market data retrieval
def get_market_price(symbol):
    url = f"https://api.example.com/v1/market/price/{symbol}"
    headers = {
        "Authorization": f"Bearer {token}",
        "X-API-Key": "your-api-key"
    }
    response = requests.get(url, headers=headers)
    return response.json()

# Position creation
def create_position(symbol, size):
    url = "https://api.example.com/v1/portfolio/positions"
    data = {
        "symbol": symbol,
        "size": size,
        "type": "long"
    }
    response = requests.post(url, json=data, headers=headers)
    return response.json()
"""


def test_embedded_example_is_the_seed_verbatim() -> None:
    if not SEED.exists():  # the copy above is then the reference; nothing else to compare
        return
    blocks = re.findall(r"```python\n(.*?)```", SEED.read_text(encoding="utf-8"), flags=re.S)
    assert blocks == [EXAMPLE]


@pytest.fixture
def https_server(
    repository: MarketRepository, key_repository: ApiKeyRepository, tmp_path: Path
) -> Iterator[tuple[str, Path, Callable[..., Any]]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key)
    options = test_api_settings(tls_cert=cert, tls_key=key, allowlist="127.0.0.1/32, ::1/128")
    assert startup_problems(options, dev=False) == []  # a configuration production accepts
    app = create_app(repository=repository, api_settings=options, key_repository=key_repository)
    app.state.portfolio_bus = LocalPortfolioBus()  # the agent's fold in process: this tier has no broker
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, options, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}", cert, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_original_requests_example_works_unchanged(
    https_server: tuple[str, Path, Any],
    market: Market,
    key_repository: ApiKeyRepository,
    new_symbol: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, cert, _app = https_server
    symbol = new_symbol("SPEC")
    market.trades([TradeRow("binance", symbol, "1", Decimal("65432.10"), Decimal("123.45"), 1_723_161_601 * NS)])
    account = new_account("spec")
    new = generate_key()
    key_repository.insert(ApiKeyRecord(new.key_id, account, new.key_hash, KNOWN_SCOPES))
    # requests verifies certificates; the client trusts our self-signed one the standard way.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))

    code = EXAMPLE.replace("https://api.example.com", base).replace("your-api-key", new.key)
    token = token_for(account)
    namespace: dict[str, Any] = {"token": token}
    exec(compile(code, "api-specification.txt", "exec"), namespace)
    # `create_position` reads a global `headers` the example never defines (only
    # `get_market_price` has a local one); the evident intent is the same two headers.
    namespace["headers"] = {"Authorization": f"Bearer {token}", "X-API-Key": new.key}

    assert namespace["get_market_price"](symbol) == {
        "symbol": symbol,
        "price": "65432.10000000",
        "timestamp": "2024-08-09T00:00:01.000Z",
        "volume": "123.45000000",
        "exchange": "binance",
    }
    assert namespace["get_market_price"](symbol.lower())["symbol"] == symbol

    body = namespace["create_position"](symbol, "1.5")
    assert body["status"] == "success" and body["position_id"]
