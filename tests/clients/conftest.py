"""The Python client (clients/python, package `entasis_client`) against the real API.

The API tier's fixtures (tests/api/conftest.py: migrated database, repositories, rows written the
way the sink writes them, tokens) are imported here, with one change: the database. chdb opens one
engine path per process and the API tier's session already holds one, so these tests use the
embedded database the way `entasis up` does, through its owner process over HTTP
(`python -m infra.dev.chdb_server`), or the server named by ENTASIS_TEST_CLICKHOUSE_URL.

Apps are served by a real uvicorn on a free loopback port: in a thread (`serve_http`) for the
sync client, which blocks, and in the test's own loop (tests/api/test_ws_support.py `serve`) for
WebSocket tests that push into the hub."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

try:
    import entasis_client  # noqa: F401
except ImportError as missing:  # a clear word instead of a collection error in every module
    raise ImportError("tests/clients need the client package: .venv/bin/pip install -e clients/python") from missing

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.portfolio_service import LocalPortfolioBus
from api.ws.server_protocol import SendManyWebSocketProtocol
from infra.config.api import ApiSettings
from infra.store.clickhouse import client_for_url
from infra.store.repository import MarketRepository
from tests.api.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    client_factory,
    db,
    key_repository,
    market,
    new_symbol,
    repository,
    test_api_settings,
)
from tests.api.test_ws_support import free_port
from tests.integration.chdb_fixture import start_chdb_server


@pytest.fixture(scope="session")
def db_location(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(url, database): a database of the client tests' own, on a database server process."""
    external = os.environ.get("ENTASIS_TEST_CLICKHOUSE_URL")
    database = f"entasis_clients_{uuid.uuid4().hex[:8]}"
    if external:
        client_for_url(external).command(f"CREATE DATABASE IF NOT EXISTS {database}")
        yield external, database
        client_for_url(external).command(f"DROP DATABASE IF EXISTS {database}")
        return
    root = tmp_path_factory.mktemp("clients-chdb")
    server = start_chdb_server(root / "chdb", root / "chdb.log")
    try:
        client_for_url(server.url).command(f"CREATE DATABASE IF NOT EXISTS {database}")
        yield server.url, database
    finally:
        server.stop()


@contextlib.contextmanager
def serve_http(app: FastAPI, **config: Any) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread of its own; yields the base URL (https when
    `ssl_certfile` is given)."""
    port = free_port()
    # The API's own WebSocket protocol, as `entasis api` serves (api/main.py uvicorn_config).
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on", "ws": SendManyWebSocketProtocol}
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    scheme = "https" if options.get("ssl_certfile") else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def make_app(
    repository: MarketRepository,  # noqa: F811
    key_repository: ApiKeyRepository,  # noqa: F811
    settings: ApiSettings | None = None,
) -> FastAPI:
    app = create_app(
        repository=repository, api_settings=settings or test_api_settings(), key_repository=key_repository
    )
    app.state.portfolio_bus = LocalPortfolioBus()  # the in-process bus: no broker in the API tier
    return app


@pytest.fixture(scope="module")
def api_app(repository: MarketRepository, key_repository: ApiKeyRepository) -> FastAPI:  # noqa: F811
    return make_app(repository, key_repository)


@pytest.fixture(scope="module")
def base_url(api_app: FastAPI) -> Iterator[str]:
    """The module's app over plain HTTP on loopback."""
    with serve_http(api_app) as url:
        yield url


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certificate, key): a self-signed certificate for 127.0.0.1, as `entasis up` makes."""
    from api.tls import self_signed

    root = tmp_path_factory.mktemp("clients-tls")
    cert, key = root / "cert.pem", root / "key.pem"
    self_signed(cert, key)
    return cert, key
