"""Portfolio agent: `pf.commands.v1` and `pf.admin.v1` (keyed by account) -> `pf.events.v1` (keyed by account).

For each command the pure core (`streams.core.portfolio.decide`) says which events follow from
the account's current state; the agent publishes them (waiting for the broker's ack), then folds
them into its state. Faust runs one agent instance per partition, one message at a time, and the
API keys commands by account: one account's commands are decided strictly in order, so two
concurrent orders that each fit the balance but not together give one PositionOpened and one
PORT_001, whichever API process sent them. The price a command is checked against is the one
the API put in it (the latest trade price the client was shown), not one tracked here.

Every command must carry a valid HMAC (header `entasis-signature`): the broker accepts any local
producer, and a command names its own account and price. Orders (`open_position`,
`close_position`) come on `pf.commands.v1`, signed by the API (`infra.config.settings.
portfolio_signing_key`); `set_balance` comes only on `pf.admin.v1`, signed with the operator's key
(`portfolio_admin_key`) under another domain, which the API does not hold. A command without a
valid signature, or of a kind its topic does not carry (a `set_balance` on the API's topic, even
signed with the API's key), is counted (`forged`), logged and sent to the dead-letter topic with its
raw bytes, deciding nothing. The two topics have as many partitions each, so Faust assigns their
partitions together (co-partitioning) and one worker decides an account's orders and balance
changes; one lock serialises the two agents' decisions.

State comes only from `pf.events.v1`: before the first command after a start, or after a
rebalance took partitions away, the agent rebuilds it (event sourcing). With a snapshot store
(streams/core/portfolio_snapshot.py; ClickHouse `portfolio_snapshots` in a served worker) it loads
each account's latest snapshot and reads each partition only after its mark: a rebuild folds at
most `ENTASIS_PORTFOLIO_SNAPSHOT_EVERY` events per partition (plus those of a round a crash cut
short), whatever the history's length. Every `snapshot_every` events of a partition, the accounts
of that partition that changed are stored again. Without a store, or when the stored snapshot does
not continue the topic (a broker that restarted empty), the whole topic is folded. A command
re-delivered after a crash finds its event in the rebuilt state (`decided`), and nothing is
published twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from infra.config.kafka import aiokafka_options
from infra.config.settings import portfolio_admin_key, portfolio_signing_key
from schemas import topics
from schemas.events import DeadLetter
from schemas.portfolio import PortfolioEvent, SetBalance, decode_command, decode_event
from schemas.wire import encode_event
from streams.agents.candles import dead_letter_for
from streams.core.portfolio import (
    ADMIN_SIGNATURE_DOMAIN,
    COMMANDS_SIGNATURE_DOMAIN,
    SIGNATURE_HEADER,
    AccountDefaults,
    Ledger,
    decide,
    header_value,
    signature_valid,
)
from streams.core.portfolio_snapshot import EventPosition, SnapshotLedger, SnapshotMismatch, SnapshotRow
from streams.runtime.decoded import decoded
from streams.runtime.emit import Emitter, topic_emitter
from streams.runtime.keyed import forget_on_revoke
from streams.runtime.topic_reader import TopicHistory, TopicRecord, read_topic, read_topic_records

__all__ = [
    "PortfolioAgentState", "PortfolioWiring", "SnapshotStore", "TopicHistory", "TopicRecord", "read_topic",
    "register_portfolio_agent",
]

log = logging.getLogger(__name__)

# The events topic from `start` (partition -> first offset; others from the beginning) to its end.
HistoryLoader = Callable[[Mapping[int, int]], Awaitable[TopicHistory]]
# Publishes an event and says where it landed (None: not known, e.g. a test's emitter; the agent
# then stores no snapshot, since it cannot say what one covers).
EventEmitter = Callable[[PortfolioEvent], Awaitable[EventPosition | None]]

class SnapshotStore(Protocol):
    async def load(self, topic: str) -> list[SnapshotRow]: ...

    async def save(self, topic: str, rows: Sequence[SnapshotRow]) -> None: ...


@dataclass
class PortfolioAgentState:
    defaults: AccountDefaults
    history: HistoryLoader | None = None  # None: start empty (tests)
    signing_key: bytes = b""  # orders not signed with it are refused (an empty key refuses all)
    admin_key: bytes = b""  # set_balance not signed with it is refused (empty: refuses all)
    snapshots: SnapshotStore | None = None  # None: every rebuild folds the whole topic
    events_topic: str = ""  # the snapshots' topic name (namespace included)
    snapshot_every: int = 1000  # events of a partition between two snapshot rounds
    book: SnapshotLedger | None = None
    messages: int = 0
    malformed: int = 0
    duplicates: int = 0  # commands already decided (re-deliveries)
    forged: int = 0  # commands without a valid signature, or on a topic that does not carry their kind
    published: int = 0
    rebuilds: int = 0
    replayed: int = 0  # events the last rebuild read and folded (after the snapshot it loaded)
    restored_accounts: int = 0  # accounts the last rebuild took from snapshots
    snapshot_rounds: int = 0
    snapshot_errors: int = 0  # loads or saves that failed (the agent goes on without)
    snapshots_discarded: int = 0  # loaded snapshots that did not continue the topic
    bad_events: int = 0  # unreadable events met while rebuilding (skipped, as the API's read model does)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def ledger(self) -> Ledger | None:
        return self.book.ledger if self.book is not None else None

    async def current(self) -> Ledger:
        return (await self.current_book()).ledger

    async def current_book(self) -> SnapshotLedger:
        if self.book is None:
            self.book = await self._rebuild()
            self.rebuilds += 1
        return self.book

    def forget(self, partitions: set[Any]) -> None:
        """Another worker may have decided commands of accounts we held: rebuild before the next."""
        if partitions:
            self.book = None

    async def _rebuild(self) -> SnapshotLedger:
        rows: list[SnapshotRow] = []
        if self.snapshots is not None and self.history is not None:
            try:
                rows = await self.snapshots.load(self.events_topic)
            except Exception as exc:  # the database is down: slower, not wrong
                self.snapshot_errors += 1
                log.warning("portfolio snapshots not loaded (%r): folding the whole events topic", exc)
        book = await self._fold(rows)
        if book is None:
            self.snapshots_discarded += 1
            book = await self._fold([])
            assert book is not None  # without rows nothing can mismatch
        return book

    async def _fold(self, rows: list[SnapshotRow]) -> SnapshotLedger | None:
        """The ledger from `rows` and the events after them; None when they do not fit together."""
        try:
            book, start = SnapshotLedger.restore(rows, self.snapshot_every)
        except SnapshotMismatch as exc:
            log.error("portfolio snapshots unreadable (%s): folding the whole events topic", exc)
            return None
        if self.history is None:
            return book
        history = await self.history(start)
        beyond = {p: first for p, first in start.items() if first > history.end.get(p, 0)}
        if beyond:
            log.warning("portfolio snapshots cover events the topic does not hold (partitions %s): "
                        "folding the whole events topic", sorted(beyond))
            return None
        folded = 0
        for record in history.records:
            try:
                event = decode_event(record.value)
            except ValidationError as exc:
                self.bad_events += 1
                log.error("unreadable portfolio event at %s:%s: %s", record.partition, record.offset, exc)
                continue
            try:
                if book.fold(event, EventPosition(record.partition, record.offset)):
                    folded += 1
            except SnapshotMismatch as exc:
                log.warning("portfolio snapshots do not continue the events topic (%s): folding it whole", exc)
                return None
            except ValueError as exc:  # an event no agent of ours wrote (before its account's first)
                self.bad_events += 1
                log.error("portfolio event at %s:%s not folded: %s", record.partition, record.offset, exc)
        self.replayed = folded
        self.restored_accounts = sum(1 for row in rows if not row.is_mark)
        return book

    async def store_due_snapshots(self, book: SnapshotLedger) -> None:
        """One round per partition that is due; a failed save is retried after the next command."""
        if self.snapshots is None:
            return
        for partition in book.due():
            rows = book.round(partition)
            try:
                await self.snapshots.save(self.events_topic, rows)
            except Exception as exc:
                self.snapshot_errors += 1
                log.warning("portfolio snapshot of partition %s not stored (%r); retried later", partition, exc)
                return
            book.stored(rows)
            self.snapshot_rounds += 1


def make_portfolio_agent(state: PortfolioAgentState, emit: EventEmitter,
                         emit_dead_letter: Emitter[DeadLetter] | None = None, source: str = "pf.commands",
                         *, admin: bool = False) -> Callable[[Any], AsyncIterator[PortfolioEvent]]:
    """The agent of `pf.commands.v1` (orders, the API's key) or, with `admin`, of `pf.admin.v1`
    (set_balance, the operator's key)."""
    domain = ADMIN_SIGNATURE_DOMAIN if admin else COMMANDS_SIGNATURE_DOMAIN

    async def refuse(message: Any, command_id: str, why: str) -> None:
        state.forged += 1
        log.warning("portfolio command %s on %s refused: %s", command_id, source, why)
        if emit_dead_letter is not None:  # kept for the operator: who is producing these?
            await emit_dead_letter(dead_letter_for(message.value, source, f"portfolio command with {why}"))

    async def portfolio(stream: Any) -> AsyncIterator[PortfolioEvent]:
        # a malformed command is counted and passed over: the API never writes one, nothing to answer
        async for message, command in decoded(stream, decode_command, ValidationError, state):
            raw_key = message.key if isinstance(message.key, bytes) else str(message.key or "").encode()
            signature = header_value(getattr(message, "headers", None), SIGNATURE_HEADER)
            secret = state.admin_key if admin else state.signing_key
            if not secret or not signature_valid(secret, raw_key, message.value, signature, domain):
                why = "no signature" if signature is None else "an invalid signature"
                await refuse(message, command.command_id, why)
                continue
            if isinstance(command, SetBalance) != admin:
                # set_balance is an operator's command: never on the API's topic, whoever signed it
                await refuse(message, command.command_id, f"a kind this topic does not carry ({command.kind})")
                continue
            key = raw_key.decode(errors="replace") if message.key is not None else None
            if key is not None and key != command.account:
                # in another partition than the account's other commands: deciding it would
                # break the in-order guarantee
                state.malformed += 1
                log.warning("portfolio command %s keyed %r, not by its account", command.command_id, key)
                continue
            async with state.lock:  # the orders' and the admin topic's agents share the state
                book = await state.current_book()
                events = decide(book.ledger, command, state.defaults)
                if not events:
                    state.duplicates += 1
                for event in events:
                    position = await emit(event)
                    book.fold(event, position)
                    state.published += 1
                await state.store_due_snapshots(book)
            for event in events:
                yield event

    return portfolio


def positioned_emitter(topic: Any) -> EventEmitter:
    """Publish to the events topic keyed by account, wait for the broker, and say where it landed."""

    async def emit(event: PortfolioEvent) -> EventPosition | None:
        fut = await topic.send(key=str(event.account).encode(), value=encode_event(event))
        metadata = await fut
        partition, offset = getattr(metadata, "partition", None), getattr(metadata, "offset", None)
        if not isinstance(partition, int) or not isinstance(offset, int) or offset < 0:
            return None
        return EventPosition(partition, offset)

    return emit


def _unpositioned(emit: Callable[[PortfolioEvent], Awaitable[Any]]) -> EventEmitter:
    async def wrapped(event: PortfolioEvent) -> EventPosition | None:
        result = await emit(event)
        return result if isinstance(result, EventPosition) else None

    return wrapped


@dataclass
class PortfolioWiring:
    agents: dict[str, Any]
    state: PortfolioAgentState


def register_portfolio_agent(app: Any, settings: Any, *, commands_topic: Any, events_topic: Any,
                             admin_topic: Any | None = None,
                             emit_event: Callable[[PortfolioEvent], Awaitable[Any]] | None = None,
                             history: HistoryLoader | None = None, snapshots: SnapshotStore | None = None,
                             defaults: AccountDefaults | None = None, signing_key: bytes | None = None,
                             admin_key: bytes | None = None,
                             emit_dead_letter: Emitter[DeadLetter] | None = None) -> PortfolioWiring:
    """Wire the portfolio agents on `commands_topic` (and `admin_topic`, when given) and their
    rebalance hook on `app`. `emit_event` and `history` replace publishing to and reading
    `events_topic` on the broker (tests; an `emit_event` that returns an `EventPosition` lets the
    agent store snapshots); `snapshots` is the snapshot store (None: none kept); the keys default
    to the settings' (the data directory's files in development); `emit_dead_letter` to the
    dead-letter topic (refused commands go there)."""
    events_name = events_topic.get_topic_name() if hasattr(events_topic, "get_topic_name") else str(events_topic)
    if history is None:
        async def history(start: Mapping[int, int]) -> TopicHistory:
            return await read_topic_records(settings.kafka_bootstrap, events_name, start, **aiokafka_options(settings))

    if signing_key is None:
        signing_key = portfolio_signing_key(settings)
    if admin_key is None:
        admin_key = portfolio_admin_key(settings) if admin_topic is not None else b""
    every = getattr(getattr(settings, "portfolio", None), "snapshot_every", 1000)
    state = PortfolioAgentState(defaults or AccountDefaults.from_settings(settings), history, signing_key, admin_key,
                                snapshots, events_name, every)
    emit = _unpositioned(emit_event) if emit_event is not None else positioned_emitter(events_topic)
    if emit_dead_letter is None:
        dead_topic = app.topic(topics.DEAD_LETTER.full_name(settings.topic_namespace))
        emit_dead_letter = topic_emitter(dead_topic, key=lambda letter: letter.source)
    source = commands_topic.get_topic_name() if hasattr(commands_topic, "get_topic_name") else "pf.commands"
    agents = {"portfolio": app.agent(commands_topic, name="portfolio")(
        make_portfolio_agent(state, emit, emit_dead_letter, source))}
    if admin_topic is not None:
        admin_source = admin_topic.get_topic_name() if hasattr(admin_topic, "get_topic_name") else "pf.admin"
        agents["portfolio_admin"] = app.agent(admin_topic, name="portfolio_admin")(
            make_portfolio_agent(state, emit, emit_dead_letter, admin_source, admin=True))
    forget_on_revoke(app, state)
    return PortfolioWiring(agents, state)
