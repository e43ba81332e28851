"""The one error model of the API: every error, ours or the framework's, leaves as

    {"error": {"code": "MARKET_001", "message": "Invalid symbol", "details": {...} | null, "request_id": "..."}}

with `message` exactly the code table's text (Korean when `Accept-Language` prefers `ko`).
The table below is the only place codes, statuses and messages are written down; later
features (portfolio, analysis, WebSocket errors) raise `ApiError` with these codes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.models import ErrorResponse

logger = logging.getLogger("api.errors")

Language = Literal["en", "ko"]
REQUEST_ID_HEADER = "X-Request-ID"


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    AUTH_FAILED = "AUTH_FAILED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    MARKET_001 = "MARKET_001"
    MARKET_002 = "MARKET_002"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    PORT_001 = "PORT_001"
    PORT_002 = "PORT_002"
    AI_001 = "AI_001"
    AI_002 = "AI_002"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    code: ErrorCode
    status: int  # the default; MARKET_001 is 400 when malformed and 404 when unknown
    en: str
    ko: str

    def message(self, language: Language) -> str:
        return self.ko if language == "ko" else self.en


# docs/decisions.md, "Errors": the texts are the contract, word for word.
ERRORS: dict[ErrorCode, ErrorSpec] = {
    spec.code: spec
    for spec in (
        ErrorSpec(ErrorCode.BAD_REQUEST, 400, "Bad request", "잘못된 요청"),
        ErrorSpec(ErrorCode.AUTH_FAILED, 401, "Authentication failed", "인증 실패"),
        ErrorSpec(ErrorCode.FORBIDDEN, 403, "Forbidden", "권한 없음"),
        ErrorSpec(ErrorCode.NOT_FOUND, 404, "Resource not found", "리소스 없음"),
        ErrorSpec(ErrorCode.METHOD_NOT_ALLOWED, 405, "Method not allowed", "허용되지 않은 메서드"),
        ErrorSpec(ErrorCode.RATE_LIMITED, 429, "Rate limit exceeded", "요청 한도 초과"),
        ErrorSpec(ErrorCode.INTERNAL, 500, "Internal server error", "서버 내부 오류"),
        ErrorSpec(ErrorCode.UNAVAILABLE, 503, "Service temporarily unavailable", "일시적으로 사용할 수 없음"),
        ErrorSpec(ErrorCode.MARKET_001, 400, "Invalid symbol", "유효하지 않은 심볼"),
        ErrorSpec(ErrorCode.MARKET_002, 503, "Exchange connection failure (feed down or stale)", "거래소 연결 실패"),
        ErrorSpec(
            ErrorCode.IDEMPOTENCY_CONFLICT, 409, "Idempotency key reused with a different request", "멱등성 키 충돌"
        ),
        ErrorSpec(ErrorCode.PORT_001, 422, "Insufficient balance", "잔액 부족"),
        ErrorSpec(ErrorCode.PORT_002, 422, "Position limit exceeded", "포지션 한도 초과"),
        ErrorSpec(ErrorCode.AI_001, 500, "Model load failure", "모델 로딩 실패"),
        ErrorSpec(ErrorCode.AI_002, 503, "Prediction failure", "예측 실패"),
    )
}

# Framework HTTPExceptions carry only a status; these are the codes they become.
_CODE_FOR_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.AUTH_FAILED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.IDEMPOTENCY_CONFLICT,
    429: ErrorCode.RATE_LIMITED,
    500: ErrorCode.INTERNAL,
    503: ErrorCode.UNAVAILABLE,
}


class ApiError(Exception):
    """Raise anywhere below a route; the handler renders the envelope."""

    def __init__(
        self,
        code: ErrorCode | str,
        details: Mapping[str, Any] | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.code = ErrorCode(code)
        self.spec = ERRORS[self.code]
        self.details = dict(details) if details is not None else None
        self.status = status if status is not None else self.spec.status
        self.headers = dict(headers) if headers else None
        super().__init__(f"{self.code} ({self.status}): {self.details}")


# --- Accept-Language -------------------------------------------------------------------

_SUPPORTED: tuple[Language, ...] = ("en", "ko")
_DEFAULT_LANGUAGE: Language = "en"
_LANG_RANGE_RE = re.compile(r"^(\*|[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*)$")
_QVALUE_RE = re.compile(r"^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$")


def negotiate_language(header: str | None) -> Language:
    """RFC 9110 language negotiation over the two languages we have.

    The supported language with the highest q wins (ties: the earlier range in the header);
    `q=0` refuses a language; `*` and anything unparseable fall back to English."""
    if not header:
        return _DEFAULT_LANGUAGE
    best: tuple[float, int, Language] | None = None
    for position, part in enumerate(header.split(",")):
        fields = [f.strip() for f in part.split(";")]
        tag = fields[0]
        if not _LANG_RANGE_RE.match(tag):
            continue
        q = 1.0
        valid = True
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                if not _QVALUE_RE.match(value):
                    valid = False
                    break
                q = float(value)
        if not valid or q <= 0:
            continue
        primary = tag.split("-", 1)[0].lower()
        language: Language
        if primary == "*":
            language = _DEFAULT_LANGUAGE
        elif primary in _SUPPORTED:
            language = "ko" if primary == "ko" else "en"
        else:
            continue
        # Sort key: higher q first, then earlier position.
        candidate = (q, -position, language)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return best[2] if best else _DEFAULT_LANGUAGE


# --- rendering -------------------------------------------------------------------------


def new_request_id() -> str:
    # 128 random bits as 32 hex digits, the spelling of `uuid4().hex`, at a quarter of its cost
    # (no UUID object per request: ~0.5 against ~2 us)
    return os.urandom(16).hex()


_RESPONSE_HEADERS_STATE = "response_headers"


def response_headers(scope: Scope) -> dict[str, str]:
    """Headers to put on whatever response this request gets, error or not (rate limit, HSTS):
    filled by the security middleware, stamped by RequestContextMiddleware at response start."""
    state = scope.setdefault("state", {})
    headers = state.get(_RESPONSE_HEADERS_STATE)
    if not isinstance(headers, dict):
        headers = {}
        state[_RESPONSE_HEADERS_STATE] = headers
    return headers


def request_id_of(scope: Scope) -> str:
    state = scope.setdefault("state", {})
    request_id = state.get("request_id")
    if not isinstance(request_id, str):
        # Only reachable when something runs outside RequestContextMiddleware.
        request_id = new_request_id()
        state["request_id"] = request_id
    return request_id


def error_response(
    scope: Scope,
    code: ErrorCode,
    details: Mapping[str, Any] | None = None,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    spec = ERRORS[code]
    language = negotiate_language(Headers(scope=scope).get("accept-language"))
    body = {
        "error": {
            "code": spec.code.value,
            "message": spec.message(language),
            "details": dict(details) if details is not None else None,
            "request_id": request_id_of(scope),
        }
    }
    response = JSONResponse(body, status_code=status or spec.status, headers=dict(headers or {}))
    response.headers["Content-Language"] = language
    response.headers.append("Vary", "Accept-Language")
    return response


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request.scope, exc.code, exc.details, exc.status, exc.headers)


def _field_name(loc: Iterable[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only where and why: pydantic's `input`, `ctx` and `url` would echo internals.
    errors = [{"field": _field_name(e.get("loc", ())), "reason": str(e.get("msg", ""))} for e in exc.errors()]
    return error_response(request.scope, ErrorCode.BAD_REQUEST, {"errors": errors})


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _CODE_FOR_STATUS.get(status, ErrorCode.INTERNAL if status >= 500 else ErrorCode.BAD_REQUEST)
    details: dict[str, Any] | None
    if code is ErrorCode.NOT_FOUND:
        details = {"path": request.url.path}
    elif code is ErrorCode.METHOD_NOT_ALLOWED:
        allowed = _methods_for_path(request)
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
        details = {"method": request.method, "allowed": allowed}
    else:
        # Framework `detail` strings are not part of the contract; never echo them.
        details = None
    return error_response(request.scope, code, details, status, exc.headers)


def _methods_for_path(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette names only the first route that
    matched the path, and a path (GET and POST /positions) can be served by several."""
    routes = request.app.router.routes
    return [
        method
        for method in _HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


_HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_middleware(RequestContextMiddleware)


RawHeaders = list[tuple[bytes, bytes]]


def _stamped(raw: Iterable[tuple[bytes, bytes]], extra: Mapping[str, str], request_id: str) -> RawHeaders:
    """The response's raw headers with ours set on them (replacing any of the same name), built as
    one list: Starlette's MutableHeaders rescans the list for every header set, ~5 us a response."""
    ours = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()]
    ours.append((_REQUEST_ID_RAW, request_id.encode("latin-1")))
    ours.append(_NOSNIFF)
    names = {name for name, _ in ours}
    return [(name, value) for name, value in raw if name.lower() not in names] + ours


