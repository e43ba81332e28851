"""Portfolio agent: `pf.commands.v1` (keyed by account) -> `pf.events.v1` (keyed by account).

For each command the pure core (`streams.core.portfolio.decide`) says which events follow from
the account's current state; the agent publishes them (waiting for the broker's ack), then folds
them into its state. Faust runs one agent instance per partition, one message at a time, and the
API keys commands by account: one account's commands are decided strictly in order, so two
concurrent orders that each fit the balance but not together give one PositionOpened and one
PORT_001, whichever API process sent them. The price a command is checked against is the one
the API put in it (the latest trade price the client was shown), not one tracked here.

Every command must carry the API's HMAC (header `entasis-signature`, key from
`infra.config.settings.portfolio_signing_key`): the broker accepts any local producer, and a
command names its own account and price. One without a valid signature is counted (`forged`),
logged and sent to the dead-letter topic with its raw bytes, deciding nothing.

State comes only from `pf.events.v1`: before the first command after a start, or after a
rebalance took partitions away, the agent reads the whole events topic through the injected
`history` loader and folds it (event sourcing). A command re-delivered after a crash finds its
event in the rebuilt state (`decided`), and nothing is published twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from infra.config.settings import portfolio_signing_key
from schemas import topics
from schemas.events import DeadLetter
from schemas.portfolio import PortfolioEvent, decode_command, decode_event
from streams.agents.candles import dead_letter_for
from streams.core.portfolio import SIGNATURE_HEADER, AccountDefaults, Ledger, decide, header_value, signature_valid
from streams.runtime.decoded import decoded
from streams.runtime.emit import Emitter, topic_emitter
from streams.runtime.keyed import forget_on_revoke
from streams.runtime.topic_reader import read_topic

__all__ = ["PortfolioAgentState", "PortfolioWiring", "read_topic", "register_portfolio_agent"]

log = logging.getLogger(__name__)

HistoryLoader = Callable[[], Awaitable[Iterable[bytes]]]  # every event on pf.events, in partition order


@dataclass
class PortfolioAgentState:
    defaults: AccountDefaults
    history: HistoryLoader | None = None  # None: start empty (tests)
    signing_key: bytes = b""  # commands not signed with it are refused (an empty key refuses all)
    ledger: Ledger | None = None
    messages: int = 0
    malformed: int = 0
    duplicates: int = 0  # commands already decided (re-deliveries)
    forged: int = 0  # commands without a valid signature, refused
    published: int = 0
    rebuilds: int = 0

    async def current(self) -> Ledger:
        if self.ledger is None:
            ledger = Ledger()
            if self.history is not None:
                for raw in await self.history():
                    ledger.apply(decode_event(raw))
                self.rebuilds += 1
            self.ledger = ledger
        return self.ledger

    def forget(self, partitions: set[Any]) -> None:
        """Another worker may have decided commands of accounts we held: rebuild before the next."""
        if partitions:
            self.ledger = None


def make_portfolio_agent(state: PortfolioAgentState, emit: Emitter[PortfolioEvent],
                         emit_dead_letter: Emitter[DeadLetter] | None = None, source: str = "pf.commands"
                         ) -> Callable[[Any], AsyncIterator[PortfolioEvent]]:
    async def portfolio(stream: Any) -> AsyncIterator[PortfolioEvent]:
        # a malformed command is counted and passed over: the API never writes one, nothing to answer
        async for message, command in decoded(stream, decode_command, ValidationError, state):
            raw_key = message.key if isinstance(message.key, bytes) else str(message.key or "").encode()
            signature = header_value(getattr(message, "headers", None), SIGNATURE_HEADER)
            if not state.signing_key or not signature_valid(state.signing_key, raw_key, message.value, signature):
                state.forged += 1
                why = "no signature" if signature is None else "an invalid signature"
                log.warning("portfolio command %s refused: %s", command.command_id, why)
                if emit_dead_letter is not None:  # kept for the operator: who is producing these?
                    await emit_dead_letter(dead_letter_for(message.value, source, f"portfolio command with {why}"))
                continue
            key = raw_key.decode(errors="replace") if message.key is not None else None
            if key is not None and key != command.account:
                # in another partition than the account's other commands: deciding it would
                # break the in-order guarantee
                state.malformed += 1
                log.warning("portfolio command %s keyed %r, not by its account", command.command_id, key)
                continue
            ledger = await state.current()
            events = decide(ledger, command, state.defaults)
            if not events:
                state.duplicates += 1
            for event in events:
                await emit(event)
                ledger.apply(event)
                state.published += 1
                yield event

    return portfolio


@dataclass
class PortfolioWiring:
    agents: dict[str, Any]
    state: PortfolioAgentState


def register_portfolio_agent(app: Any, settings: Any, *, commands_topic: Any, events_topic: Any,
                             emit_event: Emitter[PortfolioEvent] | None = None, history: HistoryLoader | None = None,
                             defaults: AccountDefaults | None = None, signing_key: bytes | None = None,
                             emit_dead_letter: Emitter[DeadLetter] | None = None) -> PortfolioWiring:
    """Wire the portfolio agent on `commands_topic` and its rebalance hook on `app`. `emit_event`
    and `history` replace publishing to and reading `events_topic` on the broker (tests);
    `signing_key` defaults to the settings' (the data directory's file in development);
    `emit_dead_letter` to the dead-letter topic (refused commands go there)."""
    if history is None:
        events_name = events_topic.get_topic_name()

        async def history() -> list[bytes]:
            return await read_topic(settings.kafka_bootstrap, events_name)

    if signing_key is None:
        signing_key = portfolio_signing_key(settings)
    state = PortfolioAgentState(defaults or AccountDefaults.from_settings(settings), history, signing_key)
    emit = emit_event or topic_emitter(events_topic, key=lambda event: str(event.account))
    if emit_dead_letter is None:
        dead_topic = app.topic(topics.DEAD_LETTER.full_name(settings.topic_namespace))
        emit_dead_letter = topic_emitter(dead_topic, key=lambda letter: letter.source)
    source = commands_topic.get_topic_name() if hasattr(commands_topic, "get_topic_name") else "pf.commands"
    agent = make_portfolio_agent(state, emit, emit_dead_letter, source)
    agents = {"portfolio": app.agent(commands_topic, name="portfolio")(agent)}
    forget_on_revoke(app, state)
    return PortfolioWiring(agents, state)
