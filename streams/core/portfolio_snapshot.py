"""Per-account snapshots of the portfolio fold, so a restart replays only the recent events.

The fold (streams/core/portfolio.py) is a pure function of `pf.events.v1`; replaying the whole topic
at every start and rebalance costs time linear in its history (issue 18, finding 8). So the agent
stores, per partition of the events topic, every account whose state changed since its last
snapshot, each with the offset of the account's last event folded into it, followed by the
partition's *mark*: the offset up to which every account of that partition is covered (a row
whose account is empty; account ids never are).

A round for a partition is due once `every` events of it were folded since its last mark. So a
restart loads the newest row of each account and of each partition's mark, and reads each partition
from its mark + 1: at most `every - 1` events plus those folded after the last round (before a
crash), never the whole history. An account unchanged since its last row keeps that row: it is
still its state at the mark.

Reading rules that make every crash point safe:
- rows are written before the mark, and a row's offset may be past the mark of its partition
  (the rows were stored, the mark was not): an event at or before its account's row offset is
  already in the row and is skipped;
- each account's events carry `seq` 1, 2, ...: the first event folded on top of a row must be the
  row's `seq` + 1, otherwise the snapshot belongs to another history (a broker that restarted
  empty, a topic recreated) and `SnapshotMismatch` tells the caller to fold from scratch. The
  caller also discards the snapshot when a mark points past the end of its partition.

State is written exactly: decimals as `str` (exponent kept), insertion orders kept (pruning pops
the oldest ids and keys from the front), so a restored account equals the one the fold built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from schemas.portfolio import EVENT_ADAPTER, PortfolioEvent, PositionOpened, PositionRejected, PositionType
from streams.core.portfolio import AccountState, Ledger, Position

SNAPSHOT_FORMAT = "portfolio_snapshot.v1"
MARK = ""  # the account of a partition's mark row


class SnapshotMismatch(Exception):
    """The stored snapshot does not continue the events read: fold from scratch instead."""


@dataclass(frozen=True)
class EventPosition:
    """Where an event lies in the events topic."""

    partition: int
    offset: int


@dataclass(frozen=True)
class SnapshotRow:
    """One stored row: an account's state after its event at `offset`, or (account `MARK`) the
    partition's mark, every account of the partition covered up to `offset`."""

    partition: int
    account: str
    offset: int
    state: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_mark(self) -> bool:
        return self.account == MARK


def account_to_state(account: AccountState) -> dict[str, Any]:
    """The account's whole state as JSON-ready values (decimals as exact strings)."""
    return {
        "schema_version": SNAPSHOT_FORMAT,
        "account": account.account,
        "cash": str(account.cash),
        "max_open_positions": account.max_open_positions,
        "max_symbol_notional": str(account.max_symbol_notional),
        "seq": account.seq,
        "updated_ts_ns": account.updated_ts_ns,
        "clock_ns": account.clock_ns,
        "stale_before_ns": account.stale_before_ns,
        "positions": [
            [p.position_id, p.symbol, p.type.value, str(p.size), str(p.leverage), str(p.entry_price), str(p.margin),
             p.opened_ts_ns]
            for p in account.positions.values()
        ],
        "decided": [[command_id, ts] for command_id, ts in account.decided.items()],
        "idempotency": [[key, first.model_dump(mode="json")] for key, first in account.idempotency.items()],
    }


def account_from_state(state: Mapping[str, Any]) -> AccountState:
    if state.get("schema_version") != SNAPSHOT_FORMAT:
        raise SnapshotMismatch(f"unknown snapshot format {state.get('schema_version')!r}")
    try:
        account = AccountState(
            account=str(state["account"]), cash=Decimal(state["cash"]),
            max_open_positions=int(state["max_open_positions"]),
            max_symbol_notional=Decimal(state["max_symbol_notional"]), seq=int(state["seq"]),
            updated_ts_ns=int(state["updated_ts_ns"]), stale_before_ns=int(state["stale_before_ns"]),
            clock_ns=int(state["clock_ns"]),
        )
        for pid, symbol, kind, size, leverage, entry, margin, opened in state["positions"]:
            account.positions[pid] = Position(pid, symbol, PositionType(kind), Decimal(size), Decimal(leverage),
                                              Decimal(entry), Decimal(margin), int(opened))
        for command_id, ts in state["decided"]:
            account.decided[str(command_id)] = int(ts)
        for key, first in state["idempotency"]:
            event = EVENT_ADAPTER.validate_python(first)
            if not isinstance(event, PositionOpened | PositionRejected):
                raise SnapshotMismatch(f"idempotency key {key!r} holds a {event.kind}")
            account.idempotency[str(key)] = event
    except SnapshotMismatch:
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:  # pydantic's ValidationError is a ValueError
        raise SnapshotMismatch(f"unreadable snapshot: {exc}") from None
    return account