_REQUEST_ID_RAW = REQUEST_ID_HEADER.lower().encode("latin-1")
_NOSNIFF = (b"x-content-type-options", b"nosniff")


class RequestContextMiddleware:
    """Gives every request its id (body and `X-Request-ID` header, success and error alike),
    stamps the headers collected in `response_headers(scope)` on every response, and turns any
    unhandled exception into the 500 envelope.

    A plain ASGI middleware rather than an `Exception` handler: Starlette runs that handler
    in ServerErrorMiddleware, outside every user middleware, where the request-id header
    could no longer be added, and then re-raises. Here the exception stops, is logged with
    its traceback, and the client gets only the code table's text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # Always our own id: `request_id` is promised unique per request, which a client-chosen
        # id cannot guarantee. The client's id is logged next to ours for correlation.
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        extra = response_headers(scope)
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER)
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                message["headers"] = _stamped(message.get("headers", ()), extra, request_id)
            await send(message)

        # A WebSocket's messages carry no HTTP response start to stamp: its sends go straight to the
        # server (every market update to every socket passes here; the wrapper was ~10 % of the
        # fan-out's send path).
        try:
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
        except Exception:
            logger.exception(
                "unhandled error request_id=%s client_request_id=%s %s %s",
                request_id,
                incoming,
                scope.get("method", ""),
                scope.get("path", ""),
            )
            if scope["type"] != "http" or response_started:
                raise
            response = error_response(scope, ErrorCode.INTERNAL)
            await response(scope, receive, send_with_id)


def openapi_error_responses(spec: Mapping[int, Iterable[ErrorCode]]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route: per status, the envelope model and one example per code."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status, codes in spec.items():
        examples = {}
        descriptions = []
        for code in codes:
            entry = ERRORS[code]
            descriptions.append(f"`{code.value}`: {entry.en}")
            examples[code.value] = {
                "summary": f"{code.value}: {entry.en}",
                "value": {
                    "error": {
                        "code": code.value,
                        "message": entry.en,
                        "details": _EXAMPLE_DETAILS.get((status, code)),
                        "request_id": "5f0c6a3e9b2d4c81a7e4f3d2c1b0a998",
                    }
                },
            }
        responses[status] = {
            "model": ErrorResponse,
            "description": "; ".join(descriptions),
            "content": {"application/json": {"examples": examples}},
        }
    return responses


_EXAMPLE_DETAILS: dict[tuple[int, ErrorCode], dict[str, Any]] = {
    (400, ErrorCode.MARKET_001): {"symbol": "BTC$USDT", "reason": "expected BASE-QUOTE, e.g. BTC-USDT"},
    (404, ErrorCode.MARKET_001): {"symbol": "XYZQ-USDT", "reason": "symbol not served"},
    (400, ErrorCode.BAD_REQUEST): {
        "errors": [{"field": "query.interval", "reason": "Input should be '1m', '5m', '1h' or '1d'"}]
    },
    (503, ErrorCode.MARKET_002): {
        "symbol": "BTC-USDT",
        "exchange": "binance",
        "state": "stale_feed",
        "since": "2024-03-21T09:30:00.123Z",
    },
    (503, ErrorCode.UNAVAILABLE): {"reason": "market data store unreachable"},
    (401, ErrorCode.AUTH_FAILED): {"reason": "token expired"},
    (403, ErrorCode.FORBIDDEN): {"reason": "insufficient scope", "required_scope": "market:read"},
    (429, ErrorCode.RATE_LIMITED): {"limit": 1000, "retry_after_seconds": 12},
}
