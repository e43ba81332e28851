"""`/healthz`, `/readyz` and `/metrics`: the operator's endpoints (README, "Health and metrics";
docs/decisions.md, "Health" says why they take no credentials). Also `/asyncapi.json`, the
consumers' contract (docs/asyncapi.yaml, built from schemas/contract.py), as public as
`/openapi.json`.

Answered by a plain ASGI middleware that sits inside RequestContextMiddleware (so responses still
carry `X-Request-ID`) and outside SecurityMiddleware: probes and scrapers hold no credentials and
must not spend a rate-limit budget, or a busy client address would make its own load balancer
think the API is down. They still sit behind the deployment allowlist, checked here by the
gate's own address check (`api.security.address_error`, with the gate's resolver and address
set), so the client address is decided and refused exactly as for any route.

- `/healthz`: the process answers; nothing else is checked (a liveness probe must not restart an
  API because its database is away).
- `/readyz`: the database answers a trivial query (off the event loop, with a timeout) and the
  market feed consumer is consuming; 200 when every check passes, 503 otherwise, with each check
  and its state in the body either way. Failure reasons are logged, never sent: the body is for
  probes, and exception texts can name hosts.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import ErrorCode, error_response
from api.metrics import CONTENT_TYPE, METRICS_PATH, ApiMetrics
from api.network import AddressSet, ClientAddressResolver
from api.security import address_error

logger = logging.getLogger("api.health")

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
ASYNCAPI_PATH = "/asyncapi.json"
OPERATOR_PATHS = frozenset({HEALTH_PATH, READY_PATH, METRICS_PATH, ASYNCAPI_PATH})

DATABASE_TIMEOUT_S = 2.0  # a probe that waits longer than its own timeout learns nothing


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    state: str

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "state": self.state}


def _ping_database(repository: Any) -> None:
    # The repositories have no public ping; `_rows` is their one query path, so this goes
    # through the same per-thread client and the same StoreUnavailable translation as a route.
    repository._rows("SELECT 1", {})


class Readiness:
    """The checks behind `/readyz`, read from `app.state` when asked: the repository is built
    when a served app starts, and the feed exists only while it runs.

    `feed_expected`: whether this app runs a market feed (a served app does; tests that push
    into the hub themselves do not, and then the check reports `disabled` and passes)."""

    def __init__(
        self,
        app_state: Any,
        *,
        feed_expected: bool,
        ping: Callable[[Any], None] = _ping_database,
        timeout_s: float = DATABASE_TIMEOUT_S,
    ) -> None:
        self.app_state = app_state
        self.feed_expected = feed_expected
        self.ping = ping
        self.timeout_s = timeout_s

    async def checks(self) -> list[Check]:
        return [await self._database(), self._market_feed()]

    async def _database(self) -> Check:
        repository = getattr(self.app_state, "repository", None)
        if repository is None:
            return Check("database", False, "not_started")
        try:
            # chdb and clickhouse-connect block: off the loop. A hung query is abandoned (its
            # thread finishes on its own) so the probe gets its answer in time.
            with anyio.fail_after(self.timeout_s):
                await anyio.to_thread.run_sync(self.ping, repository, abandon_on_cancel=True)
        except TimeoutError:
            logger.warning("readiness: the database did not answer within %.1f s", self.timeout_s)
            return Check("database", False, "timeout")
        except Exception as exc:  # StoreUnavailable, or anything else: not ready either way
            logger.warning("readiness: database unreachable: %s", exc)
            return Check("database", False, "unreachable")
        return Check("database", True, "reachable")

    def _market_feed(self) -> Check:
        if not self.feed_expected:
            return Check("market_feed", True, "disabled")
        feed = getattr(self.app_state, "market_feed", None)
        state = feed.state if feed is not None else "stopped"
        return Check("market_feed", state == "consuming", state)


@functools.cache
def _asyncapi_json() -> bytes:
    """Built once per process from the same declarations as docs/asyncapi.yaml (a test checks the
    file against them), so the served contract is the committed one."""
    from schemas.contract import asyncapi_document

    return json.dumps(asyncapi_document()).encode()


class OperatorEndpointsMiddleware:
    """Answers the operator paths and the AsyncAPI document (GET or HEAD) after the allowlist check; passes every
    other request on untouched."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        resolver: ClientAddressResolver,
        allowlist: AddressSet,
        readiness: Readiness,
        metrics: ApiMetrics,
    ) -> None:
        self.app = app
        self.resolver = resolver
        self.allowlist = allowlist
        self.readiness = readiness
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in OPERATOR_PATHS:
            await self.app(scope, receive, send)
            return
        response = self._refusal(scope) or await self._answer(scope)
        await response(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        """The gate's answers for an address it would refuse (its own check: same codes, same envelope)."""
        _, error = address_error(self.resolver, self.allowlist, scope)
        if error is not None:
            return error_response(scope, error.code, error.details, error.status, error.headers)
        if scope["method"] not in ("GET", "HEAD"):
            return error_response(scope, ErrorCode.METHOD_NOT_ALLOWED, None, 405, {"Allow": "GET, HEAD"})
        return None

    async def _answer(self, scope: Scope) -> Response:
        path = scope["path"]
        if path == HEALTH_PATH:
            return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})
        if path == ASYNCAPI_PATH:
            return Response(
                _asyncapi_json(), media_type="application/json", headers={"Cache-Control": "public, max-age=3600"}
            )
        if path == METRICS_PATH:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
        checks = await self.readiness.checks()
        ready = all(c.ok for c in checks)
        body = {"status": "ok" if ready else "unavailable", "checks": {c.name: c.as_json() for c in checks}}
        return JSONResponse(body, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})
