"""The portfolio's wire contract: commands on `pf.commands.v1` and events on `pf.events.v1`,
both keyed by account so one account's commands are decided in order, by one agent, and its
events stay ordered in one partition.

Events are the source of truth: positions and balances are a fold over `pf.events.v1`
(streams/core/portfolio.py). So every event carries what the fold needs and nothing it would
have to look up elsewhere: the entry price and margin of an opened position, the realised PnL
of a closed one, the limits an account starts with. `seq` numbers an account's events 1, 2, ...
so a reader can tell a gap or a duplicate; `ts_ns` is the issuing command's time (the API's
clock), never the agent's, so a replay decides and stamps exactly the same events.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from schemas.events import DecimalStr, NanoTime, Symbol

COMMANDS_TOPIC_NAME = "pf.commands.v1"
EVENTS_TOPIC_NAME = "pf.events.v1"
# An operator's commands (`set_balance`), never the API's: their own topic and signing key
# (streams/agents/portfolio.py), so the API's key cannot set a balance.
ADMIN_TOPIC_NAME = "pf.admin.v1"

Account = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@|+-]{0,127}$")]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# Idempotency-Key header values: printable ASCII, bounded (they are kept per account forever).
IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,128}$")]

# Bounds of a command's decimals: what the API's request schema admits (a size of at most 20 integer
# digits), what the store holds (Decimal(38, 8): under 1e30), 8 places at most. Within them the agent's
# money arithmetic is exact (streams/core/portfolio.py); beyond them a command is refused at the door.
MAX_SIZE = Decimal("1e20")  # exclusive
MAX_MONEY = Decimal("1e30")  # exclusive: prices, balances, notional limits
MAX_POSITIONS = 2**31 - 1  # a limit on open positions (kept in snapshots and the store as a 64-bit integer)
Size = Annotated[DecimalStr, Field(gt=0, lt=MAX_SIZE, decimal_places=8)]
Leverage = Annotated[DecimalStr, Field(ge=1, le=100, decimal_places=8)]
Price = Annotated[DecimalStr, Field(gt=0, lt=MAX_MONEY, decimal_places=8)]
Money = Annotated[DecimalStr, Field(gt=-MAX_MONEY, lt=MAX_MONEY)]


class PositionType(StrEnum):
    LONG = "long"
    SHORT = "short"


class RejectCode(StrEnum):
    """The SPEC error codes the agent can answer with (api/errors.py renders them)."""

    PORT_001 = "PORT_001"  # required margin above free balance
    PORT_002 = "PORT_002"  # open-position count or per-symbol notional limit
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"  # key reused with a different request
    NOT_FOUND = "NOT_FOUND"  # close of a position the account does not hold open
    BAD_REQUEST = "BAD_REQUEST"  # values whose arithmetic fails (details: reason)


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    account: Account
    command_id: Id  # the API's correlation id; an event names the command that caused it


# --- commands ------------------------------------------------------------------------------

# The envelope key every other format carries. A default, not a required field: pf.events.v1 is
# kept forever and holds events written before the key existed.
COMMAND_FORMAT: Final = "portfolio_command.v1"
EVENT_FORMAT: Final = "portfolio_event.v1"


class _Command(_Message):
    schema_version: Literal["portfolio_command.v1"] = COMMAND_FORMAT


class OpenPosition(_Command):
    """`price` is the latest trade price the API looked up when it accepted the request (see
    streams/agents/portfolio.py for why the price travels in the command)."""

    kind: Literal["open_position"] = "open_position"
    symbol: Symbol
    type: PositionType
    size: Size
    leverage: Leverage
    price: Price
    price_ts_ns: NanoTime
    idempotency_key: IdempotencyKey | None = None
    request_hash: str = ""  # sha256 of the normalised request; compared when a key is reused
    issued_ts_ns: NanoTime


class ClosePosition(_Command):
    kind: Literal["close_position"] = "close_position"
    position_id: Id
    price: Price  # the latest trade price of the position's symbol
    price_ts_ns: NanoTime
    issued_ts_ns: NanoTime


class SetBalance(_Command):
    """Set an account's cash balance (and, when given, its limits): `entasis portfolio set-balance`."""

    kind: Literal["set_balance"] = "set_balance"
    balance: Money
    max_open_positions: Annotated[int, Field(ge=0, le=MAX_POSITIONS)] | None = None
    max_symbol_notional: Annotated[DecimalStr, Field(ge=0, lt=MAX_MONEY)] | None = None
    issued_ts_ns: NanoTime


