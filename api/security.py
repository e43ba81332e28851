"""The security gate every request passes before routing, and the scope check routes declare.

Order, for every HTTP request (and, through `SecurityGate.admit`, for a WebSocket handshake):

1. client address: the TCP peer, or from `X-Forwarded-For` when the peer is a trusted proxy
   (api/network.py); a trusted proxy that forwards garbage gets 400 `BAD_REQUEST`;
2. deployment allowlist: an address outside it gets 403 `FORBIDDEN` (when no allowlist is
   configured, which only a `--dev` server accepts, every address passes);
3. address budget (`ENTASIS_API_ADDRESS_BUDGET`, default 6000/minute): a cheap flood cap counted
   in this process for every request of the address, authenticated or not, before anything
   else costs work; over it, 429 `RATE_LIMITED` at once, credentials unread;
4. credentials: whatever is sent is verified (api/auth.py), on every path, public ones included;
   invalid credentials get 401 `AUTH_FAILED`, a key used outside its own allowlist 403. Tokens
   cost CPU only (and a valid one is cached). An API key the cache cannot answer for costs a
   store query, so that query is paid first from the address's rate limit (step 5): an address
   over its limit gets 429 without a query, whatever keys it sends, and concurrent requests
   for one key id share one query (api/keys.py);
5. rate limit (api/ratelimit.py): counted per account once authenticated, per client address
   otherwise, so failed and unauthenticated attempts spend the address's budget, never the
   account's (a request whose key lookup the address already paid for is not counted against
   the address twice); over the limit, 429 `RATE_LIMITED` whatever else was wrong;
6. request body (HTTP): a body over `ENTASIS_API_MAX_BODY_BYTES` (64 KiB) gets 413, one that does
   not arrive within `ENTASIS_API_RECEIVE_TIMEOUT_SECONDS` 408, both `BAD_REQUEST` and before
   the route runs; the body is read here only after the gate admitted the request;
7. routing; a route that needs a scope (`require_scope`) answers 401 when the request carried no
   credentials and 403 when they lack the scope.

Every response, errors included (even a 500), carries `X-RateLimit-Limit`, `-Remaining`, `-Reset`
and `X-Request-ID`; a 429 also `Retry-After`; HTTPS responses `Strict-Transport-Security`.

Public endpoints: `/docs`, `/docs/oauth2-redirect` and `/openapi.json` need no credentials by
default (`ENTASIS_API_PUBLIC_DOCS=true`): the schema describes the API, it is no secret, and a
developer must be able to read it before holding a key. They still sit behind the allowlist and
the rate limit, and credentials sent to them are still checked. `ENTASIS_API_PUBLIC_DOCS=false`
makes them require valid credentials (any scope). Unknown paths and wrong methods answer 404 and
405 without credentials: the route table is public through the schema anyway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from limits import parse as parse_limit
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Authenticator, Credentials, address_forbidden, auth_failed, insufficient_scope
from api.errors import ApiError, ErrorCode, error_response, response_headers
from api.keys import BeforeLookup
from api.network import AddressSet, ClientAddressResolver, IPAddress, MalformedForwardedFor
from api.principal import Principal
from api.ratelimit import RateDecision, RateLimiter
from infra.config.api import ApiSettings
from infra.store.repository import StoreUnavailable

# The answers every protected route can give besides its own (for `openapi_error_responses`).
SECURITY_ERRORS: dict[int, list[ErrorCode]] = {
    401: [ErrorCode.AUTH_FAILED],
    403: [ErrorCode.FORBIDDEN],
    429: [ErrorCode.RATE_LIMITED],
}
logger = logging.getLogger("api.security")

DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json"})
HSTS = "max-age=31536000; includeSubDomains"


@dataclass(frozen=True, slots=True)
class Admission:
    """The gate's verdict on one request or WebSocket handshake. `token_valid_until`: when a token
    was among the credentials, the moment (epoch seconds) it stops being accepted."""

    principal: Principal | None
    client_ip: IPAddress | None
    rate: RateDecision
    error: ApiError | None
    token_valid_until: float | None = None


class AddressBudget:
    """Requests per client address per fixed window, counted in this process: a flood cap that
    costs a dictionary lookup, checked before the shared limiter (which may be a Redis round trip)
    and before any credential. Fixed windows may let twice the amount through across a window
    boundary, which is fine for a cap meant to stop floods, not to meter use.

    At most `max_addresses` addresses are tracked; beyond that the least recently seen one is
    forgotten (an attacker would need that many addresses at once to reset a counter this way)."""

    def __init__(
        self, limit: str, *, clock: Callable[[], float] = time.monotonic, max_addresses: int = 100_000
    ) -> None:
        item = parse_limit(limit)
        self.amount = item.amount
        self.window_s = float(item.get_expiry())
        self._clock = clock
        self._max_addresses = max_addresses
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()  # address -> (window start, count)

    def spend(self, address: str) -> RateDecision:
        now = self._clock()
        start, count = self._counts.get(address, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        count += 1
        self._counts[address] = (start, count)
        self._counts.move_to_end(address)
        while len(self._counts) > self._max_addresses:
            self._counts.popitem(last=False)
        reset_s = max(1, math.ceil(start + self.window_s - now))
        allowed = count <= self.amount
        return RateDecision(allowed, self.amount, max(0, self.amount - count), reset_s)


class _LookupRefused(Exception):
    """The address could not pay for an API key lookup: over its rate limit."""

    def __init__(self, rate: RateDecision) -> None:
        super().__init__("rate limited")
        self.rate = rate


def _rate_limited(rate: RateDecision) -> ApiError:
    return ApiError(ErrorCode.RATE_LIMITED, {"limit": rate.limit, "retry_after_seconds": rate.reset_s})


def address_error(
    resolver: ClientAddressResolver, allowlist: AddressSet, scope: Scope
) -> tuple[IPAddress | None, ApiError | None]:
    """Steps 1 and 2 of the gate, for a request or handshake: (client address, None) when the
    address may pass, else (what was resolved, the refusal: 400 for a trusted proxy's malformed
    `X-Forwarded-For`, 403 outside the allowlist). The one address check: the gate runs it first,
    and the operator endpoints (api/health.py), which skip the rest of the gate, run it alone."""
    headers = Headers(scope=scope)
    peer = scope.get("client")
    try:
        client_ip = resolver.resolve(peer[0] if peer else None, headers.getlist("x-forwarded-for"))
    except MalformedForwardedFor:
        return None, ApiError(ErrorCode.BAD_REQUEST, {"reason": "malformed X-Forwarded-For from a trusted proxy"})
    if allowlist and client_ip not in allowlist:
        return client_ip, address_forbidden(client_ip, "client address not allowed")
    return client_ip, None


class SecurityGate:
    """Plain object, no FastAPI: the HTTP middleware below and a WebSocket endpoint share it
    (`await gate.admit(websocket.scope, allow_query_token=True)`, then close with 4401/4403/4429
    when `error` is set)."""

    def __init__(
        self,
        settings: ApiSettings,
        authenticator: Authenticator,
        limiter: RateLimiter,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.resolver = ClientAddressResolver(settings.trusted_proxies)
        self.allowlist = AddressSet(settings.allowlist)
        self.authenticator = authenticator
        self.limiter = limiter
        self.address_budget = AddressBudget(settings.address_budget, clock=clock)

    def address_error(self, scope: Scope) -> tuple[IPAddress | None, ApiError | None]:
        """Steps 1 and 2: the client address and, when it may not pass, why."""
        return address_error(self.resolver, self.allowlist, scope)

    async def admit(self, scope: Scope, *, allow_query_token: bool = False) -> Admission:
        headers = Headers(scope=scope)
        peer = scope.get("client")
        peer_host: str | None = peer[0] if peer else None
        client_ip, error = self.address_error(scope)
        address_identity = f"ip:{client_ip or peer_host or 'unknown'}"

        if error is None:
            budget = self.address_budget.spend(address_identity)
            if not budget.allowed:
                return Admission(None, client_ip, budget, _rate_limited(budget))

        # Set when this request paid for an API key lookup from the address's rate limit.
        address_rate: RateDecision | None = None

        async def pay_for_key_lookup() -> None:
            nonlocal address_rate
            address_rate = await self.limiter.hit(address_identity)
            if not address_rate.allowed:
                raise _LookupRefused(address_rate)

        principal: Principal | None = None
        valid_until: float | None = None
        if error is None:
            try:
                credentials = await self._authenticate(scope, headers, client_ip, allow_query_token, pay_for_key_lookup)
                principal, valid_until = credentials.principal, credentials.token_valid_until
            except _LookupRefused as refused:
                return Admission(None, client_ip, refused.rate, _rate_limited(refused.rate))
            except ApiError as exc:
                error = exc
            except StoreUnavailable:
                error = ApiError(ErrorCode.UNAVAILABLE, {"reason": "API key store unreachable"})
            except Exception:
                # Still counted and answered with the usual headers; the operator gets the traceback.
                logger.exception("credential check failed request_id=%s", scope.get("state", {}).get("request_id"))
                error = ApiError(ErrorCode.INTERNAL)

        if principal is not None:
            rate = await self.limiter.hit(f"account:{principal.account}")
        elif address_rate is not None:
            rate = address_rate  # already counted against the address for its key lookup
        else:
            rate = await self.limiter.hit(address_identity)
        if not rate.allowed:
            error = _rate_limited(rate)
        return Admission(principal, client_ip, rate, error, valid_until)

    async def _authenticate(
        self,
        scope: Scope,
        headers: Headers,
        client_ip: IPAddress | None,
        allow_query_token: bool,
        before_key_lookup: BeforeLookup,
    ) -> Credentials:
        authorization = headers.getlist("authorization")
        api_key = headers.getlist("x-api-key")
        if len(authorization) > 1 or len(api_key) > 1:
            raise auth_failed("send each credential header once")
        query_token: str | None = None
        if allow_query_token:
            tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
            offered_tokens, offered_keys = websocket_protocol_credentials(scope)
            tokens += offered_tokens
            if len(tokens) > 1:
                raise auth_failed("send the token once")
            query_token = tokens[0] if tokens else None
            api_key = api_key + offered_keys
            if len(api_key) > 1:
                raise auth_failed("send the API key once")
        return await self.authenticator.check(
            authorization=authorization[0] if authorization else None,
            api_key=api_key[0] if api_key else None,
            client_ip=client_ip,
            query_token=query_token,
            before_key_lookup=before_key_lookup,
        )


# Browsers cannot set headers on a WebSocket, but they can offer subprotocols: a credential offered as
# `entasis.bearer.<jwt>` or `entasis.key.<api key>`, beside WS_PROTOCOL (the one the server selects,
# never the credential), stays out of the URL, and so out of the server's and proxies' logs, which
# `?token=` does not (uvicorn logs a WebSocket's path with its query string).
WS_PROTOCOL = "entasis.v1"
_BEARER_PROTOCOL = "entasis.bearer."
_KEY_PROTOCOL = "entasis.key."


def websocket_protocol_credentials(scope: Scope) -> tuple[list[str], list[str]]:
    """(tokens, API keys) offered as WebSocket subprotocols; empty lists for an HTTP request."""
    offered = scope.get("subprotocols") or ()
    tokens = [p[len(_BEARER_PROTOCOL) :] for p in offered if p.startswith(_BEARER_PROTOCOL)]
    keys = [p[len(_KEY_PROTOCOL) :] for p in offered if p.startswith(_KEY_PROTOCOL)]
    return tokens, keys


# WebSocket close codes for the gate's refusals (docs/decisions.md, "WebSocket": unauthenticated is 4401).
_WEBSOCKET_CLOSE = {
    ErrorCode.AUTH_FAILED: 4401,
    ErrorCode.FORBIDDEN: 4403,
    ErrorCode.RATE_LIMITED: 4429,
    ErrorCode.BAD_REQUEST: 4400,
}


def websocket_close_code(error: ApiError) -> int:
    """The close code a WebSocket endpoint uses when `SecurityGate.admit` refused the handshake
    (1011, "internal error", for anything else, e.g. an unreachable key store)."""
    return _WEBSOCKET_CLOSE.get(error.code, 1011)


class SecurityMiddleware:
    """Runs the gate for every HTTP request (plain ASGI: no per-request task). Must sit inside
    RequestContextMiddleware, which stamps the headers collected here on every response, its own
    500 included. A request with a body that the gate admitted has its body read here first, at
    most `max_body_bytes` of it and within `receive_timeout_seconds`, and replayed to the app."""

    def __init__(self, app: ASGIApp, gate: SecurityGate, public_docs: bool = True) -> None:
        self.app = app
        self.gate = gate
        self.public_docs = public_docs
        self.max_body_bytes = gate.settings.max_body_bytes
        self.receive_timeout_s = gate.settings.receive_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = response_headers(scope)
        if scope.get("scheme") == "https":
            extra["Strict-Transport-Security"] = HSTS
        admission = await self.gate.admit(scope)
        extra.update(admission.rate.headers())
        state = scope.setdefault("state", {})
        state["principal"] = admission.principal
        state["client_ip"] = admission.client_ip
        error = admission.error
        if error is None and not self.public_docs and admission.principal is None and scope["path"] in DOCS_PATHS:
            error = auth_failed("credentials required")
        if error is None:
            error, receive = await self._read_body(scope, receive)
        if error is not None:
            await error_response(scope, error.code, error.details, error.status, error.headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[ApiError | None, Receive]:
        """(error, receive): the body read whole and replayed by the new `receive`, or what is
        wrong with it. Bodies are small here (orders), so holding one costs at most the cap."""
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is None and "transfer-encoding" not in headers:
            return None, receive  # HTTP/1.1: no body at all
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large(), receive  # refused before a byte of it is read
        messages: list[Message] = []
        size = 0
        try:
            async with asyncio.timeout(self.receive_timeout_s):
                while True:
                    message = await receive()
                    messages.append(message)
                    if message["type"] != "http.request":
                        break  # the client went away: the app sees the disconnect
                    size += len(message.get("body", b""))
                    if size > self.max_body_bytes:  # chunked, or a Content-Length that lied
                        return self._too_large(), receive
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            error = ApiError(
                ErrorCode.BAD_REQUEST,
                {"reason": f"request body not received within {self.receive_timeout_s:g} seconds"},
                status=408,
                headers={"Connection": "close"},
            )
            return error, receive
        pending = iter(messages)

        async def replay() -> Message:
            message = next(pending, None)
            return message if message is not None else await receive()

        return None, replay

    def _too_large(self) -> ApiError:
        return ApiError(
            ErrorCode.BAD_REQUEST,
            {"reason": f"request body larger than {self.max_body_bytes} bytes"},
            status=413,
            headers={"Connection": "close"},
        )


# --- routes ------------------------------------------------------------------------------

bearer_scheme = HTTPBearer(
    scheme_name="BearerJWT",
    bearerFormat="JWT",
    description=(
        "`Authorization: Bearer <jwt>` (HS256 or RS256 as configured). Claims: `sub` = account id, `exp` "
        "required, `scope` = space-separated scopes, e.g. `market:read`. Development: `entasis token`."
    ),
    auto_error=False,
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="`X-API-Key: ek_...`, issued by `entasis keys create`. Sent with a token, both must name the "
    "same account and the request gets the scopes both allow.",
    auto_error=False,
)


def principal_of(request: Request) -> Principal | None:
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else None


def require_scope(scope: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A route dependency: the caller's Principal, which must hold `scope`. The two security
    parameters only document the schemes in OpenAPI; the middleware has verified them already."""

    async def dependency(
        request: Request,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
        _api_key: Annotated[str | None, Security(api_key_scheme)] = None,
    ) -> Principal:
        principal = principal_of(request)
        if principal is None:
            raise auth_failed("credentials required")
        if not principal.allows(scope):
            raise insufficient_scope(scope)
        return principal

    dependency.__name__ = f"require_{scope.replace(':', '_')}"
    return dependency
