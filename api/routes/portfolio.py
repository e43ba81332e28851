"""`/portfolio/positions` (list, open, close) and `/portfolio/balance`, event-sourced: writes
are commands answered by the portfolio agent's events; reads come from the fold of those events
(api/portfolio_service.py). Every route acts for the authenticated account only: a position of
another account is 404 exactly like one that never existed, so ids cannot be probed.

Async routes: they wait on the bus. The market lookups (blocking chdb/ClickHouse clients) run in
the threadpool, as the plain `def` market routes do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Path, Request, Security
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from api.errors import ApiError, ErrorCode, openapi_error_responses
from api.market_service import last_trade
from api.models import DecimalString, UtcTimestamp, format_timestamp, ns_to_datetime
from api.params import parse_symbol
from api.portfolio_service import (
    BusTimeout,
    BusUnavailable,
    PortfolioBus,
    PortfolioCommand,
    account_view,
    closed_from,
    opened_from,
    request_hash,
    timeout_error,
    unavailable_error,
)
from api.principal import PORTFOLIO_READ, PORTFOLIO_WRITE, Principal
from api.routes.market import get_repository
from api.security import SECURITY_ERRORS, require_scope
from infra.store.repository import FEED_DOWN_KINDS, LastTrade, MarketRepository
from schemas.portfolio import ClosePosition, OpenPosition, PortfolioEvent, PositionType
from streams.core.portfolio import AccountDefaults, AccountState, pnl

router = APIRouter(prefix="/portfolio", tags=["portfolio"])

ANSWER_TIMEOUT_S = 5.0  # how long a write waits for the agent's event before a retryable 503

Reader = Annotated[Principal, Security(require_scope(PORTFOLIO_READ))]
Writer = Annotated[Principal, Security(require_scope(PORTFOLIO_WRITE))]
Repository = Annotated[MarketRepository, Depends(get_repository)]


async def get_bus(request: Request) -> PortfolioBus:
    """The app's bus (`app.state.portfolio_bus`); when none was wired, one on the process's
    Kafka settings, started on first use (its replay of pf.events is the price of the first call)."""
    bus: PortfolioBus | None = getattr(request.app.state, "portfolio_bus", None)
    if bus is not None:
        return bus
    lock = getattr(request.app.state, "portfolio_bus_lock", None)
    if lock is None:  # one per app (and so per event loop); no await between the check and the set
        lock = request.app.state.portfolio_bus_lock = asyncio.Lock()
    async with lock:
        bus = getattr(request.app.state, "portfolio_bus", None)
        if bus is None:
            from api.portfolio_repository import KafkaPortfolioBus
            from infra.config.settings import get_settings

            settings = get_settings()
            kafka = KafkaPortfolioBus(settings.kafka_bootstrap, settings.topic_namespace,
                                      AccountDefaults.from_settings(settings))
            try:
                await kafka.start()
            except Exception as exc:  # broker down or topics missing: retryable, never a 500
                await kafka.close()
                raise unavailable_error(f"portfolio bus unavailable: {type(exc).__name__}") from exc
            request.app.state.portfolio_bus = bus = kafka
    return bus


async def close_portfolio_bus(app: object) -> None:
    """For the app's lifespan: stop the bus `get_bus` may have started."""
    state = getattr(app, "state", None)
    bus = getattr(state, "portfolio_bus", None)
    close = getattr(bus, "close", None)
    if close is not None:
        await close()
        state.portfolio_bus = None  # type: ignore[union-attr]


Bus = Annotated[PortfolioBus, Depends(get_bus)]


# The schema says what the model accepts (decimal strings, as everywhere in the API), so a
# schema-valid body is never refused. No look-arounds: generators of examples do not all know them.
_FRACTION_POSITIVE = "|".join(f"0{{{i}}}[1-9][0-9]{{0,{7 - i}}}" for i in range(8))
_POSITIVE_8DP = rf"^([1-9][0-9]{{0,19}}(\.[0-9]{{1,8}})?|0?\.({_FRACTION_POSITIVE}))$"
_LEVERAGE = r"^(100(\.0{1,8})?|[1-9][0-9]?(\.[0-9]{1,8})?)$"


class OpenPositionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"symbol": "BTC-USDT", "size": "1.5", "type": "long", "leverage": "1"}]},
    )

    symbol: str = Field(max_length=64, description="`BASE-QUOTE`, case-insensitive.", examples=["BTC-USDT"],
                        json_schema_extra={"pattern": r"^[A-Za-z0-9]{1,15}-[A-Za-z0-9]{1,15}$"})
    size: Annotated[Decimal, WithJsonSchema({"type": "string", "pattern": _POSITIVE_8DP, "examples": ["1.5"]})] = Field(
        gt=0, decimal_places=8, allow_inf_nan=False, description="Base-asset amount, > 0, at most 8 decimals.")
    type: PositionType
    leverage: Annotated[Decimal, WithJsonSchema({"type": "string", "pattern": _LEVERAGE, "examples": ["1"]})] = Field(
        default=Decimal(1), ge=1, le=100, decimal_places=8, allow_inf_nan=False,
        description="1 to 100, at most 8 decimals; required margin = size × price ÷ leverage.")


class OpenPositionResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    position_id: str
    status: Literal["success"] = "success"
    timestamp: UtcTimestamp


class Position(BaseModel):
    model_config = ConfigDict(frozen=True)

    position_id: str
    symbol: str
    type: PositionType
    size: DecimalString
    leverage: DecimalString
    entry_price: DecimalString = Field(description="The latest trade price when the position opened.")
    current_price: DecimalString = Field(description="The latest trade price now.")
    pnl: DecimalString = Field(description="(current − entry) × size for long, (entry − current) × size for short.")
    timestamp: UtcTimestamp = Field(description="When the position opened.")


class PositionsResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    positions: list[Position]


class ClosePositionResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    position_id: str
    status: Literal["closed"] = "closed"
    exit_price: DecimalString
    pnl: DecimalString = Field(description="Realised into the balance.")
    timestamp: UtcTimestamp


class BalanceResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    balance: DecimalString = Field(description="Cash: the starting (or set) balance plus realised PnL.")
    used_margin: DecimalString = Field(description="Margin held by open positions.")
    free_balance: DecimalString = Field(description="balance − used_margin: what new positions can use.")
    unrealized_pnl: DecimalString
    equity: DecimalString = Field(description="balance + unrealized_pnl.")
    open_positions: int
    timestamp: UtcTimestamp = Field(description="Time of the account's last event (or now, for a new account).")


_WRITE_ERRORS = openapi_error_responses({
    400: [ErrorCode.BAD_REQUEST, ErrorCode.MARKET_001],
    404: [ErrorCode.MARKET_001, ErrorCode.NOT_FOUND],
    409: [ErrorCode.IDEMPOTENCY_CONFLICT],
    422: [ErrorCode.PORT_001, ErrorCode.PORT_002],
    500: [ErrorCode.INTERNAL],
    503: [ErrorCode.UNAVAILABLE, ErrorCode.MARKET_002],
    **SECURITY_ERRORS,
})
_READ_ERRORS = openapi_error_responses({500: [ErrorCode.INTERNAL], 503: [ErrorCode.UNAVAILABLE], **SECURITY_ERRORS})
_CLOSE_ERRORS = openapi_error_responses({
    400: [ErrorCode.BAD_REQUEST], 404: [ErrorCode.NOT_FOUND], 500: [ErrorCode.INTERNAL],
    503: [ErrorCode.UNAVAILABLE, ErrorCode.MARKET_002],
    **SECURITY_ERRORS,
})


def _fresh_price(repository: MarketRepository, symbol: str) -> LastTrade:
    """The latest trade (404 MARKET_001 for a symbol not served); MARKET_002 while its feed is
    marked down with no trade since: the same rule as GET /market/price, so no order fills at
    a price the market data API would refuse to show."""
    trade = last_trade(repository, symbol, None)
    state = repository.feed_state(symbol, trade.venue)
    if state is not None and state.kind in FEED_DOWN_KINDS and state.event_ns >= trade.event_ns:
        raise ApiError(ErrorCode.MARKET_002, {"symbol": symbol, "exchange": trade.venue, "state": state.kind,
                                              "since": format_timestamp(ns_to_datetime(state.event_ns))})
    return trade


async def _submit(bus: PortfolioBus, command: PortfolioCommand) -> PortfolioEvent:
    try:
        return await bus.submit(command, ANSWER_TIMEOUT_S)
    except BusTimeout:
        raise timeout_error() from None
    except BusUnavailable as exc:
        raise unavailable_error(str(exc)) from None


async def _ledger_view(bus: PortfolioBus, account: str) -> AccountState:
    try:
        ledger = await bus.ledger()
    except BusUnavailable as exc:
        raise unavailable_error(str(exc)) from None
    return account_view(ledger, account, bus.defaults)


IdempotencyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", pattern=r"^[\x21-\x7e]{1,128}$",
           description="Makes retries safe: a repeat with the same key returns the first response and opens "
                       "nothing new (also across API restarts); the same key with another body is 409."),
]


