"""`pf.commands.v1`, `pf.admin.v1` and `pf.events.v1`: one portfolio command or event per message, the model's
JSON, told apart by its `kind` (schemas/portfolio.py).

Both carry `schema_version` like every other format. `pf.events.v1` is kept forever and holds
events written before the key existed, so a message without it still decodes (the models'
default).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa

from schemas.codecs.envelope import TS, WireError
from schemas.portfolio import (
    ADMIN_ADAPTER,
    COMMAND_ADAPTER,
    COMMAND_FORMAT,
    EVENT_ADAPTER,
    EVENT_FORMAT,
    ClosePosition,
    OpenPosition,
    PortfolioEvent,
    SetBalance,
)

PORTFOLIO_COMMAND = COMMAND_FORMAT
PORTFOLIO_EVENT = EVENT_FORMAT

PortfolioCommand = OpenPosition | ClosePosition | SetBalance


def encode_command(command: PortfolioCommand) -> bytes:
    return orjson.dumps(command.model_dump(mode="json"))


def encode_event(event: PortfolioEvent) -> bytes:
    return orjson.dumps(event.model_dump(mode="json"))


def decode_command(raw: bytes | str) -> PortfolioCommand:
    try:
        return COMMAND_ADAPTER.validate_json(raw)
    except ValueError as exc:  # pydantic.ValidationError, invalid JSON included
        raise WireError(f"malformed {PORTFOLIO_COMMAND}: {exc}") from exc


def decode_admin_command(raw: bytes | str) -> SetBalance:
    """A value of `pf.admin.v1`: a `set_balance` and nothing else."""
    try:
        return ADMIN_ADAPTER.validate_json(raw)
    except ValueError as exc:
        raise WireError(f"malformed {PORTFOLIO_COMMAND} (set_balance): {exc}") from exc


def decode_event(raw: bytes | str) -> PortfolioEvent:
    try:
        return EVENT_ADAPTER.validate_json(raw)
    except ValueError as exc:
        raise WireError(f"malformed {PORTFOLIO_EVENT}: {exc}") from exc


def events_table(raws: Sequence[bytes]) -> pa.Table:
    """Rows of `portfolio_events` (infra/store/migrations/0007_portfolio_events.sql), each with its
    message as `body`. Undecodable values are skipped: the topic keeps them, and no event of ours is one.
    Callers pass only the events the portfolio agent signed (its header is not in the value): the
    sink (streams/agents/sinks.py) and `entasis portfolio rebuild` check it first."""
    rows = []
    for raw in raws:
        try:
            rows.append((decode_event(raw), raw.decode()))
        except (WireError, UnicodeDecodeError):
            continue
    return pa.table(
        {
            "account": pa.array([e.account for e, _ in rows], pa.string()),
            "seq": pa.array([e.seq for e, _ in rows], pa.uint64()),
            "kind": pa.array([e.kind for e, _ in rows], pa.string()),
            "command_id": pa.array([e.command_id for e, _ in rows], pa.string()),
            "body": pa.array([body for _, body in rows], pa.string()),
            "event_ts": pa.array([e.ts_ns for e, _ in rows], TS),
        }
    )