class SnapshotLedger:
    """A `Ledger` that knows where each account's last event lies, which accounts changed since
    their last snapshot and when a partition's round is due. Fold through `fold`, never through
    `ledger.apply`, or the positions go stale."""

    def __init__(self, every: int = 1000) -> None:
        if every < 1:
            raise ValueError("snapshot interval must be at least 1 event")
        self.every = every
        self.ledger = Ledger()
        self.positions: dict[str, EventPosition] = {}  # account -> its last event's position
        self.covered: dict[str, int] = {}  # account -> offset its restored row covers (events up to it skipped)
        self.dirty: dict[int, set[str]] = {}  # partition -> accounts changed since their last row
        self.pending: Counter[int] = Counter()  # partition -> events folded since its last mark
        self.high: dict[int, int] = {}  # partition -> last offset folded (or marked)
        self.folded = 0  # events folded (skipped ones not counted)
        self.skipped = 0  # events the restored rows already held
        self.positioned = True  # False once an event of unknown position was folded: no more rounds
        self.restored = False  # built from stored rows: events must continue them
        self._round_pending: dict[int, int] = {}

    # --- restoring ------------------------------------------------------------------------

    @classmethod
    def restore(cls, rows: Iterable[SnapshotRow], every: int = 1000) -> tuple[SnapshotLedger, dict[int, int]]:
        """The ledger the rows hold, and per partition the first offset to read (partitions
        without a mark: from the beginning). Raises SnapshotMismatch for unreadable rows."""
        book = cls(every)
        start: dict[int, int] = {}
        for row in rows:
            if row.is_mark:
                start[row.partition] = row.offset + 1
                book.high[row.partition] = max(book.high.get(row.partition, -1), row.offset)
                continue
            state = account_from_state(row.state)
            if state.account != row.account:
                raise SnapshotMismatch(f"row of {row.account!r} holds {state.account!r}")
            book.ledger.accounts[row.account] = state
            book.positions[row.account] = EventPosition(row.partition, row.offset)
            book.covered[row.account] = row.offset
        for position in book.positions.values():
            book.high[position.partition] = max(book.high.get(position.partition, -1), position.offset)
        book.restored = bool(start or book.positions)
        # a partition with rows but no mark (the round's mark was never stored) is read from its
        # beginning; its rows still skip the events they hold
        return book, start

    # --- folding --------------------------------------------------------------------------

    def fold(self, event: PortfolioEvent, position: EventPosition | None) -> bool:
        """Apply `event` (read at `position`; None: unknown, which ends snapshot rounds for this
        ledger). False when the account's restored row already holds it."""
        account = event.account
        if position is not None:
            covered = self.covered.get(account)
            if covered is not None:
                row_position = self.positions[account]
                if position.partition == row_position.partition and position.offset <= covered:
                    self.skipped += 1
                    return False
                state = self.ledger.get(account)
                if state is not None and event.seq != state.seq + 1:
                    raise SnapshotMismatch(
                        f"account {account}: event seq {event.seq} at {position} after a snapshot at seq {state.seq}")
                del self.covered[account]  # later events of the account continue from its own folds
            elif self.restored and event.seq != 1 and self.ledger.get(account) is None:
                # no row, yet not the account's first event: the marks claim events this history lacks
                raise SnapshotMismatch(f"account {account}: event seq {event.seq} at {position} without its start")
        self.ledger.apply(event)
        self.folded += 1
        if position is None:
            self.positioned = False
            return True
        self.positions[account] = position
        self.dirty.setdefault(position.partition, set()).add(account)
        self.pending[position.partition] += 1
        self.high[position.partition] = max(self.high.get(position.partition, -1), position.offset)
        return True

    # --- rounds ---------------------------------------------------------------------------

    def due(self) -> list[int]:
        """Partitions whose round is due: `every` events folded since their last mark."""
        if not self.positioned:
            return []
        return sorted(p for p, n in self.pending.items() if n >= self.every)

    def round(self, partition: int) -> list[SnapshotRow]:
        """The rows of a round for `partition`: its changed accounts, then its mark (store them
        in this order, in one write or in order)."""
        rows = []
        for account in sorted(self.dirty.get(partition, ())):
            position = self.positions[account]
            state = self.ledger.accounts[account]
            rows.append(SnapshotRow(position.partition, account, position.offset, account_to_state(state)))
        rows.append(SnapshotRow(partition, MARK, self.high.get(partition, -1)))
        self._round_pending[partition] = self.pending.get(partition, 0)
        return rows

    def stored(self, rows: Sequence[SnapshotRow]) -> None:
        """`rows` (one round, from `round`) are stored: their accounts are clean, their partition marked."""
        for row in rows:
            if row.is_mark:
                left = self.pending.get(row.partition, 0) - self._round_pending.pop(row.partition, 0)
                if left > 0:
                    self.pending[row.partition] = left
                else:
                    self.pending.pop(row.partition, None)
            else:
                dirty = self.dirty.get(row.partition)
                if dirty is not None and self.positions[row.account].offset == row.offset:
                    dirty.discard(row.account)


class MemorySnapshotStore:
    """For tests and a worker without a database: the newest row per (topic, partition, account),
    newest meaning the highest offset (as the ClickHouse table's ReplacingMergeTree(offset))."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int, str], SnapshotRow] = {}
        self.saves = 0
        self.fail = False  # tests: the next saves raise

    async def load(self, topic: str) -> list[SnapshotRow]:
        return [row for (t, _, _), row in sorted(self.rows.items()) if t == topic]

    async def save(self, topic: str, rows: Sequence[SnapshotRow]) -> None:
        if self.fail:
            raise OSError("snapshot store unavailable (test)")
        self.saves += 1
        for row in rows:
            key = (topic, row.partition, row.account)
            old = self.rows.get(key)
            if old is None or row.offset >= old.offset:
                self.rows[key] = row
