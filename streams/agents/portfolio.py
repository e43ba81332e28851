"""Portfolio agent: `pf.commands.v1` (keyed by account) -> `pf.events.v1` (keyed by account).

For each command it asks the pure core (streams/core/portfolio.py) which events follow from
the account's current state, publishes them (waiting for the broker's ack), then folds them
into its state. Faust runs one agent instance per partition, one message at a time, and the
API keys commands by account: one account's commands are decided strictly in order, so two
concurrent orders that each fit the balance but not together give one PositionOpened and one
PORT_001, whichever API process sent them.

Where the price comes from: the API looks up the latest trade price (the same lookup as
GET /market/price) and puts it, with its event time, in the command; the agent checks margin
against that price, in order. Consuming the raw trades topic here would make the agent track
every symbol's price for the few commands that need one, and its "latest" would still be only as
fresh as its own lag; the command's price is the one the client was shown. The entry price of an
opened position is that price.

State comes only from `pf.events.v1`: before the first command after a start, or after a
rebalance took partitions away, the agent reads the whole events topic through the injected
`history` loader and folds it (event sourcing; ClickHouse plays no part). Crash between
publishing an event and committing the command: the command comes again, the rebuilt state
already holds its event (`decided`), and nothing is published twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.portfolio import PortfolioEvent, decode_command, decode_event
from schemas.wire import encode_event
from streams.core.portfolio import AccountDefaults, Ledger, decide

log = logging.getLogger(__name__)

PortfolioEmitter = Callable[[PortfolioEvent], Awaitable[None]]
HistoryLoader = Callable[[], Awaitable[Iterable[bytes]]]  # every event on pf.events, in partition order


@dataclass
class PortfolioAgentState:
    defaults: AccountDefaults
    history: HistoryLoader | None = None  # None: start empty (tests)
    ledger: Ledger | None = None
    messages: int = 0
    malformed: int = 0
    duplicates: int = 0  # commands already decided (re-deliveries)
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

    def forget(self) -> None:
        """After a rebalance another worker may have decided commands of accounts we held:
        rebuild from the topic before the next command."""
        self.ledger = None


def make_portfolio_agent(state: PortfolioAgentState, emit: PortfolioEmitter
                         ) -> Callable[[Any], AsyncIterator[PortfolioEvent]]:
    async def portfolio(stream: Any) -> AsyncIterator[PortfolioEvent]:
        async for message in stream.events():
            state.messages += 1
            try:
                command = decode_command(message.value)
            except ValidationError:
                state.malformed += 1  # the API never writes these; nothing to answer
                continue
            key = message.key.decode() if isinstance(message.key, bytes) else message.key
            if key is not None and key != command.account:
                # keyed by another account, it may sit in another partition than the account's
                # other commands: deciding it would break the in-order guarantee
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


def topic_emitter(topic: Any) -> PortfolioEmitter:
    async def publish(event: PortfolioEvent) -> None:
        fut = await topic.send(key=event.account.encode(), value=encode_event(event))
        await fut  # on the broker before the command behind it is acknowledged

    return publish


async def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every message value on `topic` up to its end offsets at the time of the call."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # metadata, so the topic's partitions are known
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        values: list[bytes] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            batches = await consumer.getmany(*tps, timeout_ms=500)
            for records in batches.values():
                values.extend(r.value for r in records
                              if r.value is not None and r.offset < end[TopicPartition(r.topic, r.partition)])
        return values
    finally:
        await consumer.stop()


@dataclass
class PortfolioWiring:
    agents: dict[str, Any]
    state: PortfolioAgentState


def register_portfolio_agent(
    app: Any,
    settings: Any,
    *,
    commands_topic: Any,
    events_topic: Any,
    emit_event: PortfolioEmitter | None = None,
    history: HistoryLoader | None = None,
    defaults: AccountDefaults | None = None,
) -> PortfolioWiring:
    """Wire the portfolio agent on `commands_topic` and its rebalance hook on `app`.

    `emit_event` replaces publishing to `events_topic` and `history` replaces reading
    `events_topic` from the broker (tests)."""
    if history is None:
        events_name = events_topic.get_topic_name()

        async def history() -> list[bytes]:
            return await read_topic(settings.kafka_bootstrap, events_name)

    state = PortfolioAgentState(defaults or AccountDefaults.from_settings(settings), history)
    agents = {
        "portfolio": app.agent(commands_topic, name="portfolio")(
            make_portfolio_agent(state, emit_event or topic_emitter(events_topic))),
    }

    async def _forget(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        if revoked:
            state.forget()

    app.on_partitions_revoked.connect(_forget)
    return PortfolioWiring(agents, state)
