"""Per-account portfolio snapshots (streams/core/portfolio_snapshot.py): what a restart restores from
the stored rows plus the events after their marks equals the fold of every event from scratch, for
any history and any crash point, and the events it has to read are bounded by the snapshot interval,
not by the history's length.

The oracle is the plain fold (`Ledger.apply` over every event ever published, decoded from the
bytes that were published), which knows nothing of snapshots. The "agent" here is the same loop the
portfolio agent runs (decide, publish, fold with the event's position, store the rounds that are
due), over an in-memory partitioned topic, so hypothesis can try many histories quickly."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.portfolio import (
    ClosePosition,
    OpenPosition,
    PortfolioEvent,
    PositionOpened,
    PositionType,
    SetBalance,
    decode_event,
)
from schemas.wire import encode_event
from streams.core.portfolio import AccountDefaults, AccountState, Ledger, decide
from streams.core.portfolio_snapshot import (
    EventPosition,
    SnapshotLedger,
    SnapshotMismatch,
    SnapshotRow,
    account_from_state,
    account_to_state,
)

DEFAULTS = AccountDefaults(balance=D("10000"), max_open_positions=6, max_symbol_notional=D("50000"))
PARTITIONS = 3


@dataclass
class Topic:
    """pf.events.v1 in memory: partitions of encoded events."""

    partitions: list[list[bytes]] = field(default_factory=lambda: [[] for _ in range(PARTITIONS)])

    def publish(self, event: PortfolioEvent) -> EventPosition:
        p = zlib.crc32(event.account.encode()) % PARTITIONS
        self.partitions[p].append(encode_event(event))
        return EventPosition(p, len(self.partitions[p]) - 1)

    def records(self, start: dict[int, int]) -> list[tuple[EventPosition, bytes]]:
        return [(EventPosition(p, o), raw) for p, values in enumerate(self.partitions)
                for o, raw in enumerate(values) if o >= start.get(p, 0)]

    def end(self) -> dict[int, int]:
        return {p: len(values) for p, values in enumerate(self.partitions)}


class Store:
    """The newest row per (partition, account), newest = highest offset (as the table's FINAL)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, str], SnapshotRow] = {}

    def save(self, rows: list[SnapshotRow]) -> None:
        for row in rows:
            old = self.rows.get((row.partition, row.account))
            if old is None or row.offset >= old.offset:
                self.rows[(row.partition, row.account)] = row


def oracle(topic: Topic) -> Ledger:
    ledger = Ledger()
    for _, raw in topic.records({}):
        ledger.apply(decode_event(raw))
    return ledger


def restart(topic: Topic, store: Store, every: int) -> tuple[SnapshotLedger, int]:
    """What a restarted agent does: restore the rows, read after the marks, fold. (ledger, events read)"""
    book, start = SnapshotLedger.restore(store.rows.values(), every)
    assert all(first <= topic.end()[p] for p, first in start.items())
    read = 0
    for position, raw in topic.records(start):
        read += 1
        book.fold(decode_event(raw), position)
    return book, read


def run(book: SnapshotLedger, topic: Topic, store: Store, commands: list, *, crash_before_mark: bool = False) -> None:
    """The agent's loop: decide, publish, fold with the position, store the due rounds."""
    for command in commands:
        for event in decide(book.ledger, command, DEFAULTS):
            book.fold(event, topic.publish(event))
        for partition in book.due():
            rows = book.round(partition)
            if crash_before_mark:  # the accounts' rows are stored, the mark is not
                store.save([r for r in rows if not r.is_mark])
                continue
            store.save(rows)
            book.stored(rows)


def assert_same(restored: Ledger, expected: Ledger) -> None:
    assert restored.accounts.keys() == expected.accounts.keys()
    for name, state in expected.accounts.items():
        got = restored.accounts[name]
        assert got == state, name
        # insertion orders decide what is pruned first: they must survive too
        assert list(got.decided) == list(state.decided)
        assert list(got.idempotency) == list(state.idempotency)
        assert list(got.positions) == list(state.positions)


# --- histories -----------------------------------------------------------------------------


@dataclass
class Script:
    """Builds commands; closes refer to positions opened earlier (some already closed: NOT_FOUND)."""

    n: int = 0
    opened: list[tuple[str, str]] = field(default_factory=list)

    def next_id(self) -> str:
        self.n += 1
        return f"c{self.n}"

    def command(self, kind: int, account: str, size: int, price: int, key: int | None):
        ts = 1_000_000 + self.n * 10**9  # a second apart: ids and keys stay within their 24 h windows
        cid = self.next_id()
        if kind == 0 and self.opened:
            acct, pid = self.opened[size % len(self.opened)]
            return ClosePosition(account=acct, command_id=cid, position_id=pid, price=D(price),
                                 price_ts_ns=ts, issued_ts_ns=ts)
        if kind == 1:
            return SetBalance(account=account, command_id=cid, balance=D(price * 10), issued_ts_ns=ts)
        self.opened.append((account, cid))
        return OpenPosition(account=account, command_id=cid, symbol="BTC-USDT",
                            type=PositionType.LONG if size % 2 else PositionType.SHORT, size=D(size) / 4,
                            leverage=D(1 + size % 5), price=D(price), price_ts_ns=ts,
                            idempotency_key=None if key is None else f"k{key}", request_hash=f"h{size}",
                            issued_ts_ns=ts)


commands_strategy = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(["alice", "bob", "carol", "dave", "erin"]),
              st.integers(1, 40), st.integers(1, 3000), st.none() | st.integers(0, 6)),
    min_size=1, max_size=120,
)


