"""What the portfolio endpoints mean, between the routes and the command bus: the order's price,
request hashing, answering from the agent's event, marking positions to market. No SQL, no HTTP.

The API never decides anything about a portfolio: it writes a command and answers from the
event the portfolio agent publishes for it (docs/architecture.md, "Portfolio is event-sourced"). A
`PortfolioBus` hides how: `KafkaPortfolioBus` (api/portfolio_repository.py) in a served app,
`LocalPortfolioBus` (below: the agent's own pure core, in process) in tests and single-process
development. Both also hold the read model: the fold of every event seen (streams/core/portfolio.py),
the same fold the agent runs, so GET shows exactly what the agent decided.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from decimal import Decimal
from typing import Annotated, Literal, Protocol

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from api.errors import ApiError, ErrorCode
from api.market_service import live_trade
from api.models import DecimalString, UtcTimestamp, ns_to_datetime
from infra.store.repository import MarketRepository
from schemas.portfolio import (
    AccountOpened,
    ClosePosition,
    CloseRejected,
    OpenPosition,
    PortfolioEvent,
    PositionClosed,
    PositionOpened,
    PositionRejected,
    PositionType,
    RejectCode,
    RequestReplayed,
    SetBalance,
)
from streams.core.portfolio import AccountDefaults, AccountState, Ledger, decide, pnl

PortfolioCommand = OpenPosition | ClosePosition | SetBalance
RETRY_AFTER_S = "1"
ANSWER_TIMEOUT_S = 5.0  # how long a write waits for the agent's event before a retryable 503


class BusTimeout(Exception):
    """No event answered the command in time (it may still be decided later)."""


class BusUnavailable(Exception):
    """The bus cannot take commands (broker unreachable, read model not caught up)."""


class PortfolioBus(Protocol):
    defaults: AccountDefaults

    async def submit(self, command: PortfolioCommand, timeout_s: float) -> PortfolioEvent:
        """Write `command` and return the event that answers it (never AccountOpened)."""
        ...

    async def ledger(self) -> Ledger:
        """The read model, caught up at least to the events that existed when the bus started."""
        ...


def is_answer(event: PortfolioEvent) -> bool:
    """AccountOpened shares its command's id but only precedes the answer."""
    return not isinstance(event, AccountOpened)


class LocalPortfolioBus:
    """The agent's decisions in process, one command at a time (the lock plays the partition).
    For tests and one-process development; events go to `self.events`, not to a broker."""

    def __init__(self, defaults: AccountDefaults | None = None) -> None:
        self.defaults = defaults or AccountDefaults()
        self._ledger = Ledger()
        self._lock = asyncio.Lock()
        self.events: list[PortfolioEvent] = []

    async def submit(self, command: PortfolioCommand, timeout_s: float) -> PortfolioEvent:
        async with self._lock:
            events = decide(self._ledger, command, self.defaults)
            for event in events:
                self._ledger.apply(event)
                self.events.append(event)
        answers = [e for e in events if is_answer(e)]
        if not answers:
            raise BusTimeout(command.command_id)  # a reused command id: decided before, answered then
        return answers[-1]

    async def ledger(self) -> Ledger:
        return self._ledger


def request_hash(symbol: str, size: Decimal, position_type: PositionType, leverage: Decimal) -> str:
    """Equal for requests that mean the same (`"1.50"` and `"1.5"`), different otherwise."""
    canonical = "|".join((symbol, _canon(size), position_type.value, _canon(leverage)))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canon(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if value != 0 else "0"


def raise_rejection(event: PositionRejected | CloseRejected) -> None:
    if event.code is RejectCode.NOT_FOUND:
        raise ApiError(ErrorCode.NOT_FOUND, {"position_id": event.position_id} if isinstance(event, CloseRejected)
                       else None)
    details: dict[str, str] = dict(event.details) if isinstance(event, PositionRejected) else {}
    raise ApiError(ErrorCode(event.code.value), details or None)


def opened_from(event: PortfolioEvent) -> PositionOpened:
    """The answer to an open command as a PositionOpened, or the contract error it stands for."""
    if isinstance(event, RequestReplayed):
        event = event.original  # a retry: the first response, same status, same body
    if isinstance(event, PositionOpened):
        return event
    if isinstance(event, PositionRejected):
        raise_rejection(event)
    raise ApiError(ErrorCode.INTERNAL, None)


def closed_from(event: PortfolioEvent) -> PositionClosed:
    if isinstance(event, PositionClosed):
        return event
    if isinstance(event, CloseRejected):
        raise_rejection(event)
    raise ApiError(ErrorCode.INTERNAL, None)


def timeout_error() -> ApiError:
    return ApiError(
        ErrorCode.UNAVAILABLE,
        {"reason": "the portfolio agent did not answer in time; retrying with the same Idempotency-Key is safe"},
        headers={"Retry-After": RETRY_AFTER_S},
    )


def unavailable_error(reason: str) -> ApiError:
    return ApiError(ErrorCode.UNAVAILABLE, {"reason": reason}, headers={"Retry-After": RETRY_AFTER_S})


def account_view(ledger: Ledger, account: str, defaults: AccountDefaults) -> AccountState:
    """An account that never sent a command is the configured starting balance, nothing open."""
    state = ledger.get(account)
    if state is not None:
        return state
    return AccountState(account, defaults.balance, defaults.max_open_positions, defaults.max_symbol_notional)


# --- Request and response bodies -----------------------------------------------------------------

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
        gt=0, lt=Decimal("1e20"), decimal_places=8, allow_inf_nan=False,
        description="Base-asset amount, > 0 and under 1e20 (20 integer digits), at most 8 decimals.")
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


