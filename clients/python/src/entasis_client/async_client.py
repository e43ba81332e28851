"""The asynchronous REST client: the same routes, models and errors as `Client`."""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from entasis_client import _core
from entasis_client import models as m
from entasis_client._core import Call, Credential, RateLimitInfo, TimeArg
from entasis_client.errors import ConnectionFailed
from entasis_client.retry import RetryPolicy
from entasis_client.stream import MarketStream

__all__ = ["AsyncClient"]

logger = logging.getLogger("entasis_client")
T = TypeVar("T", bound=BaseModel)


class AsyncClient:
    """The Entasis REST API, asynchronously (asyncio). Every route of `/api/v1`, answered as its pydantic
    model; errors raised as `entasis_client.errors` exceptions by their code.

        async with AsyncClient("https://127.0.0.1:8000", token=TOKEN, ca_file=".entasis/tls/cert.pem") as api:
            print((await api.price("BTC-USDT")).price)

    `base_url`: scheme, host and port (the `/api/v1` prefix is added). Credentials: `token` (a
    JWT, or a function returning the current one, asked before every attempt) and/or `api_key`.
    TLS: `ca_file` trusts that certificate or CA bundle (the self-signed `.entasis/tls/cert.pem`
    of `entasis up`); `verify=False` turns verification off; an `ssl.SSLContext` as `verify` is
    used as it is. `retry`: when calls are retried (`RetryPolicy`; default up to 4 attempts on
    429, on 503 with `Retry-After` and on connection failures, waiting what `Retry-After` says).
    `language="ko"` asks for the Korean error messages. `transport` and `sleep` are for tests (an httpx transport, the
    function that waits between attempts)."""

    def __init__(
        self,
        base_url: str = _core.DEFAULT_BASE_URL,
        *,
        token: Credential | None = None,
        api_key: str | None = None,
        ca_file: str | Path | None = None,
        verify: bool | ssl.SSLContext = True,
        timeout: float | httpx.Timeout = 10.0,
        retry: RetryPolicy | None = None,
        language: str | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ca_file, self._verify = ca_file, verify
        self._token = token
        self._api_key = api_key
        self.retry = retry if retry is not None else RetryPolicy()
        self._sleep = sleep
        self._rate_limit: RateLimitInfo | None = None
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_core.base_headers(language, headers),
            timeout=timeout,
            verify=_core.ssl_context(ca_file, verify),
            transport=transport,
        )

    # --- lifecycle ---

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def rate_limit(self) -> RateLimitInfo | None:
        """`X-RateLimit-*` of the latest answer that carried them."""
        return self._rate_limit

    # --- the engine ---

    async def call(self, call: Call[T]) -> T:
        """Send one route call (`entasis_client._core` builds them), retrying as `self.retry` says;
        a POST carries one `Idempotency-Key` for all its attempts."""
        key = call.idempotency_key or (str(uuid.uuid4()) if call.method == "POST" else None)
        attempt = 0
        while True:
            attempt += 1
            headers = _core.request_headers(key, _core.auth_headers(self._token, self._api_key))
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params or None, json=call.json, headers=headers
                )
            except httpx.TransportError as exc:
                delay = self.retry.delay(attempt, connection_error=not _core.is_tls_failure(exc))
                if delay is None:
                    raise ConnectionFailed("CONNECTION_FAILED", f"{type(exc).__name__}: {exc}") from exc
                logger.info("%s %s: %s; retry %d in %.2f s", call.method, call.path, exc, attempt, delay)
                await self._sleep(delay)
                continue
            self._rate_limit = _core.rate_limit_of(response) or self._rate_limit
            if _core.succeeded(call, response):
                return _core.parse(call, response)
            error = _core.error_of(response)
            delay = self.retry.delay(attempt, status=response.status_code, retry_after=error.retry_after)
            if delay is None:
                raise error
            logger.info("%s %s: %s; retry %d in %.2f s", call.method, call.path, error.code, attempt, delay)
            await self._sleep(delay)

    def market_stream(self, **options: Any) -> MarketStream:
        """A `MarketStream` (the `/ws/market` WebSocket) on this client's server, credentials and
        TLS settings; `options` as `MarketStream` takes them. Use it with `async with`."""
        return MarketStream(
            self.base_url, token=self._token, api_key=self._api_key, ca_file=self._ca_file, verify=self._verify,
            **options,
        )

    async def _export(self, call: Call[Any], fmt: str, destination: _core.Destination) -> int:
        """Stream an export (CSV or Parquet) into `destination`; the bytes written. Retried as
        `call` is, but only before the first byte arrived."""
        accept = _core.export_media(fmt)
        attempt = 0
        while True:
            attempt += 1
            headers = {**_core.auth_headers(self._token, self._api_key), "Accept": accept}
            written = 0
            try:
                async with self._http.stream(
                    call.method, call.path, params=call.params or None, headers=headers
                ) as response:
                    self._rate_limit = _core.rate_limit_of(response) or self._rate_limit
                    if response.is_success:
                        with _core.sink(destination) as out:
                            async for chunk in response.aiter_bytes():
                                out.write(chunk)
                                written += len(chunk)
                        return written
                    await response.aread()
                    error = _core.error_of(response)
            except httpx.TransportError as exc:
                if written:
                    raise ConnectionFailed(
                        "CONNECTION_FAILED", f"the export broke off after {written} bytes: {exc}"
                    ) from exc
                delay = self.retry.delay(attempt, connection_error=not _core.is_tls_failure(exc))
                if delay is None:
                    raise ConnectionFailed("CONNECTION_FAILED", f"{type(exc).__name__}: {exc}") from exc
                await self._sleep(delay)
                continue
            delay = self.retry.delay(attempt, status=response.status_code, retry_after=error.retry_after)
            if delay is None:
                raise error
            await self._sleep(delay)

    # --- market ---

    async def price(self, symbol: str, *, exchange: str | None = None) -> m.PriceResponse:
        """The latest trade price of `symbol` and its venue's 24 h volume (default venue: the one
        with the most recent trade)."""
        return await self.call(_core.price(symbol, exchange))

    async def history(
        self,
        symbol: str,
        *,
        interval: m.Interval | None = None,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        fill: bool | None = None,
        exchange: str | None = None,
        fields: str | Sequence[str] | None = None,
    ) -> m.HistoryResponse:
        """OHLCV candles (`interval` 1m by default), `start` inclusive and `end` exclusive on the
        candle's open time; at most 5000 per call. `fields` (e.g. `["trades", "vwap"]`) adds
        optional columns where the server offers them."""
        return await self.call(_core.history(symbol, interval, start, end, fill, exchange, fields))

    async def export_history(
        self,
        symbol: str,
        destination: _core.Destination,
        *,
        format: _core.ExportFormat = "csv",
        interval: m.Interval | None = None,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        fill: bool | None = None,
        exchange: str | None = None,
        fields: str | Sequence[str] | None = None,
    ) -> int:
        """Every candle of the range as CSV or Parquet (no 5000-candle cap), streamed into
        `destination` (a path or a binary file object); returns the bytes written."""
        return await self._export(
            _core.history(symbol, interval, start, end, fill, exchange, fields), format, destination
        )

    async def orderbook(
        self, symbol: str, *, depth: int | None = None, exchange: str | None = None
    ) -> m.OrderBookResponse:
        """The live order book's top `depth` levels a side (1-100; server default 20)."""
        return await self.call(_core.orderbook(symbol, depth, exchange))

    async def trades(
        self,
        symbol: str,
        *,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        exchange: str | None = None,
    ) -> m.TradesResponse:
        """One page of stored trades (at most `limit`, 1-1000); pass `next_cursor` as `cursor`
        for the next, or use `iter_trades`."""
        return await self.call(_core.trades(symbol, start, end, limit, cursor, exchange))

    async def export_trades(
        self,
        symbol: str,
        destination: _core.Destination,
        *,
        format: _core.ExportFormat = "csv",
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        exchange: str | None = None,
    ) -> int:
        """Every trade of the range as CSV or Parquet (without `limit`: no page cap), streamed into
        `destination`; returns the bytes written."""
        return await self._export(_core.trades(symbol, start, end, limit, cursor, exchange), format, destination)

    async def iter_trades(
        self,
        symbol: str,
        *,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        page_size: int | None = None,
        exchange: str | None = None,
    ) -> AsyncIterator[m.Trade]:
        """Every stored trade of the range, page after page (pages never skip or repeat a row)."""
        cursor: str | None = None
        while True:
            page = await self.trades(symbol, start=start, end=end, limit=page_size, cursor=cursor, exchange=exchange)
            for item in page.data:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def symbols(self) -> m.SymbolsResponse:
        """Every venue's symbol with a stored trade: first and last trade time and feed state."""
        return await self.call(_core.symbols())

    async def quality(
        self,
        symbol: str,
        *,
        kind: str | Sequence[str] | None = None,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        exchange: str | None = None,
    ) -> m.QualityResponse:
        """One page of data-quality events (gaps, resyncs, late trades, outages), oldest first;
        `kind` filters (`"book_gap"` or a list)."""
        return await self.call(_core.quality(symbol, kind, start, end, limit, cursor, exchange))

    async def iter_quality(
        self,
        symbol: str,
        *,
        kind: str | Sequence[str] | None = None,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        page_size: int | None = None,
        exchange: str | None = None,
    ) -> AsyncIterator[m.QualityItem]:
        """Every quality event of the range, page after page."""
        cursor: str | None = None
        while True:
            page = await self.quality(
                symbol, kind=kind, start=start, end=end, limit=page_size, cursor=cursor, exchange=exchange
            )
            for item in page.data:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # --- analysis ---

    async def risk(
        self,
        symbol: str,
        *,
        method: m.RiskMethod | None = None,
        interval: m.Interval | None = None,
        exchange: str | None = None,
    ) -> m.RiskResponse:
        """The latest one-day 95 % VaR, expected shortfall and volatility (default `ewma`, 1h)."""
        return await self.call(_core.risk(symbol, method, interval, exchange))

    async def risk_backtest(
        self,
        symbol: str,
        *,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        method: m.RiskMethod | None = None,
        interval: m.Interval | None = None,
        window_days: int | None = None,
        exchange: str | None = None,
    ) -> m.BacktestResponse:
        """VaR breaches with the Kupiec and Christoffersen tests, per method."""
        return await self.call(_core.risk_backtest(symbol, start, end, method, interval, window_days, exchange))

    async def prediction(
        self,
        symbol: str,
        *,
        timeframe: m.Timeframe | None = None,
        model: m.PredictionModel | None = None,
        exchange: str | None = None,
    ) -> m.PredictionResponse:
        """The latest forecast (default `ensemble`, 1h) with its calibrated confidence. A model
        still warming up raises `PredictionUnavailable` with `retry_after`."""
        return await self.call(_core.prediction(symbol, timeframe, model, exchange))

    async def prediction_metrics(
        self,
        symbol: str,
        *,
        timeframe: m.Timeframe | None = None,
        model: m.PredictionModel | None = None,
        exchange: str | None = None,
    ) -> m.MetricsResponse:
        """The live out-of-sample scores of each model and horizon."""
        return await self.call(_core.prediction_metrics(symbol, timeframe, model, exchange))

    # --- portfolio ---

    async def open_position(
        self,
        symbol: str,
        size: Decimal | int | str | float,
        type: m.PositionType,
        *,
        leverage: Decimal | int | str | float | None = None,
        idempotency_key: str | None = None,
    ) -> m.OpenPositionResponse:
        """Open a position at the latest price. Sent with `idempotency_key`, or a new uuid4 that
        every retry of this call repeats: a retried call never opens two positions."""
        return await self.call(_core.open_position(symbol, size, type, leverage, idempotency_key))

    async def positions(self) -> m.PositionsResponse:
        """The account's open positions, marked to the latest price."""
        return await self.call(_core.positions())

    async def close_position(self, position_id: str) -> m.ClosePositionResponse:
        """Close a position at the latest price (NotFound when the account holds no such one)."""
        return await self.call(_core.close_position(position_id))

    async def balance(self) -> m.BalanceResponse:
        """Cash, margin, unrealised PnL and equity of the account."""
        return await self.call(_core.balance())

    # --- operator ---

    async def ready(self) -> m.ReadinessResponse:
        """`/readyz`: whether the API's checks pass (`status` `ok` or `unavailable`; no raise on 503)."""
        return await self.call(_core.readiness())