Command = Annotated[OpenPosition | ClosePosition | SetBalance, Field(discriminator="kind")]
COMMAND_ADAPTER: TypeAdapter[OpenPosition | ClosePosition | SetBalance] = TypeAdapter(Command)
# What each topic admits: orders on pf.commands.v1 (the API's), set_balance on pf.admin.v1 (an
# operator's). The agent decodes both with COMMAND_ADAPTER and refuses a kind on the wrong topic.
ORDER_ADAPTER: TypeAdapter[OpenPosition | ClosePosition] = TypeAdapter(
    Annotated[OpenPosition | ClosePosition, Field(discriminator="kind")])
ADMIN_ADAPTER: TypeAdapter[SetBalance] = TypeAdapter(SetBalance)


# --- events ----------------------------------------------------------------------------------


class _Event(_Message):
    schema_version: Literal["portfolio_event.v1"] = EVENT_FORMAT
    seq: Annotated[int, Field(ge=1, le=2**63 - 1)]  # the account's event number
    ts_ns: NanoTime


class AccountOpened(_Event):
    """An account's first event: the paper balance and limits it starts with (the agent's
    configured defaults at that moment, written down so a replay never depends on config)."""

    kind: Literal["account_opened"] = "account_opened"
    balance: DecimalStr
    max_open_positions: Annotated[int, Field(ge=0, le=MAX_POSITIONS)]
    max_symbol_notional: DecimalStr = Field(ge=0)


class BalanceSet(_Event):
    kind: Literal["balance_set"] = "balance_set"
    balance: DecimalStr
    max_open_positions: Annotated[int, Field(ge=0, le=MAX_POSITIONS)]
    max_symbol_notional: DecimalStr = Field(ge=0)


class PositionOpened(_Event):
    kind: Literal["position_opened"] = "position_opened"
    position_id: Id
    symbol: Symbol
    type: PositionType
    size: DecimalStr
    leverage: DecimalStr
    entry_price: DecimalStr
    margin: DecimalStr  # size × entry_price ÷ leverage, held out of the free balance while open
    idempotency_key: IdempotencyKey | None = None
    request_hash: str = ""


class PositionRejected(_Event):
    kind: Literal["position_rejected"] = "position_rejected"
    code: RejectCode
    details: dict[str, str] = Field(default_factory=dict)
    idempotency_key: IdempotencyKey | None = None
    request_hash: str = ""


class PositionClosed(_Event):
    kind: Literal["position_closed"] = "position_closed"
    position_id: Id
    exit_price: DecimalStr
    pnl: DecimalStr  # realised into the cash balance


class CloseRejected(_Event):
    kind: Literal["close_rejected"] = "close_rejected"
    position_id: Id
    code: RejectCode


class RequestReplayed(_Event):
    """A retried request (same Idempotency-Key, same body): the first result, unchanged. It
    changes no state; it exists so the waiting API gets an answer to its new command id."""

    kind: Literal["request_replayed"] = "request_replayed"
    original: PositionOpened | PositionRejected


PortfolioEvent = (
    AccountOpened | BalanceSet | PositionOpened | PositionRejected | PositionClosed | CloseRejected | RequestReplayed
)
EVENT_ADAPTER: TypeAdapter[PortfolioEvent] = TypeAdapter(Annotated[PortfolioEvent, Field(discriminator="kind")])


def decode_command(raw: bytes) -> OpenPosition | ClosePosition | SetBalance:
    return COMMAND_ADAPTER.validate_json(raw)


def decode_event(raw: bytes) -> PortfolioEvent:
    return EVENT_ADAPTER.validate_json(raw)
