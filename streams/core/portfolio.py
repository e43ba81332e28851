"""The portfolio as a pure fold over `pf.events.v1`, and the decisions that produce the events.

Two functions carry everything:
- `Ledger.apply(event)`: the fold. State changes only here, only from events, without checks
  (an event is a fact). Replaying an account's events from the start gives its state.
- `decide(ledger, command, defaults)`: the events a command produces against the current state,
  without changing it. The agent applies each event right after publishing it.

Money rules (SPEC.md, "Portfolio"):
- required margin = size × price ÷ leverage, rounded UP to 8 places (never under-reserve);
- free balance = cash − margin of the open positions; PORT_001 when margin > free;
- then limits, PORT_002: open positions + 1 > max_open_positions, or the symbol's open notional
  (Σ size × entry price) + size × price > max_symbol_notional;
- pnl = (current − entry) × size for long, (entry − current) × size for short; leverage does not
  scale it. Closing realises pnl into cash (which may go below zero: paper losses are not capped
  at the margin; no liquidation is modelled).
- Idempotency: a request with a key the account has used within IDEMPOTENCY_TTL_NS (24 h) gets
  `RequestReplayed` with the first result when the request hash matches, IDEMPOTENCY_CONFLICT
  otherwise; neither changes positions or cash. After 24 h the key is forgotten (a new request).
  A command id already decided (a re-delivered command) produces nothing.

Bounded growth (issue 18, finding 8). Every clock here is event time (the command's
`issued_ts_ns`, written into its events), never the wall clock, so the agent and every API process
folding the same events forget exactly the same things, at replay as live:
- idempotency keys are kept 24 h after their first result, then dropped (rejections included:
  a rejected order is remembered only as long as its key is);
- decided command ids are kept for COMMAND_WINDOW_NS (24 h), and at most MAX_DECIDED_IDS per
  account. A re-delivery is minutes old, never a day; a command older than every id still kept
  (`stale_before_ns`) produces nothing, as a duplicate would, so forgetting an id can never let its
  command be decided twice.

All money arithmetic runs in one explicit decimal context (`MONEY`), never the caller's: the
default context keeps 28 significant digits, and a size of 20 integer digits times a price of
30 (what the commands admit, see schemas/portfolio.py) needs more. A decision whose arithmetic
still fails is a `PositionRejected` (BAD_REQUEST, with the reason), never an exception: an
exception would lose the command and stop the agent on every redelivery.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import (
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from infra.config.settings import Settings

from schemas.portfolio import (
    AccountOpened,
    BalanceSet,
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

QUANT = Decimal("0.00000001")  # the store's and the API's 8 places
# Wide enough for every product and sum of bounded inputs (size < 1e20 and price < 1e30, each with 8
# places: a product has at most 66 digits), trapping what would otherwise pass silently as NaN or inf.
MONEY = Context(prec=100, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])

# Commands are authenticated (issue 18, finding 7): the API puts an HMAC-SHA256 of the message's
# key and value, with a key only it and the agent hold, in this Kafka header; the agent decides
# nothing without a valid one. A captured command produced again is a duplicate (`decided`) or,
# past the id window, stale (`stale_before_ns`): it is never decided twice either.
SIGNATURE_HEADER = "entasis-signature"
COMMANDS_SIGNATURE_DOMAIN = b"entasis pf.commands v1\x00"
# `set_balance` is an operator's command, not the API's (issue 18, finding 7): it travels on its own
# topic (`pf.admin.v1`), signed with another key (ENTASIS_PORTFOLIO_ADMIN_KEY) under another
# domain, so neither the API's key nor a signature copied from the commands topic can set a balance.
ADMIN_SIGNATURE_DOMAIN = b"entasis pf.admin v1\x00"
# Events are signed too (issue 18): every reader of `pf.events.v1` (the agent's rebuild, the API's
# read model, the `portfolio_events` sink, `entasis portfolio rebuild`) folds or stores only what
# the agent signed, with the commands' key (which the API holds already) under a third domain, so
# a signed command can never pass for an event, nor an event for a command.
EVENTS_SIGNATURE_DOMAIN = b"entasis pf.events v1\x00"


def command_signature(secret: bytes, key: bytes, value: bytes, domain: bytes = COMMANDS_SIGNATURE_DOMAIN) -> str:
    # the key's length goes first so no (key, value) split of the same bytes signs alike
    message = domain + len(key).to_bytes(4, "big") + key + value
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def admin_signature(secret: bytes, key: bytes, value: bytes) -> str:
    """The signature of an operator's command on `pf.admin.v1`."""
    return command_signature(secret, key, value, ADMIN_SIGNATURE_DOMAIN)


