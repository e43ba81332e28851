"""What the sync and async clients share: the routes as request descriptions (`Call`), the
headers, TLS, and reading an answer into its model or its exception. No I/O here."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from entasis_client import models as m
from entasis_client.errors import EntasisError, InvalidResponse, error_from_body
from entasis_client.retry import parse_retry_after

__version__ = "0.1.0"
API_PREFIX = "/api/v1"
DEFAULT_BASE_URL = "https://127.0.0.1:8000"
USER_AGENT = f"entasis-client/{__version__} (python)"

T = TypeVar("T", bound=BaseModel)
Params = dict[str, str | int]
TimeArg = datetime | date | str
Credential = str | Callable[[], str]
ExportFormat = Literal["csv", "parquet"]
EXPORT_MEDIA: dict[str, str] = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
Destination = str | Path | BinaryIO


@dataclass(frozen=True)
class Call(Generic[T]):
    """One route call: method, path under the base URL, query, JSON body and the model of a
    successful answer. `ok_statuses`: statuses answered with the model (readiness answers 503
    with the same body)."""

    method: str
    path: str
    model: type[T]
    params: Params = field(default_factory=dict)
    json: dict[str, Any] | None = None
    idempotency_key: str | None = None
    ok_statuses: frozenset[int] = frozenset()


@dataclass(frozen=True)
class RateLimitInfo:
    """The `X-RateLimit-*` headers of the latest answer: the budget, what is left of it, and the
    seconds until the window frees a request."""

    limit: int
    remaining: int
    reset: int


# --- arguments ---------------------------------------------------------------------------------


def format_time(value: TimeArg) -> str:
    """A query time: a `datetime` (naive means UTC) as ISO 8601 UTC to the microsecond, a `date`
    as its midnight UTC, a string as it is."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{value.isoformat()}T00:00:00Z"