@router.post(
    "/positions",
    status_code=201,
    response_model=OpenPositionResponse,
    summary="Open a position",
    description=(
        "Checks, in order: request shape (400 `BAD_REQUEST`), symbol (`MARKET_001`), required margin "
        "(size × latest price ÷ leverage) against the free balance (422 `PORT_001`), the account's limits on open "
        "positions and per-symbol notional (422 `PORT_002`). The entry price is the latest trade price. A 503 means "
        "the outcome is unknown: retry with the same `Idempotency-Key`."
    ),
    responses=_WRITE_ERRORS,
)
async def open_position(
    body: OpenPositionRequest, principal: Writer, repository: Repository, bus: Bus,
    idempotency_key: IdempotencyHeader = None,
) -> OpenPositionResponse:
    symbol = parse_symbol(body.symbol)
    trade = await anyio.to_thread.run_sync(_fresh_price, repository, symbol)
    command = OpenPosition(
        account=principal.account, command_id=uuid.uuid4().hex, symbol=symbol, type=body.type, size=body.size,
        leverage=body.leverage, price=trade.price, price_ts_ns=trade.event_ns, idempotency_key=idempotency_key,
        request_hash=request_hash(symbol, body.size, body.type, body.leverage), issued_ts_ns=time.time_ns(),
    )
    opened = opened_from(await _submit(bus, command))
    return OpenPositionResponse(position_id=opened.position_id, timestamp=ns_to_datetime(opened.ts_ns))


@router.get("/positions", response_model=PositionsResponse, summary="Open positions, marked to the latest price",
            responses=_READ_ERRORS)
async def list_positions(principal: Reader, repository: Repository, bus: Bus) -> PositionsResponse:
    state = await _ledger_view(bus, principal.account)
    positions = sorted(state.positions.values(), key=lambda p: (p.opened_ts_ns, p.position_id))
    prices = await anyio.to_thread.run_sync(_last_prices, repository, {p.symbol for p in positions})
    return PositionsResponse(positions=[
        Position(position_id=p.position_id, symbol=p.symbol, type=p.type, size=p.size, leverage=p.leverage,
                 entry_price=p.entry_price, current_price=prices.get(p.symbol, p.entry_price),
                 pnl=pnl(p.type, p.entry_price, prices.get(p.symbol, p.entry_price), p.size),
                 timestamp=ns_to_datetime(p.opened_ts_ns))
        for p in positions
    ])


def _last_prices(repository: MarketRepository, symbols: set[str]) -> dict[str, Decimal]:
    """Latest trade price per symbol (a symbol without trades keeps its entry price: pnl 0)."""
    out = {}
    for symbol in symbols:
        trade = repository.last_price(symbol)
        if trade is not None:
            out[symbol] = trade.price
    return out


@router.delete(
    "/positions/{position_id}",
    response_model=ClosePositionResponse,
    summary="Close a position at the latest price",
    description="Realises the PnL into the balance. 404 for a position the caller does not hold open.",
    responses=_CLOSE_ERRORS,
)
async def close_position(
    principal: Writer, repository: Repository, bus: Bus,
    position_id: Annotated[str, Path(max_length=64)],
) -> ClosePositionResponse:
    state = await _ledger_view(bus, principal.account)
    position = state.positions.get(position_id)
    if position is None:
        raise ApiError(ErrorCode.NOT_FOUND, {"position_id": position_id[:64]})
    trade = await anyio.to_thread.run_sync(_fresh_price, repository, position.symbol)
    command = ClosePosition(account=principal.account, command_id=uuid.uuid4().hex, position_id=position_id,
                            price=trade.price, price_ts_ns=trade.event_ns, issued_ts_ns=time.time_ns())
    closed = closed_from(await _submit(bus, command))
    return ClosePositionResponse(position_id=closed.position_id, exit_price=closed.exit_price, pnl=closed.pnl,
                                 timestamp=ns_to_datetime(closed.ts_ns))


@router.get("/balance", response_model=BalanceResponse, summary="Cash, margin and equity of the account",
            responses=_READ_ERRORS)
async def get_balance(principal: Reader, repository: Repository, bus: Bus) -> BalanceResponse:
    state = await _ledger_view(bus, principal.account)
    prices = await anyio.to_thread.run_sync(_last_prices, repository, {p.symbol for p in state.positions.values()})
    unrealized = sum((pnl(p.type, p.entry_price, prices.get(p.symbol, p.entry_price), p.size)
                      for p in state.positions.values()), Decimal(0))
    return BalanceResponse(
        balance=state.cash, used_margin=state.used_margin, free_balance=state.free_balance,
        unrealized_pnl=unrealized, equity=state.cash + unrealized, open_positions=len(state.positions),
        timestamp=ns_to_datetime(state.updated_ts_ns or time.time_ns()),
    )