def event_signature(secret: bytes, key: bytes, value: bytes) -> str:
    """The signature of an event the agent publishes on `pf.events.v1`."""
    return command_signature(secret, key, value, EVENTS_SIGNATURE_DOMAIN)


def event_headers(secret: bytes, key: bytes, value: bytes) -> list[tuple[str, bytes]]:
    """The Kafka headers an event is published with."""
    return [(SIGNATURE_HEADER, event_signature(secret, key, value).encode())]


def event_signed(secret: bytes, key: bytes | None, value: bytes,
                 headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None) -> bool:
    """Whether an event read from `pf.events.v1` is the agent's (an empty secret trusts none)."""
    return bool(secret) and signature_valid(secret, key or b"", value, header_value(headers, SIGNATURE_HEADER),
                                            EVENTS_SIGNATURE_DOMAIN)


def header_value(headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """A header of a Kafka message as Faust or aiokafka hand it over (a mapping or pairs)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for header, value in pairs:
        if header == name:
            return value if isinstance(value, bytes) else str(value).encode()
    return None


def signature_valid(secret: bytes, key: bytes, value: bytes, signature: bytes | None,
                    domain: bytes = COMMANDS_SIGNATURE_DOMAIN) -> bool:
    if signature is None:
        return False
    return hmac.compare_digest(command_signature(secret, key, value, domain).encode(), signature)


HOUR_NS = 3600 * 10**9
IDEMPOTENCY_TTL_NS = 24 * HOUR_NS  # documented API contract: a key answers retries for 24 h
COMMAND_WINDOW_NS = 24 * HOUR_NS  # re-deliveries after a crash come within minutes
MAX_DECIDED_IDS = 10_000  # per account, whatever its rate: bounds memory between two windows


class _Head(TypedDict):
    account: str
    command_id: str
    seq: int
    ts_ns: int


class _Ident(TypedDict):
    idempotency_key: str | None
    request_hash: str


@dataclass(frozen=True)
class AccountDefaults:
    """What a new account starts with (written into its AccountOpened event)."""

    balance: Decimal = Decimal("100000")
    max_open_positions: int = 50
    max_symbol_notional: Decimal = Decimal("1000000")

    @classmethod
    def from_settings(cls, settings: Settings) -> AccountDefaults:
        """From the `portfolio` section of the settings (ENTASIS_PORTFOLIO_*)."""
        section = settings.portfolio
        return cls(balance=section.initial_balance, max_open_positions=section.max_open_positions,
                   max_symbol_notional=section.max_symbol_notional)


@dataclass
class Position:
    position_id: str
    symbol: str
    type: PositionType
    size: Decimal
    leverage: Decimal
    entry_price: Decimal
    margin: Decimal
    opened_ts_ns: int

    @property
    def notional(self) -> Decimal:
        return MONEY.multiply(self.size, self.entry_price)


@dataclass
class AccountState:
    account: str
    cash: Decimal
    max_open_positions: int
    max_symbol_notional: Decimal
    seq: int = 0  # the last applied event's number
    updated_ts_ns: int = 0
    positions: dict[str, Position] = field(default_factory=dict)  # open ones only
    # command id -> its event time, oldest first (insertion order: pruning pops from the front)
    decided: dict[str, int] = field(default_factory=dict)
    stale_before_ns: int = 0  # commands issued at or before this are refused: their ids may be forgotten
    idempotency: dict[str, PositionOpened | PositionRejected] = field(default_factory=dict)  # key -> first result
    clock_ns: int = 0  # the latest event time seen (events of several API processes may interleave)

    def forget_expired(self) -> None:
        """Drop ids and keys past their window. Both dicts are in insertion (event) order, which is
        time order up to the skew between API clocks, so popping from the front is amortised O(1);
        an entry behind a slightly newer one is dropped a little later, never earlier."""
        horizon = self.clock_ns - COMMAND_WINDOW_NS
        while self.decided:
            oldest_id, ts = next(iter(self.decided.items()))
            if ts > horizon and len(self.decided) <= MAX_DECIDED_IDS:
                break
            del self.decided[oldest_id]
            self.stale_before_ns = max(self.stale_before_ns, ts)
        expiry = self.clock_ns - IDEMPOTENCY_TTL_NS
        while self.idempotency:
            key, first = next(iter(self.idempotency.items()))
            if first.ts_ns > expiry:
                break
            del self.idempotency[key]

    def first_result(self, key: str, now_ns: int) -> PositionOpened | PositionRejected | None:
        """The key's first result if it is still within its TTL at `now_ns` (the same answer
        whether or not the fold has pruned it yet)."""
        first = self.idempotency.get(key)
        if first is None or first.ts_ns <= now_ns - IDEMPOTENCY_TTL_NS:
            return None
        return first

    @property
    def used_margin(self) -> Decimal:
        with localcontext(MONEY):
            return sum((p.margin for p in self.positions.values()), Decimal(0))

    @property
    def free_balance(self) -> Decimal:
        return MONEY.subtract(self.cash, self.used_margin)

    def symbol_notional(self, symbol: str) -> Decimal:
        with localcontext(MONEY):
            return sum((p.notional for p in self.positions.values() if p.symbol == symbol), Decimal(0))


def required_margin(size: Decimal, price: Decimal, leverage: Decimal) -> Decimal:
    with localcontext(MONEY):
        return (size * price / leverage).quantize(QUANT, rounding=ROUND_CEILING)


def pnl(position_type: PositionType, entry: Decimal, current: Decimal, size: Decimal) -> Decimal:
    with localcontext(MONEY):
        diff = current - entry if position_type is PositionType.LONG else entry - current
        return (diff * size).quantize(QUANT, rounding=ROUND_HALF_EVEN)


class Ledger:
    """Every account's state: the fold over the events seen so far."""

    def __init__(self) -> None:
        self.accounts: dict[str, AccountState] = {}

    def get(self, account: str) -> AccountState | None:
        return self.accounts.get(account)

    def apply(self, event: PortfolioEvent) -> None:
        if isinstance(event, AccountOpened):
            self.accounts[event.account] = AccountState(
                event.account, event.balance, event.max_open_positions, event.max_symbol_notional)
        state = self.accounts.get(event.account)
        if state is None:  # an event before the account's AccountOpened: not from our agent
            raise ValueError(f"event {event.kind} seq {event.seq} for unknown account {event.account}")
        state.seq, state.updated_ts_ns = event.seq, event.ts_ns
        state.clock_ns = max(state.clock_ns, event.ts_ns)
        state.decided[event.command_id] = event.ts_ns
        if isinstance(event, BalanceSet):
            state.cash = event.balance
            state.max_open_positions, state.max_symbol_notional = event.max_open_positions, event.max_symbol_notional
        elif isinstance(event, PositionOpened):
            state.positions[event.position_id] = Position(
                event.position_id, event.symbol, event.type, event.size, event.leverage, event.entry_price,
                event.margin, event.ts_ns)
            if event.idempotency_key is not None:
                _remember(state, event.idempotency_key, event)
        elif isinstance(event, PositionRejected):
            if event.idempotency_key is not None and event.code is not RejectCode.IDEMPOTENCY_CONFLICT:
                _remember(state, event.idempotency_key, event)
        elif isinstance(event, PositionClosed):
            state.positions.pop(event.position_id, None)
            state.cash = MONEY.add(state.cash, event.pnl)
        # CloseRejected, RequestReplayed: answers only, no state beyond seq and `decided`.
        state.forget_expired()


