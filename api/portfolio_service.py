"""What the portfolio endpoints mean, between the routes and the command bus: request hashing,
answering from the agent's event, marking positions to market. No SQL, no HTTP.

The API never decides anything about a portfolio: it writes a command and answers from the
event the portfolio agent publishes for it (DESIGN.md, "Portfolio is event-sourced"). A
`PortfolioBus` hides how: `KafkaPortfolioBus` (api/portfolio_repository.py) in a served app,
`LocalPortfolioBus` (below: the agent's own pure core, in process) in tests and single-process
development. Both also hold the read model: the fold of every event seen (streams/core/portfolio.py),
the same fold the agent runs, so GET shows exactly what the agent decided.
"""

from __future__ import annotations

import asyncio
import hashlib
from decimal import Decimal
from typing import Protocol

from api.errors import ApiError, ErrorCode
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
from streams.core.portfolio import AccountDefaults, AccountState, Ledger, decide

PortfolioCommand = OpenPosition | ClosePosition | SetBalance
RETRY_AFTER_S = "1"


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
    """The answer to an open command as a PositionOpened, or the SPEC error it stands for."""
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
