"""The one place the API is wired: routers, error model, security gate, repositories and the
portfolio bus (the routes reach them through api/deps.py). Tests pass their own repositories (and
settings, and bus) through `create_app`; a served app builds them from settings when it starts.

Middleware, outermost first: MetricsMiddleware (api/metrics.py) -> RequestContextMiddleware (request
id, headers on every response, the 500 envelope) -> OperatorEndpointsMiddleware (`/healthz`,
`/readyz`, `/metrics` behind the allowlist only; api/health.py) -> SecurityMiddleware (address,
allowlist, credentials, rate limit; see api/security.py) -> FastAPI's routing and exception
handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.auth import Authenticator, JwtVerifier
from api.errors import ErrorCode, error_response, install_error_handlers
from api.health import OPERATOR_PATHS, OperatorEndpointsMiddleware, Readiness
from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, ApiKeyVerifier
from api.market_lane import MarketFastLane
from api.market_memory import MemoryMarket
from api.metrics import MetricsMiddleware, build_metrics
from api.openapi_ws import document_websocket
from api.portfolio_repository import KafkaPortfolioBus, clickhouse_snapshots
from api.portfolio_service import PortfolioBus
from api.prediction_memory import LatestPredictions
from api.ratelimit import RateLimiter, build_rate_limiter
from api.read_model import ReadModel
from api.risk_memory import LatestRisk
from api.routes import market, orderbook, portfolio, prediction, records, risk
from api.security import SecurityGate, SecurityMiddleware
from api.webapp import install_webapp
from api.ws import MarketFeed, MarketHub, install_market_websocket
from infra.config.api import ApiSettings
from infra.config.kafka import aiokafka_options
from infra.config.settings import Settings, development_jwt_secret, get_settings, portfolio_signing_key
from infra.store.clickhouse import make_client
from infra.store.repository import MarketRepository, StoreUnavailable
from infra.store.risk_repository import RiskRepository
from streams.core.portfolio import AccountDefaults

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

**Authentication.** `Authorization: Bearer <jwt>` (`sub` = account, `exp` required, `scope` lists
`market:read portfolio:read portfolio:write analysis:read`) or `X-API-Key: <key>`, or both (then
both must be valid and name the same account). Missing or invalid credentials: 401 `AUTH_FAILED`
with `WWW-Authenticate`; a missing scope or a client address outside the allowlist: 403 `FORBIDDEN`.

**Rate limit.** 1000 requests per minute per account (per client address when unauthenticated),
moving window. Every response carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
`X-RateLimit-Reset` (seconds until the window frees a request); a 429 `RATE_LIMITED` also carries
`Retry-After` (at most 60 seconds).
"""

_INT = {"type": "integer", "minimum": 0}
_COMMON_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "Unique id of this request (also `request_id` in error bodies).",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-RateLimit-Limit": {
        "description": "Requests allowed per window (1000 per minute).",
        "required": True,
        "schema": _INT,
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in the current moving window after this one.",
        "required": True,
        "schema": _INT,
    },
    "X-RateLimit-Reset": {
        "description": "Whole seconds until the window frees a request.",
        "required": True,
        "schema": _INT,
    },
}
_STATUS_HEADERS: dict[str, dict[str, dict[str, Any]]] = {
    "401": {
        "WWW-Authenticate": {
            "description": "The accepted schemes (RFC 9110 challenges; RFC 6750 `error` for a bad token).",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    "429": {
        "Retry-After": {
            "description": "Seconds to wait before retrying (1 to 60).",
            "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": 60},
        }
    },
}


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
        document_websocket(schema)  # OpenAPI has no WebSocket operation: described, linked to /asyncapi.json
        # FastAPI documents a 422 on every route with parameters; ours answer validation
        # failures with 400 BAD_REQUEST (422 belongs to PORT_001/PORT_002 only).
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
                ref = str(responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {}))
                if "HTTPValidationError" in ref:
                    del responses["422"]
                _restore_null_details(responses)
                for status, response in responses.items():
                    headers = response.setdefault("headers", {})
                    headers.update(_COMMON_HEADERS)
                    headers.update(_STATUS_HEADERS.get(status, {}))
        component_schemas = schema.get("components", {}).get("schemas", {})
        component_schemas.pop("HTTPValidationError", None)
        component_schemas.pop("ValidationError", None)
        self.openapi_schema = schema
        return schema