def _remember(state: AccountState, key: str, first: PositionOpened | PositionRejected) -> None:
    # pop first: re-assigning an expired key in place would keep its old place at the front of the
    # insertion order, and the new result would be pruned as if it were the old one
    state.idempotency.pop(key, None)
    state.idempotency[key] = first


def decide(
    ledger: Ledger, command: OpenPosition | ClosePosition | SetBalance, defaults: AccountDefaults
) -> list[PortfolioEvent]:
    """The events `command` produces now, in order; [] for a command already decided."""
    state = ledger.get(command.account)
    events: list[PortfolioEvent] = []
    if state is None:
        events.append(AccountOpened(
            account=command.account, command_id=command.command_id, seq=1, ts_ns=command.issued_ts_ns,
            balance=defaults.balance, max_open_positions=defaults.max_open_positions,
            max_symbol_notional=defaults.max_symbol_notional))
        state = AccountState(command.account, defaults.balance, defaults.max_open_positions,
                             defaults.max_symbol_notional, seq=1)
    elif command.command_id in state.decided or command.issued_ts_ns <= state.stale_before_ns:
        # decided before, or too old for its id to be known still: either way not decided again
        return []
    head = _Head(account=command.account, command_id=command.command_id, seq=state.seq + 1,
                 ts_ns=command.issued_ts_ns)
    if isinstance(command, SetBalance):
        events.append(BalanceSet(
            **head, balance=command.balance,
            max_open_positions=(command.max_open_positions if command.max_open_positions is not None
                                else state.max_open_positions),
            max_symbol_notional=(command.max_symbol_notional if command.max_symbol_notional is not None
                                 else state.max_symbol_notional)))
    elif isinstance(command, ClosePosition):
        position = state.positions.get(command.position_id)
        if position is None:
            events.append(CloseRejected(**head, position_id=command.position_id, code=RejectCode.NOT_FOUND))
        else:
            try:
                realised = pnl(position.type, position.entry_price, command.price, position.size)
            except ArithmeticError:
                events.append(CloseRejected(**head, position_id=command.position_id, code=RejectCode.BAD_REQUEST))
            else:
                events.append(PositionClosed(**head, position_id=position.position_id, exit_price=command.price,
                                             pnl=realised))
    else:
        try:
            events.append(_open(state, command, head))
        except ArithmeticError:
            # the reason reaches the client: what was wrong, not which exception said so
            events.append(PositionRejected(
                **head, code=RejectCode.BAD_REQUEST, idempotency_key=command.idempotency_key,
                request_hash=command.request_hash,
                details={"reason": "size, price and leverage give no valid margin"}))
    return events


def _open(state: AccountState, command: OpenPosition, head: _Head) -> PortfolioEvent:
    key = command.idempotency_key
    first = state.first_result(key, command.issued_ts_ns) if key is not None else None
    if key is not None and first is not None:
        if first.request_hash == command.request_hash:
            return RequestReplayed(**head, original=first)
        return PositionRejected(**head, code=RejectCode.IDEMPOTENCY_CONFLICT, idempotency_key=key,
                                request_hash=command.request_hash)
    ident = _Ident(idempotency_key=key, request_hash=command.request_hash)
    margin = required_margin(command.size, command.price, command.leverage)
    free = state.free_balance
    if margin > free:
        return PositionRejected(**head, code=RejectCode.PORT_001, **ident,
                                details={"required_margin": _s(margin), "free_balance": _s(free)})
    if len(state.positions) + 1 > state.max_open_positions:
        return PositionRejected(**head, code=RejectCode.PORT_002, **ident,
                                details={"limit": "max_open_positions", "max": str(state.max_open_positions)})
    notional = MONEY.add(state.symbol_notional(command.symbol), MONEY.multiply(command.size, command.price))
    if notional > state.max_symbol_notional:
        return PositionRejected(**head, code=RejectCode.PORT_002, **ident,
                                details={"limit": "max_symbol_notional", "max": _s(state.max_symbol_notional),
                                         "notional": _s(notional)})
    return PositionOpened(
        **head, position_id=command.command_id, symbol=command.symbol, type=command.type,
        size=command.size, leverage=command.leverage, entry_price=command.price, margin=margin, **ident)


def _s(value: Decimal) -> str:
    return format(value.quantize(QUANT, context=MONEY), "f")
