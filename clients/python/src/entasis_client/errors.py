"""Errors of the API as exceptions, one class per error code.

Every API error arrives in one envelope:

    {"error": {"code": "MARKET_001", "message": "Invalid symbol", "details": {...} | null, "request_id": "..."}}

and is raised as the `EntasisError` subclass of its code (`error_for`), carrying `.code`,
`.status`, `.message`, `.details`, `.request_id` and, where the server sent one, `.retry_after`
(seconds). A code this client does not know falls back to the class of its HTTP status. The same
classes are raised for the WebSocket's in-band errors (`{"type": "error", "code", "message"}`,
no status there) and its refusing close codes (4401, 4403).

    EntasisError
    ├── ValidationFailed            BAD_REQUEST (400)
    │   └── InvalidSymbol           MARKET_001 (400: malformed)
    ├── NotFound                    NOT_FOUND (404)
    │   └── SymbolNotFound          MARKET_001 (404: not served; also an InvalidSymbol)
    ├── AuthError                   AUTH_FAILED (401)
    │   └── Forbidden               FORBIDDEN (403)
    ├── MethodNotAllowed            METHOD_NOT_ALLOWED (405)
    ├── IdempotencyConflict         IDEMPOTENCY_CONFLICT (409)
    ├── PortfolioRejected           (422)
    │   ├── InsufficientBalance     PORT_001
    │   └── PositionLimitExceeded   PORT_002
    ├── RateLimited                 RATE_LIMITED (429)
    ├── ServerError                 INTERNAL (500)
    │   └── ModelLoadFailed         AI_001
    ├── Unavailable                 UNAVAILABLE (503)
    │   ├── FeedUnavailable         MARKET_002
    │   └── PredictionUnavailable   AI_002
    ├── ConnectionFailed            no answer (network, TLS, timeout)
    └── InvalidResponse             an answer this client cannot read
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "AuthError",
    "ConnectionFailed",
    "EntasisError",
    "FeedUnavailable",
    "Forbidden",
    "IdempotencyConflict",
    "InsufficientBalance",
    "InvalidResponse",
    "InvalidSymbol",
    "MethodNotAllowed",
    "ModelLoadFailed",
    "NotFound",
    "PortfolioRejected",
    "PositionLimitExceeded",
    "PredictionUnavailable",
    "RateLimited",
    "ServerError",
    "SymbolNotFound",
    "Unavailable",
    "ValidationFailed",
    "error_class",
    "error_for",
    "error_from_body",
]


class EntasisError(Exception):
    """An error answered by the API (or, for `ConnectionFailed`, no answer at all).

    `code`: the error table's code (`MARKET_001`, `RATE_LIMITED`, ...); `status`: the HTTP status
    (None for WebSocket errors and connection failures); `message`: the server's text (English,
    or Korean with `language="ko"`); `details`: the occurrence's specifics or None; `request_id`:
    the server's id of the request (quote it when reporting a problem); `retry_after`: seconds
    from the `Retry-After` header, when there was one."""

    code: str
    status: int | None
    message: str
    details: dict[str, Any] | None
    request_id: str | None
    retry_after: float | None

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.status = status
        self.message = message
        self.details = dict(details) if details is not None else None
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(self._text())

    def _text(self) -> str:
        where = f" ({self.status})" if self.status is not None else ""
        text = f"{self.code}{where}: {self.message}"
        if self.details:
            text += f" {json.dumps(self.details, ensure_ascii=False, default=str)}"
        if self.request_id:
            text += f" [request {self.request_id}]"
        return text

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the keyword-only arguments
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[EntasisError], state: dict[str, Any]) -> EntasisError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error._text())
    return error


class ValidationFailed(EntasisError):
    """400 `BAD_REQUEST`: a parameter or body the API refused; `details["errors"]` says which."""


class InvalidSymbol(ValidationFailed):
    """`MARKET_001`: a symbol that is malformed (400) or, as `SymbolNotFound`, not served (404)."""


class NotFound(EntasisError):
    """404 `NOT_FOUND`: no such resource (or a position of another account)."""


class SymbolNotFound(InvalidSymbol, NotFound):
    """404 `MARKET_001`: a well-formed symbol (or venue of it) that is not served."""


class AuthError(EntasisError):
    """401 `AUTH_FAILED`: credentials missing, malformed, expired or revoked."""


class Forbidden(AuthError):
    """403 `FORBIDDEN`: valid credentials without the scope (or from an address not allowed)."""


class MethodNotAllowed(EntasisError):
    """405 `METHOD_NOT_ALLOWED`."""


class IdempotencyConflict(EntasisError):
    """409 `IDEMPOTENCY_CONFLICT`: an `Idempotency-Key` reused with a different request."""


class PortfolioRejected(EntasisError):
    """422: the portfolio refused the command."""


class InsufficientBalance(PortfolioRejected):
    """422 `PORT_001`: the required margin exceeds the free balance."""


class PositionLimitExceeded(PortfolioRejected):
    """422 `PORT_002`: too many open positions or too much notional on the symbol."""


class RateLimited(EntasisError):
    """429 `RATE_LIMITED`: over the account's budget; `retry_after` says when to come back."""