def format_decimal(value: Decimal | int | str | float) -> str:
    """A request decimal as the API's plain string (`Decimal("1E+1")` -> `"10"`). Floats are
    taken by their shortest repr (`0.1` -> `"0.1"`), never their binary expansion."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        value = Decimal(repr(value))
    return format(Decimal(value), "f")


def segment(value: str) -> str:
    """A path segment, percent-encoded (a `/` in it cannot reach another route)."""
    return quote(value, safe="")


def _put(params: Params, name: str, value: str | int | None) -> None:
    if value is not None:
        params[name] = value


def _time(params: Params, name: str, value: TimeArg | None) -> None:
    if value is not None:
        params[name] = format_time(value)


def _csv(value: str | Sequence[str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(value)


# --- the routes --------------------------------------------------------------------------------


def price(symbol: str, exchange: str | None) -> Call[m.PriceResponse]:
    params: Params = {}
    _put(params, "exchange", exchange)
    return Call("GET", f"{API_PREFIX}/market/price/{segment(symbol)}", m.PriceResponse, params)


def history(
    symbol: str,
    interval: str | None,
    start: TimeArg | None,
    end: TimeArg | None,
    fill: bool | None,
    exchange: str | None,
    fields: str | Sequence[str] | None,
) -> Call[m.HistoryResponse]:
    params: Params = {}
    _put(params, "interval", interval)
    _time(params, "start", start)
    _time(params, "end", end)
    if fill is not None:
        params["fill"] = "true" if fill else "false"
    _put(params, "exchange", exchange)
    _put(params, "fields", _csv(fields))
    return Call("GET", f"{API_PREFIX}/market/history/{segment(symbol)}", m.HistoryResponse, params)


def orderbook(symbol: str, depth: int | None, exchange: str | None) -> Call[m.OrderBookResponse]:
    params: Params = {}
    _put(params, "depth", depth)
    _put(params, "exchange", exchange)
    return Call("GET", f"{API_PREFIX}/market/orderbook/{segment(symbol)}", m.OrderBookResponse, params)


def trades(
    symbol: str,
    start: TimeArg | None,
    end: TimeArg | None,
    limit: int | None,
    cursor: str | None,
    exchange: str | None,
) -> Call[m.TradesResponse]:
    params: Params = {}
    _time(params, "start", start)
    _time(params, "end", end)
    _put(params, "limit", limit)
    _put(params, "cursor", cursor)
    _put(params, "exchange", exchange)
    return Call("GET", f"{API_PREFIX}/market/trades/{segment(symbol)}", m.TradesResponse, params)


def symbols() -> Call[m.SymbolsResponse]:
    return Call("GET", f"{API_PREFIX}/market/symbols", m.SymbolsResponse)


def quality(
    symbol: str,
    kind: str | Sequence[str] | None,
    start: TimeArg | None,
    end: TimeArg | None,
    limit: int | None,
    cursor: str | None,
    exchange: str | None,
) -> Call[m.QualityResponse]:
    params: Params = {}
    _put(params, "kind", _csv(kind))
    _time(params, "start", start)
    _time(params, "end", end)
    _put(params, "limit", limit)
    _put(params, "cursor", cursor)
    _put(params, "exchange", exchange)
    return Call("GET", f"{API_PREFIX}/market/quality/{segment(symbol)}", m.QualityResponse, params)


def risk(symbol: str, method: str | None, interval: str | None, exchange: str | None) -> Call[m.RiskResponse]:
    params: Params = {}
    _put(params, "method", method)
    _put(params, "interval", interval)
    _put(params, "exchange", exchange)
    return Call("GET", f"{API_PREFIX}/analysis/risk/{segment(symbol)}", m.RiskResponse, params)


def risk_backtest(
    symbol: str,
    start: TimeArg | None,
    end: TimeArg | None,
    method: str | None,
    interval: str | None,
    window_days: int | None,
    exchange: str | None,
) -> Call[m.BacktestResponse]:
    params: Params = {}
    _time(params, "start", start)
    _time(params, "end", end)
    _put(params, "method", method)
    _put(params, "interval", interval)
    _put(params, "window_days", window_days)
    _put(params, "exchange", exchange)
    return Call("GET", f"{API_PREFIX}/analysis/risk/{segment(symbol)}/backtest", m.BacktestResponse, params)


def prediction(
    symbol: str, timeframe: str | None, model: str | None, exchange: str | None
) -> Call[m.PredictionResponse]:
    params: Params = {}
    _put(params, "timeframe", timeframe)
    _put(params, "model", model)
    _put(params, "exchange", exchange)
    return Call("GET", f"{API_PREFIX}/analysis/prediction/{segment(symbol)}", m.PredictionResponse, params)


def prediction_metrics(
    symbol: str, timeframe: str | None, model: str | None, exchange: str | None
) -> Call[m.MetricsResponse]:
    params: Params = {}
    _put(params, "timeframe", timeframe)
    _put(params, "model", model)
    _put(params, "exchange", exchange)
    return Call("GET", f"{API_PREFIX}/analysis/prediction/{segment(symbol)}/metrics", m.MetricsResponse, params)


def open_position(
    symbol: str,
    size: Decimal | int | str | float,
    type: str,
    leverage: Decimal | int | str | float | None,
    idempotency_key: str | None,
) -> Call[m.OpenPositionResponse]:
    body: dict[str, Any] = {"symbol": symbol, "size": format_decimal(size), "type": type}
    if leverage is not None:
        body["leverage"] = format_decimal(leverage)
    return Call(
        "POST", f"{API_PREFIX}/portfolio/positions", m.OpenPositionResponse, json=body, idempotency_key=idempotency_key
    )


def positions() -> Call[m.PositionsResponse]:
    return Call("GET", f"{API_PREFIX}/portfolio/positions", m.PositionsResponse)


def close_position(position_id: str) -> Call[m.ClosePositionResponse]:
    return Call("DELETE", f"{API_PREFIX}/portfolio/positions/{segment(position_id)}", m.ClosePositionResponse)


def balance() -> Call[m.BalanceResponse]:
    return Call("GET", f"{API_PREFIX}/portfolio/balance", m.BalanceResponse)


def readiness() -> Call[m.ReadinessResponse]:
    return Call("GET", "/readyz", m.ReadinessResponse, ok_statuses=frozenset({503}))


# --- the connection ----------------------------------------------------------------------------


def ssl_context(ca_file: str | Path | None, verify: bool | ssl.SSLContext) -> ssl.SSLContext | bool:
    """What httpx and websockets take as TLS configuration: the caller's context, a default
    context that trusts `ca_file` (e.g. `entasis up`'s `.entasis/tls/cert.pem`), the system's
    trust store, or (`verify=False`) no verification at all."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if ca_file is not None:
        if not verify:
            raise ValueError("ca_file and verify=False contradict each other")
        return ssl.create_default_context(cafile=str(ca_file))
    if not verify:
        return False
    return ssl.create_default_context()


def auth_headers(token: Credential | None, api_key: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token() if callable(token) else token}"
    if api_key is not None:
        headers["X-API-Key"] = api_key
    return headers


def base_headers(language: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if language is not None:
        headers["Accept-Language"] = language
    headers.update(extra or {})
    return headers


def is_tls_failure(exc: BaseException) -> bool:
    """Whether a transport error is a TLS verification or handshake failure (never retried:
    trying again cannot fix a certificate)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def retry_after_of(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"))


def rate_limit_of(response: httpx.Response) -> RateLimitInfo | None:
    try:
        return RateLimitInfo(
            int(response.headers["x-ratelimit-limit"]),
            int(response.headers["x-ratelimit-remaining"]),
            int(response.headers["x-ratelimit-reset"]),
        )
    except (KeyError, ValueError):
        return None


def error_of(response: httpx.Response) -> EntasisError:
    return error_from_body(
        response.status_code,
        response.content,
        reason=response.reason_phrase,
        request_id=response.headers.get("x-request-id"),
        retry_after=retry_after_of(response),
    )


def succeeded(call: Call[Any], response: httpx.Response) -> bool:
    return response.is_success or response.status_code in call.ok_statuses


def parse(call: Call[T], response: httpx.Response) -> T:
    """A successful answer as its model; InvalidResponse when it is not one."""
    try:
        return call.model.model_validate_json(response.content)
    except ValidationError as exc:
        raise InvalidResponse(
            "INVALID_RESPONSE",
            f"the answer is not a {call.model.__name__}: {exc.error_count()} problem(s), first: "
            f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}",
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        ) from exc


@contextlib.contextmanager
def sink(destination: Destination) -> Iterator[BinaryIO]:
    """Where an export's bytes go: a file-like object as it is, or a path, opened for writing and
    removed again when the export fails half-way."""
    if not isinstance(destination, str | Path):
        yield destination
        return
    path = Path(destination)
    try:
        with path.open("wb") as out:
            yield out
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def export_media(fmt: str) -> str:
    try:
        return EXPORT_MEDIA[fmt]
    except KeyError:
        raise ValueError(f"format: one of {', '.join(EXPORT_MEDIA)}, not {fmt!r}") from None


def request_headers(idempotency_key: str | None, auth: Mapping[str, str]) -> dict[str, str]:
    headers = dict(auth)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers
