"""Portfolio agent: `pf.commands.v1` and `pf.admin.v1` (keyed by account) -> `pf.events.v1` (keyed by account).

For each command the pure core (`streams.core.portfolio_processor`, around
`streams.core.portfolio.decide`) says whether it is decided at all and which events follow from
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

Every event is published signed with the same key (HMAC-SHA256 over key and value, same header,
the events' own domain), and a rebuild folds only signed events: one any other local producer
wrote is counted (`forged_events`), logged and skipped, never a fact of the state.

State comes only from `pf.events.v1`: before the first command after a start, or after a
rebalance took partitions away, the agent rebuilds it (event sourcing; the reading and storing:
`streams.runtime.portfolio_store`). With a snapshot store
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from infra.config.settings import portfolio_admin_key, portfolio_signing_key
from schemas import topics
from schemas.events import DeadLetter
from schemas.portfolio import PortfolioEvent, decode_command
from streams.core.portfolio import AccountDefaults, Ledger
from streams.core.portfolio_processor import PortfolioProcessor
from streams.runtime import portfolio_store as store
from streams.runtime.decoded import decoded
from streams.runtime.emit import Emitter, topic_emitter
from streams.runtime.keyed import forget_on_revoke
from streams.runtime.portfolio_store import EventEmitter, HistoryLoader, SnapshotStore
from streams.runtime.topic_reader import TopicHistory, TopicRecord, read_topic

__all__ = ["PortfolioAgentState", "PortfolioWiring", "SnapshotStore", "TopicHistory", "TopicRecord", "read_topic",
           "register_portfolio_agent"]


@dataclass
class PortfolioAgentState(PortfolioProcessor):
    source: store.EventSourced = field(default_factory=store.EventSourced)  # the events topic and the snapshots
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the orders' and the admin topic's agents share the state

    async def current(self) -> Ledger:
        return (await self.source.book(self)).ledger

    def forget(self, partitions: set[Any]) -> None:
        """Another worker may have decided commands of accounts we held: rebuild before the next."""
        if partitions:
            self.book = None


def make_portfolio_agent(state: PortfolioAgentState, emit: EventEmitter,
                         emit_dead_letter: Emitter[DeadLetter] | None = None, source: str = "pf.commands",
                         *, admin: bool = False) -> Callable[[Any], AsyncIterator[PortfolioEvent]]:
    """The agent of `pf.commands.v1` (orders, the API's key) or, with `admin`, of `pf.admin.v1`
    (set_balance, the operator's key)."""

    async def portfolio(stream: Any) -> AsyncIterator[PortfolioEvent]:
        # a malformed command is counted and passed over: the API never writes one, nothing to answer
        async for msg, command in decoded(stream, decode_command, ValidationError, state):
            refused = state.refusal(msg.key, getattr(msg, "headers", None), msg.value, command, source, admin)
            if refused is not None:
                if refused.letter is not None and emit_dead_letter is not None:
                    await emit_dead_letter(refused.letter)
                continue
            async with state.lock:
                events = await state.source.handle(state, command, emit)
            for event in events:
                yield event

    return portfolio


@dataclass
class PortfolioWiring:
    agents: dict[str, Any]
    state: PortfolioAgentState


def _name(topic: Any, default: str) -> str:
    return topic.get_topic_name() if hasattr(topic, "get_topic_name") else default


def register_portfolio_agent(app: Any, settings: Any, *, commands_topic: Any, events_topic: Any,
                             admin_topic: Any | None = None,
                             emit_event: Callable[[PortfolioEvent], Awaitable[Any]] | None = None,
                             history: HistoryLoader | None = None, snapshots: SnapshotStore | None = None,
                             defaults: AccountDefaults | None = None, signing_key: bytes | None = None,
                             admin_key: bytes | None = None, emit_dead_letter: Emitter[DeadLetter] | None = None,
                             ) -> PortfolioWiring:
    """Wire the portfolio agents on `commands_topic` (and `admin_topic`, when given) and their
    rebalance hook on `app`. `emit_event` and `history` replace publishing to and reading
    `events_topic` on the broker (tests; an `emit_event` that returns an `EventPosition` lets the
    agent store snapshots); `snapshots` is the snapshot store (None: none kept); the keys default
    to the settings' (the data directory's files in development); `emit_dead_letter` to the
    dead-letter topic (refused commands go there)."""
    events_name = _name(events_topic, str(events_topic))
    signing_key = portfolio_signing_key(settings) if signing_key is None else signing_key
    admin_key = (portfolio_admin_key(settings) if admin_topic is not None else b"") if admin_key is None else admin_key
    source = store.EventSourced(events_name, store.topic_history(settings, events_name) if history is None else history,
                                snapshots)
    state = PortfolioAgentState(defaults or AccountDefaults.from_settings(settings), signing_key, admin_key,
                                getattr(getattr(settings, "portfolio", None), "snapshot_every", 1000), source=source)
    emit = (store.unpositioned(emit_event) if emit_event is not None
            else store.positioned_emitter(events_topic, signing_key))
    emit_dead_letter = emit_dead_letter or topic_emitter(
        app.topic(topics.DEAD_LETTER.full_name(settings.topic_namespace)), key=lambda letter: letter.source)
    agents = {"portfolio": app.agent(commands_topic, name="portfolio")(
        make_portfolio_agent(state, emit, emit_dead_letter, _name(commands_topic, "pf.commands")))}
    if admin_topic is not None:
        agents["portfolio_admin"] = app.agent(admin_topic, name="portfolio_admin")(
            make_portfolio_agent(state, emit, emit_dead_letter, _name(admin_topic, "pf.admin"), admin=True))
    forget_on_revoke(app, state)
    return PortfolioWiring(agents, state)