def create_app(
    repository: MarketRepository | None = None,
    settings: Settings | None = None,
    api_settings: ApiSettings | None = None,
    *,
    key_repository: ApiKeyRepository | None = None,
    rate_limiter: RateLimiter | None = None,
    dev: bool = False,
    market_hub: MarketHub | None = None,
    portfolio_bus: PortfolioBus | None = None,
) -> FastAPI:
    """The API application.

    `repository`, `key_repository`: used as they are and never closed by the app (the caller owns
    them). When None, they are built from `settings` (default: the process settings) when the app
    starts, with a database client per worker thread, and closed when it stops.

    `portfolio_bus` (or one set on `app.state.portfolio_bus` before the app starts): used as it is,
    never closed by the app. When none is wired, an app that builds its own repository (a served
    app) builds a KafkaPortfolioBus on `settings` when it starts, connecting in the background,
    and closes it when it stops; any other app answers the portfolio routes with 503.

    `dev`: the development relaxations that `entasis api --dev` allows (a known JWT secret when
    none is configured). Whether settings are safe to serve is `api.main.startup_problems`'s call."""
    options = api_settings if api_settings is not None else get_settings().api
    owns_repository = repository is None
    owns_key_repository = key_repository is None

    # A served app (it builds its own repository) consumes the derived topics once for all its
    # WebSocket clients; tests pass their own repository and push into the hub themselves.
    start_feed = market_hub is None and owns_repository

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db_settings = settings if settings is not None else get_settings()
        if owns_repository:
            app.state.repository = RiskRepository(  # market queries plus the analysis tables
                lambda: make_client(db_settings), symbols_ttl_s=options.symbols_cache_seconds
            )
        if owns_key_repository:
            app.state.key_repository = ApiKeyRepository(lambda: make_client(db_settings))
        built_bus = None
        if owns_repository and app.state.portfolio_bus is None:
            built_bus = KafkaPortfolioBus(
                db_settings.kafka_bootstrap,
                db_settings.topic_namespace,
                AccountDefaults.from_settings(db_settings),
                signing_key=portfolio_signing_key(db_settings),  # this app's settings, not the process's
                # start from the agent's snapshots: the replay is bounded, not the topic's length
                snapshots=clickhouse_snapshots(lambda: make_client(db_settings)),
                kafka_options=aiokafka_options(db_settings),
            )
            built_bus.start_in_background()  # its replay of pf.events must not hold up the app's start
            app.state.portfolio_bus = built_bus
        feed = None
        if start_feed:
            # The read model: the market endpoints answer from memory what it covers
            # (api/market_memory.py), from the same consumer as the WebSocket hub.
            read_model = ReadModel()
            app.state.repository.memory = MemoryMarket(read_model, app.state.repository)
            app.state.repository.risk_memory = LatestRisk()  # the risk route's (api/risk_memory.py)
            app.state.repository.prediction_memory = LatestPredictions()  # api/prediction_memory.py
            feed = MarketFeed(db_settings, app.state.market_hub, model=read_model,
                              risk_estimates=app.state.repository.risk_memory,
                              forecasts=app.state.repository.prediction_memory)
            await feed.start()
        app.state.market_feed = feed  # read by /readyz and the metrics
        try:
            yield
        finally:
            app.state.market_feed = None
            if feed is not None:
                await feed.stop()
            if built_bus is not None:
                app.state.portfolio_bus = None
                await built_bus.close()
            for name, owned in (("repository", owns_repository), ("key_repository", owns_key_repository)):
                built = getattr(app.state, name) if owned else None
                if owned:
                    setattr(app.state, name, None)
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
        swagger_ui_parameters={"persistAuthorization": True},
        # Our metrics are Prometheus (api/metrics.py). FastAPI's OpenTelemetry hooks, which nothing
        # configures here, still cost about 5 % of a memory-served request just to find that out.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.repository = repository
    app.state.key_repository = key_repository
    app.state.portfolio_bus = portfolio_bus
    app.state.market_feed = None

    async def lookup_key(key_id: str) -> ApiKeyRecord | None:
        keys: ApiKeyRepository | None = app.state.key_repository
        if keys is None:  # not started, or shutting down
            raise StoreUnavailable("API key store not ready")
        # The query blocks (chdb has no async client): off the event loop, like the routes.
        return await anyio.to_thread.run_sync(keys.get, key_id)

    authenticator = Authenticator(
        # a --dev app without a configured secret: its data directory's random development secret
        JwtVerifier(options, dev=dev,
                    dev_secret=lambda: development_jwt_secret(settings if settings is not None else get_settings())),
        ApiKeyVerifier(lookup_key, ttl_s=options.api_key_cache_seconds),
    )
    limiter = rate_limiter if rate_limiter is not None else build_rate_limiter(options.rate_limit, options.redis_url)
    app.state.gate = SecurityGate(options, authenticator, limiter)
    # Added before the error handlers' RequestContextMiddleware, so that one wraps this one.
    # Innermost: the price and history reads memory covers, answered after the gate without
    # FastAPI's routing (api/market_lane.py); everything else falls through to the routes.
    app.add_middleware(MarketFastLane)
    app.add_middleware(SecurityMiddleware, gate=app.state.gate, public_docs=options.public_docs)
    # Health and metrics: outside the gate (no credentials, no rate limit), behind its allowlist.
    app.state.metrics = build_metrics(app.state)
    app.add_middleware(
        OperatorEndpointsMiddleware,
        resolver=app.state.gate.resolver,
        allowlist=app.state.gate.allowlist,
        readiness=Readiness(app.state, feed_expected=start_feed),
        metrics=app.state.metrics,
    )
    install_error_handlers(app)
    # Added last, so outermost: it sees the status the client gets, the 500 envelope included.
    app.add_middleware(
        MetricsMiddleware,
        metrics=app.state.metrics,
        fixed_paths=OPERATOR_PATHS,
        router_prefixes=(API_PREFIX, ALIAS_PREFIX),
        router=app.router,
    )

    async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("market data store unreachable: %s", exc)
        return error_response(request.scope, ErrorCode.UNAVAILABLE, {"reason": "market data store unreachable"})

    app.add_exception_handler(StoreUnavailable, _store_unavailable)

    for router in (market.router, orderbook.router, records.router, risk.router, prediction.router, portfolio.router):
        app.include_router(router, prefix=API_PREFIX)
        app.include_router(router, prefix=ALIAS_PREFIX, include_in_schema=False)
    install_market_websocket(app, market_hub)
    install_webapp(app)  # the live page at /app (api/webapp.py)
    return app
