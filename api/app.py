"""The one place the API is wired: routers, error model, repository. Tests pass their own
repository through `create_app`; a served app builds one from settings when it starts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.errors import ErrorCode, error_response, install_error_handlers
from api.repository import MarketRepository, StoreUnavailable
from api.routes import market
from api.settings import ApiSettings, get_api_settings
from infra.clickhouse import make_client
from infra.settings import Settings, get_settings

logger = logging.getLogger("api")

API_PREFIX = "/api/v1"
ALIAS_PREFIX = "/v1"  # the original spec's usage example calls /v1/...; served, not documented

TITLE = "Entasis Engine API"
DESCRIPTION = """
Real-time and historical market data (REST) from the Entasis Engine.

* Prices, sizes and volumes are decimal **strings**; timestamps are ISO 8601 UTC with `Z` and
  millisecond precision, in exchange event time.
* Symbols are `BASE-QUOTE` (`BTC-USDT`), case-insensitive on input, upper case on output.
* Every error is `{"error": {"code", "message", "details", "request_id"}}`; `message` is English,
  or Korean when `Accept-Language` prefers `ko`. Every response carries `X-Request-ID`.
* Routes are served under `/api/v1` (and, undocumented, under `/v1` as an alias).
"""


def _api_version() -> str:
    try:
        return version("entasis-engine")
    except PackageNotFoundError:  # running from a checkout that is not pip-installed
        return "0.1.0"


def _restore_null_details(responses: dict[str, Any]) -> None:
    """FastAPI drops None values when it renders the schema, which would make the error
    examples lie about the envelope: `details` is always present, null when there are none."""
    for response in responses.values():
        for media in response.get("content", {}).values():
            for example in media.get("examples", {}).values():
                error = example.get("value", {}).get("error")
                if isinstance(error, dict):
                    error.setdefault("details", None)


class EntasisAPI(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema:
            return self.openapi_schema
        schema = super().openapi()
        # FastAPI documents a 422 on every route with parameters; ours answer validation
        # failures with 400 BAD_REQUEST (422 belongs to PORT_001/PORT_002 only).
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
                ref = str(responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {}))
                if "HTTPValidationError" in ref:
                    del responses["422"]
                _restore_null_details(responses)
        component_schemas = schema.get("components", {}).get("schemas", {})
        component_schemas.pop("HTTPValidationError", None)
        component_schemas.pop("ValidationError", None)
        self.openapi_schema = schema
        return schema


def create_app(
    repository: MarketRepository | None = None,
    settings: Settings | None = None,
    api_settings: ApiSettings | None = None,
) -> FastAPI:
    """The API application.

    `repository`: used as is and never closed by the app (the caller owns it). When None,
    one is built from `settings` (default: the process settings) when the app starts, with
    a database client per worker thread, and closed when it stops."""
    owns_repository = repository is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns_repository:
            db_settings = settings if settings is not None else get_settings()
            options = api_settings if api_settings is not None else get_api_settings()
            app.state.repository = MarketRepository(
                lambda: make_client(db_settings), symbols_ttl_s=options.symbols_cache_seconds
            )
        try:
            yield
        finally:
            if owns_repository:
                built: MarketRepository | None = app.state.repository
                app.state.repository = None
                if built is not None:
                    built.close()

    app = EntasisAPI(
        title=TITLE,
        description=DESCRIPTION,
        version=_api_version(),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.repository = repository
    install_error_handlers(app)

    async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("market data store unreachable: %s", exc)
        return error_response(request.scope, ErrorCode.UNAVAILABLE, {"reason": "market data store unreachable"})

    app.add_exception_handler(StoreUnavailable, _store_unavailable)

    for router in (market.router,):
        app.include_router(router, prefix=API_PREFIX)
        app.include_router(router, prefix=ALIAS_PREFIX, include_in_schema=False)
    return app
