"""The portfolio agent with snapshots, in Faust's test context (issue 18, finding 8): a restarted agent
loads the per-account snapshots, reads only the events after each partition's mark, and holds exactly
the state of a fold of every event from scratch (the oracle: plain `Ledger.apply` over the published
bytes); it then decides the next commands byte for byte as an agent that folded the whole topic.
A store that is down, or snapshots of another history, cost a full fold, never a wrong state."""

from __future__ import annotations

import asyncio
import copy
import itertools
import zlib
from collections.abc import Mapping
from decimal import Decimal as D
from typing import Any

import faust

from infra.config.settings import PortfolioSettings, Settings
from schemas.events import DeadLetter
from schemas.portfolio import ClosePosition, OpenPosition, PortfolioEvent, PositionType, SetBalance, decode_event
from schemas.wire import encode_event
from streams.agents.portfolio import PortfolioWiring, TopicHistory, register_portfolio_agent
from streams.core.portfolio import SIGNATURE_HEADER, Ledger, admin_signature, command_signature
from streams.core.portfolio_snapshot import EventPosition, MemorySnapshotStore
from tests.unit.test_portfolio_event_signing import signed_record
from tests.unit.test_portfolio_snapshot import assert_same

SIGNING_KEY = b"tests-only-portfolio-signing-key-0123456789"
ADMIN_KEY = b"tests-only-portfolio-admin-key-0123456789ab"
PARTITIONS = 4
EVERY = 10
_app_ids = itertools.count()


def settings(every: int = EVERY) -> Settings:
    return Settings(portfolio=PortfolioSettings(initial_balance=D("5000"), max_open_positions=8,
                                                max_symbol_notional=D("40000"), snapshot_every=every))


class EventsTopic:
    """pf.events.v1 in memory, partitioned by account as the broker would."""

    def __init__(self) -> None:
        self.partitions: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        self.reads: list[int] = []  # records handed out per history read

    async def emit(self, event: PortfolioEvent) -> EventPosition:
        p = zlib.crc32(event.account.encode()) % PARTITIONS
        self.partitions[p].append(encode_event(event))
        return EventPosition(p, len(self.partitions[p]) - 1)

    async def history(self, start: Mapping[int, int]) -> TopicHistory:
        records = [signed_record(SIGNING_KEY, p, o, raw) for p, values in enumerate(self.partitions)
                   for o, raw in enumerate(values) if o >= start.get(p, 0)]
        self.reads.append(len(records))
        return TopicHistory(records, {p: len(values) for p, values in enumerate(self.partitions)})

    def total(self) -> int:
        return sum(len(values) for values in self.partitions)

    def oracle(self) -> Ledger:
        ledger = Ledger()
        for values in self.partitions:
            for raw in values:
                ledger.apply(decode_event(raw))
        return ledger


class Worker:
    def __init__(self, topic: EventsTopic, store: MemorySnapshotStore | None, every: int = EVERY) -> None:
        self.topic = topic
        self.published: list[bytes] = []
        self.dead: list[DeadLetter] = []
        app = faust.App(f"t-pf-snap-{next(_app_ids)}", broker="kafka://127.0.0.1:1", value_serializer="raw",
                        key_serializer="raw", store="memory://")

        async def emit(event: PortfolioEvent) -> EventPosition:
            self.published.append(encode_event(event))
            return await topic.emit(event)

        async def dead_letter(letter: DeadLetter) -> None:
            self.dead.append(letter)

        self.wiring: PortfolioWiring = register_portfolio_agent(
            app, settings(every), commands_topic=app.topic("t.pf.commands"), events_topic=app.topic("t.pf.events"),
            admin_topic=app.topic("t.pf.admin"), emit_event=emit, history=topic.history, snapshots=store,
            signing_key=SIGNING_KEY, admin_key=ADMIN_KEY, emit_dead_letter=dead_letter)

    async def run(self, commands: list[Any]) -> None:
        """Each command on its topic (set_balance on the admin topic), one at a time, in order."""
        state = self.wiring.state
        async with self.wiring.agents["portfolio"].test_context() as orders, \
                self.wiring.agents["portfolio_admin"].test_context() as admin:
            for command in commands:
                start = state.messages
                key, raw = command.account.encode(), encode_event(command)
                if isinstance(command, SetBalance):
                    await admin.put(raw, key=key, wait=False,
                                    headers={SIGNATURE_HEADER: admin_signature(ADMIN_KEY, key, raw).encode()})
                else:
                    await orders.put(raw, key=key, wait=False,
                                     headers={SIGNATURE_HEADER: command_signature(SIGNING_KEY, key, raw).encode()})
                for _ in range(500):
                    if state.messages > start:
                        break
                    await asyncio.sleep(0.005)
                assert state.messages == start + 1


def workload(n: int, offset: int = 0) -> list[Any]:
    names = [f"acct-{i}" for i in range(9)]
    out: list[Any] = []
    opened: list[tuple[str, str]] = []
    for i in range(offset, offset + n):
        ts = 10**12 + i * 10**9
        account = names[i % len(names)]
        if i % 11 == 5:
            out.append(SetBalance(account=account, command_id=f"bal-{i}", balance=D(4000 + i), issued_ts_ns=ts))
        elif i % 4 == 3 and opened:
            acct, pid = opened.pop(i % len(opened))
            out.append(ClosePosition(account=acct, command_id=f"close-{i}", position_id=pid, price=D(90 + i % 30),
                                     price_ts_ns=ts, issued_ts_ns=ts))
        else:
            key = f"key-{i % 6}" if i % 3 == 0 else None
            out.append(OpenPosition(account=account, command_id=f"open-{i}", symbol="ETH-USDT",
                                    type=PositionType.LONG if i % 2 else PositionType.SHORT, size=D(1 + i % 5),
                                    leverage=D(1 + i % 3), price=D(100 + i % 17), price_ts_ns=ts,
                                    idempotency_key=key, request_hash=f"h{i % 6}", issued_ts_ns=ts))
            opened.append((account, f"open-{i}"))
    return out