class ServerError(EntasisError):
    """500 `INTERNAL` (or any 5xx without a more specific class)."""


class ModelLoadFailed(ServerError):
    """500 `AI_001`: the model's checkpoint could not be loaded; it is warming up again."""


class Unavailable(EntasisError):
    """503 `UNAVAILABLE`: try again later (`retry_after` when the server said when)."""


class FeedUnavailable(Unavailable):
    """503 `MARKET_002`: the venue's feed is down or stale, or its order book is not live."""


class PredictionUnavailable(Unavailable):
    """503 `AI_002`: no forecast yet (the model is warming up); `retry_after` in seconds."""


class ConnectionFailed(EntasisError):
    """No answer: the connection, TLS handshake or read failed or timed out (after the retries)."""


class InvalidResponse(EntasisError):
    """An answer that is not what the API documents (not JSON, or not the expected shape)."""


_BY_CODE: dict[str, type[EntasisError]] = {
    "BAD_REQUEST": ValidationFailed,
    "AUTH_FAILED": AuthError,
    "FORBIDDEN": Forbidden,
    "NOT_FOUND": NotFound,
    "METHOD_NOT_ALLOWED": MethodNotAllowed,
    "RATE_LIMITED": RateLimited,
    "INTERNAL": ServerError,
    "UNAVAILABLE": Unavailable,
    "MARKET_001": InvalidSymbol,
    "MARKET_002": FeedUnavailable,
    "IDEMPOTENCY_CONFLICT": IdempotencyConflict,
    "PORT_001": InsufficientBalance,
    "PORT_002": PositionLimitExceeded,
    "AI_001": ModelLoadFailed,
    "AI_002": PredictionUnavailable,
}

_BY_STATUS: dict[int, type[EntasisError]] = {
    400: ValidationFailed,
    401: AuthError,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: IdempotencyConflict,
    422: PortfolioRejected,
    429: RateLimited,
    500: ServerError,
    503: Unavailable,
}


def error_class(code: str, status: int | None = None) -> type[EntasisError]:
    """The class for an error code (and status: `MARKET_001` is `SymbolNotFound` when 404)."""
    if code == "MARKET_001" and status == 404:
        return SymbolNotFound
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls
    if status is not None:
        if status in _BY_STATUS:
            return _BY_STATUS[status]
        if status >= 500:
            return ServerError
    return EntasisError


def error_for(
    code: str,
    message: str,
    *,
    status: int | None = None,
    details: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> EntasisError:
    """The exception for an error code, of the class `error_class(code, status)`."""
    return error_class(code, status)(
        code, message, status=status, details=details, request_id=request_id, retry_after=retry_after
    )


def error_from_body(
    status: int,
    body: bytes,
    *,
    reason: str = "",
    request_id: str | None = None,
    retry_after: float | None = None,
) -> EntasisError:
    """The exception for an error response: from its envelope, or (a proxy's page, an empty body)
    from its status alone, with code `HTTP_<status>`."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    envelope = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(envelope, dict) and isinstance(envelope.get("code"), str):
        details = envelope.get("details")
        return error_for(
            envelope["code"],
            str(envelope.get("message") or reason),
            status=status,
            details=details if isinstance(details, dict) else None,
            request_id=envelope.get("request_id") if isinstance(envelope.get("request_id"), str) else request_id,
            retry_after=retry_after,
        )
    return error_for(
        f"HTTP_{status}", reason or f"HTTP {status}", status=status, request_id=request_id, retry_after=retry_after
    )