# --- The endpoints' use cases --------------------------------------------------------------------


def _last_prices(repository: MarketRepository, symbols: set[str]) -> dict[str, Decimal]:
    """Latest trade price per symbol (a symbol without trades keeps its entry price: pnl 0)."""
    out = {}
    for symbol in symbols:
        trade = repository.last_price(symbol)
        if trade is not None:
            out[symbol] = trade.price
    return out


async def _submit(bus: PortfolioBus, command: PortfolioCommand) -> PortfolioEvent:
    try:
        return await bus.submit(command, ANSWER_TIMEOUT_S)
    except BusTimeout:
        raise timeout_error() from None
    except BusUnavailable as exc:
        raise unavailable_error(str(exc)) from None


async def _account(bus: PortfolioBus, account: str) -> AccountState:
    try:
        ledger = await bus.ledger()
    except BusUnavailable as exc:
        raise unavailable_error(str(exc)) from None
    return account_view(ledger, account, bus.defaults)


# The market lookups block (chdb/ClickHouse clients): they run in the threadpool, as the plain
# `def` market routes do, while these coroutines wait on the bus.


async def open_position(
    bus: PortfolioBus, repository: MarketRepository, account: str, symbol: str, order: OpenPositionRequest,
    idempotency_key: str | None,
) -> OpenPositionResponse:
    """At the latest trade price; the agent checks margin and limits and answers with an event."""
    trade = await anyio.to_thread.run_sync(live_trade, repository, symbol, None)
    command = OpenPosition(
        account=account, command_id=uuid.uuid4().hex, symbol=symbol, type=order.type, size=order.size,
        leverage=order.leverage, price=trade.price, price_ts_ns=trade.event_ns, idempotency_key=idempotency_key,
        request_hash=request_hash(symbol, order.size, order.type, order.leverage), issued_ts_ns=time.time_ns(),
    )
    opened = opened_from(await _submit(bus, command))
    return OpenPositionResponse(position_id=opened.position_id, timestamp=ns_to_datetime(opened.ts_ns))


async def positions(bus: PortfolioBus, repository: MarketRepository, account: str) -> PositionsResponse:
    state = await _account(bus, account)
    held = sorted(state.positions.values(), key=lambda p: (p.opened_ts_ns, p.position_id))
    prices = await anyio.to_thread.run_sync(_last_prices, repository, {p.symbol for p in held})
    return PositionsResponse(positions=[
        Position(position_id=p.position_id, symbol=p.symbol, type=p.type, size=p.size, leverage=p.leverage,
                 entry_price=p.entry_price, current_price=prices.get(p.symbol, p.entry_price),
                 pnl=pnl(p.type, p.entry_price, prices.get(p.symbol, p.entry_price), p.size),
                 timestamp=ns_to_datetime(p.opened_ts_ns))
        for p in held
    ])


async def close_position(
    bus: PortfolioBus, repository: MarketRepository, account: str, position_id: str
) -> ClosePositionResponse:
    """At the latest trade price; 404 for a position the account does not hold open (another
    account's included, so ids cannot be probed)."""
    state = await _account(bus, account)
    position = state.positions.get(position_id)
    if position is None:
        raise ApiError(ErrorCode.NOT_FOUND, {"position_id": position_id[:64]})
    trade = await anyio.to_thread.run_sync(live_trade, repository, position.symbol, None)
    command = ClosePosition(account=account, command_id=uuid.uuid4().hex, position_id=position_id,
                            price=trade.price, price_ts_ns=trade.event_ns, issued_ts_ns=time.time_ns())
    closed = closed_from(await _submit(bus, command))
    return ClosePositionResponse(position_id=closed.position_id, exit_price=closed.exit_price, pnl=closed.pnl,
                                 timestamp=ns_to_datetime(closed.ts_ns))


async def balance(bus: PortfolioBus, repository: MarketRepository, account: str) -> BalanceResponse:
    state = await _account(bus, account)
    prices = await anyio.to_thread.run_sync(_last_prices, repository, {p.symbol for p in state.positions.values()})
    unrealized = sum((pnl(p.type, p.entry_price, prices.get(p.symbol, p.entry_price), p.size)
                      for p in state.positions.values()), Decimal(0))
    return BalanceResponse(
        balance=state.cash, used_margin=state.used_margin, free_balance=state.free_balance,
        unrealized_pnl=unrealized, equity=state.cash + unrealized, open_positions=len(state.positions),
        timestamp=ns_to_datetime(state.updated_ts_ns or time.time_ns()),
    )