async def test_a_restart_loads_snapshots_reads_a_bounded_tail_and_equals_the_full_fold() -> None:
    topic, store = EventsTopic(), MemorySnapshotStore()
    one = Worker(topic, store)
    await one.run(workload(150))
    assert one.wiring.state.snapshot_rounds > 0 and store.saves == one.wiring.state.snapshot_rounds
    assert one.dead == []  # every command was on its right topic, signed with its right key

    two = Worker(topic, store)
    ledger = await two.wiring.state.current()
    assert_same(ledger, topic.oracle())
    state = two.wiring.state
    assert state.restored_accounts > 0 and state.snapshots_discarded == 0
    # what the restart read: the events after each partition's mark, fewer than EVERY per partition
    assert topic.reads[-1] == state.replayed <= PARTITIONS * (EVERY - 1) < topic.total()

    # the restarted agent decides the next commands exactly as one that folded the whole topic
    twin_topic = copy.deepcopy(topic)
    full = Worker(twin_topic, None)
    more = workload(60, offset=150)
    await two.run(more)
    await full.run(more)
    assert full.wiring.state.replayed == sum(len(v) for v in topic.partitions) - len(two.published)
    assert two.published == full.published and two.published
    assert_same(await two.wiring.state.current(), topic.oracle())


async def test_the_replay_stays_bounded_as_the_history_grows() -> None:
    topic, store = EventsTopic(), MemorySnapshotStore()
    worker = Worker(topic, store)
    reads = []
    for round_ in range(4):
        await worker.run(workload(80, offset=round_ * 80))
        restarted = Worker(topic, store)
        assert_same(await restarted.wiring.state.current(), topic.oracle())
        reads.append(restarted.wiring.state.replayed)
        worker = restarted
    assert all(read <= PARTITIONS * (EVERY - 1) for read in reads)
    assert topic.total() > 4 * PARTITIONS * EVERY  # the history grew well past what is read


async def test_a_store_that_is_down_costs_a_full_fold_not_a_wrong_state() -> None:
    topic, store = EventsTopic(), MemorySnapshotStore()
    one = Worker(topic, store)
    store.fail = True
    await one.run(workload(40))
    assert one.wiring.state.snapshot_errors > 0 and store.saves == 0
    store.fail = False
    await one.run(workload(30, offset=40))  # the rounds are retried and stored now
    assert store.saves > 0

    class Down(MemorySnapshotStore):
        async def load(self, topic_name: str) -> list:
            raise OSError("database down")

    two = Worker(topic, Down())
    assert_same(await two.wiring.state.current(), topic.oracle())
    assert two.wiring.state.replayed == topic.total() and two.wiring.state.snapshot_errors == 1


async def test_snapshots_of_an_older_broker_are_discarded() -> None:
    """`entasis up` starts an empty broker: marks past the new topic's end are not believed."""
    old_topic, store = EventsTopic(), MemorySnapshotStore()
    await Worker(old_topic, store).run(workload(60))
    new_topic = EventsTopic()
    await Worker(new_topic, None).run(workload(5, offset=500))
    restarted = Worker(new_topic, store)
    assert_same(await restarted.wiring.state.current(), new_topic.oracle())
    assert restarted.wiring.state.snapshots_discarded == 1


async def test_set_balance_is_refused_on_the_orders_topic_even_signed_with_the_api_key() -> None:
    """Issue 18, finding 7: `set_balance` is the operator's, on `pf.admin.v1` with the admin key;
    the API's key (or a producer that stole it) cannot set a balance, and orders are not accepted
    on the admin topic either."""
    topic = EventsTopic()
    worker = Worker(topic, None)
    state = worker.wiring.state
    balance = SetBalance(account="mallory", command_id="set-x", balance=D("1e15"), issued_ts_ns=1)
    raw, key = encode_event(balance), b"mallory"
    order = workload(1)[0]
    order_raw = encode_event(order)
    okey = order.account.encode()
    async with worker.wiring.agents["portfolio"].test_context() as orders, \
            worker.wiring.agents["portfolio_admin"].test_context() as admin:
        for agent, value, k, signature in [
            (orders, raw, key, command_signature(SIGNING_KEY, key, raw)),
            # the admin domain's signature made with the API's key, and the orders' domain with the admin key
            (admin, raw, key, admin_signature(SIGNING_KEY, key, raw)),
            (admin, raw, key, command_signature(ADMIN_KEY, key, raw)),
            (admin, order_raw, okey, admin_signature(ADMIN_KEY, okey, order_raw)),  # an order on the admin topic
        ]:
            start = state.messages
            await agent.put(value, key=k, wait=False, headers={SIGNATURE_HEADER: signature.encode()})
            for _ in range(500):
                if state.messages > start:
                    break
                await asyncio.sleep(0.005)
    assert state.forged == 4 and worker.published == [] and topic.total() == 0
    assert [bytes.fromhex(d.raw_hex) for d in worker.dead] == [raw, raw, raw, order_raw]
    await worker.run([balance])  # the operator's own: decided
    ledger = await state.current()
    assert ledger.accounts["mallory"].cash == D("1e15")