def build(raw: list[tuple[int, str, int, int, int | None]]) -> list:
    script = Script()
    return [script.command(*item) for item in raw]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=commands_strategy, every=st.integers(1, 25), cut=st.integers(0, 120))
def test_a_restart_from_snapshots_equals_the_fold_of_every_event(raw: list, every: int, cut: int) -> None:
    commands = build(raw)
    topic, store = Topic(), Store()
    first = SnapshotLedger(every)
    run(first, topic, store, commands[:cut])
    # a restart in the middle, then the rest decided by the restarted agent
    second, read = restart(topic, store, every)
    assert_same(second.ledger, oracle(topic))
    assert read <= PARTITIONS * (every - 1)  # only what no round covered yet
    run(second, topic, store, commands[cut:])
    third, read = restart(topic, store, every)
    assert_same(third.ledger, oracle(topic))
    assert_same(second.ledger, oracle(topic))
    assert read <= PARTITIONS * (every - 1)


@settings(max_examples=40, deadline=None)
@given(raw=commands_strategy, every=st.integers(1, 10))
def test_rows_stored_without_their_mark_still_restore_exactly(raw: list, every: int) -> None:
    """A crash between the accounts' rows and the partition's mark: rows ahead of their mark skip
    the events they hold, and nothing is folded twice."""
    topic, store = Topic(), Store()
    run(SnapshotLedger(every), topic, store, build(raw), crash_before_mark=True)
    restored, _ = restart(topic, store, every)
    assert_same(restored.ledger, oracle(topic))


def test_the_events_read_at_a_restart_do_not_grow_with_the_history() -> None:
    every = 50
    reads = []
    for length in (200, 2000):
        script = Script()
        names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"]
        commands = [script.command(i % 4, names[i % len(names)], 1 + i % 13, 100 + i % 900, i % 5 or None)
                    for i in range(length)]
        topic, store = Topic(), Store()
        run(SnapshotLedger(every), topic, store, commands)
        total = sum(topic.end().values())
        restored, read = restart(topic, store, every)
        assert_same(restored.ledger, oracle(topic))
        assert read <= PARTITIONS * (every - 1) < total
        reads.append(read)
        # without snapshots the whole history is read
        _, read_all = restart(topic, Store(), every)
        assert read_all == total
    assert max(reads) <= PARTITIONS * (every - 1)


def test_a_snapshot_of_another_history_is_refused() -> None:
    topic, store = Topic(), Store()
    script = Script()
    run(SnapshotLedger(2), topic, store, [script.command(2, "alice", 4, 100, None) for _ in range(10)])
    # the topic restarted empty and alice's new history begins again at seq 1, past the row's offset
    fresh = Topic()
    book, start = SnapshotLedger.restore(store.rows.values(), 2)
    for event in decide(Ledger(), Script().command(2, "alice", 4, 100, None), DEFAULTS):
        fresh.publish(event)
    fresh.partitions = [values * 30 for values in fresh.partitions]  # long enough to pass the mark
    with pytest.raises(SnapshotMismatch):
        for position, raw in fresh.records(start):
            book.fold(decode_event(raw), position)


def test_unreadable_rows_are_a_mismatch_not_a_crash() -> None:
    with pytest.raises(SnapshotMismatch):
        SnapshotLedger.restore([SnapshotRow(0, "alice", 3, {"schema_version": "portfolio_snapshot.v1"})])
    with pytest.raises(SnapshotMismatch):
        SnapshotLedger.restore([SnapshotRow(0, "alice", 3, {"schema_version": "other"})])


def test_state_round_trips_exactly_with_decimal_exponents_and_orders() -> None:
    ledger = Ledger()
    script = Script()
    for command in [script.command(2, "alice", 6, 1234, 1), script.command(2, "alice", 7, 1234, 2),
                    script.command(2, "alice", 6, 1234, 1), script.command(1, "alice", 1, 5, None)]:
        for event in decide(ledger, command, DEFAULTS):
            ledger.apply(event)
    state = ledger.accounts["alice"]
    state.cash = D("1.500")  # exponents kept, not just values
    restored = account_from_state(account_to_state(state))
    assert restored == state and str(restored.cash) == "1.500"
    assert list(restored.idempotency) == list(state.idempotency)
    for key, first in state.idempotency.items():
        assert isinstance(first, PositionOpened)
        assert encode_event(restored.idempotency[key]) == encode_event(first)
    assert isinstance(restored, AccountState)
