"""The portfolio agent in Faust's test context: commands decided in order against the folded
state, redeliveries publish nothing, and a restarted agent rebuilds its state from the events
it published (the history loader), deciding exactly as the first one would have."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from decimal import Decimal as D
from typing import Any

import faust

from infra.config.settings import PortfolioSettings, Settings
from schemas.events import DeadLetter
from schemas.portfolio import (
    AccountOpened,
    ClosePosition,
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
from schemas.wire import encode_event
from streams.agents.portfolio import PortfolioWiring, TopicHistory, register_portfolio_agent
from streams.core.portfolio import SIGNATURE_HEADER, admin_signature, command_signature
from tests.unit.test_portfolio_event_signing import signed_record

SIGNING_KEY = b"tests-only-portfolio-signing-key-0123456789"
ADMIN_KEY = b"tests-only-portfolio-admin-key-0123456789ab"
_app_ids = itertools.count()
_ids = itertools.count(1)
SETTINGS = Settings(portfolio=PortfolioSettings(initial_balance=D("1000"), max_open_positions=5,
                                                max_symbol_notional=D("1000000")))


def open_cmd(account: str, size: str, price: str, key: str | None = None) -> OpenPosition:
    n = next(_ids)
    return OpenPosition(account=account, command_id=f"cmd-{n}", symbol="BTC-USDT", type=PositionType.LONG,
                        size=D(size), leverage=D("1"), price=D(price), price_ts_ns=n, idempotency_key=key,
                        request_hash="same", issued_ts_ns=10_000 + n)


class Harness:
    def __init__(self, log: list[bytes]) -> None:
        self.log = log  # the events topic, shared by every "worker" of a test
        self.published: list[PortfolioEvent] = []
        self.dead: list[DeadLetter] = []
        app = faust.App(f"t-pf-{next(_app_ids)}", broker="kafka://127.0.0.1:1", value_serializer="raw",
                        key_serializer="raw", store="memory://")

        async def emit(event: PortfolioEvent) -> None:
            self.published.append(event)
            self.log.append(encode_event(event))

        async def history(start: Mapping[int, int]) -> TopicHistory:
            # one partition, offsets = positions in the log (no snapshots here: `start` is empty)
            records = [signed_record(SIGNING_KEY, 0, offset, value) for offset, value in enumerate(self.log)]
            return TopicHistory([r for r in records if r.offset >= start.get(0, 0)], {0: len(self.log)})

        async def dead_letter(letter: DeadLetter) -> None:
            self.dead.append(letter)

        self.wiring: PortfolioWiring = register_portfolio_agent(
            app, SETTINGS, commands_topic=app.topic("t.pf.commands"), events_topic=app.topic("t.pf.events"),
            admin_topic=app.topic("t.pf.admin"), emit_event=emit, history=history, signing_key=SIGNING_KEY,
            admin_key=ADMIN_KEY, emit_dead_letter=dead_letter)

    async def run(self, commands: list[Any], keys: list[str] | None = None, *, admin: bool = False) -> None:
        """Put `commands` on the orders' topic (signed with the API's key) or, with `admin`, on the
        operator's topic (signed with the admin key), and wait until the agent has read them all."""
        state = self.wiring.state
        start = state.messages
        async with self.wiring.agents["portfolio_admin" if admin else "portfolio"].test_context() as agent:
            for i, command in enumerate(commands):
                key = (keys[i] if keys else command.account).encode()
                raw = command if isinstance(command, bytes) else encode_event(command)
                signature = admin_signature(ADMIN_KEY, key, raw) if admin else command_signature(SIGNING_KEY, key, raw)
                await agent.put(raw, key=key, wait=False, headers={SIGNATURE_HEADER: signature.encode()})
            for _ in range(1000):
                if state.messages - start == len(commands):
                    break
                await asyncio.sleep(0.01)
        assert state.messages - start == len(commands)


async def test_two_orders_that_fit_alone_but_not_together_give_one_open_and_one_port_001() -> None:
    h = Harness([])
    await h.run([open_cmd("a", "1", "600"), open_cmd("a", "1", "600")])
    kinds = [type(e) for e in h.published]
    assert kinds == [AccountOpened, PositionOpened, PositionRejected]
    rejected = h.published[-1]
    assert isinstance(rejected, PositionRejected) and rejected.code is RejectCode.PORT_001
    assert [e.seq for e in h.published] == [1, 2, 3]


async def test_balance_close_idempotency_and_malformed_input() -> None:
    h = Harness([])
    first = open_cmd("b", "2", "100", key="k")
    await h.run([SetBalance(account="b", command_id="set-1", balance=D("500"), issued_ts_ns=1)], admin=True)
    await h.run([
        first,
        open_cmd("b", "2", "100", key="k"),  # a retry: the first result again
        b"{not a command",
        open_cmd("b", "1", "1", key=None).model_copy(update={"account": "b"}),
    ], keys=["b", "b", "b", "someone-else"])  # the last one is keyed wrongly
    state = h.wiring.state
    assert state.malformed == 2
    opened = [e for e in h.published if isinstance(e, PositionOpened)]
    assert len(opened) == 1 and opened[0].position_id == first.command_id and opened[0].margin == D("200")
    replay = h.published[-1]
    assert isinstance(replay, RequestReplayed) and replay.original == opened[0]
    await h.run([ClosePosition(account="b", command_id="close-1", position_id=first.command_id, price=D("150"),
                               price_ts_ns=5, issued_ts_ns=20)])
    closed = h.published[-1]
    assert isinstance(closed, PositionClosed) and closed.pnl == D("100")
    ledger = await state.current()
    assert ledger.accounts["b"].cash == D("600")


async def test_a_restarted_agent_rebuilds_from_the_events_and_skips_redelivered_commands() -> None:
    log: list[bytes] = []
    one = Harness(log)
    commands = [open_cmd("c", "3", "100"), open_cmd("c", "3", "100"), open_cmd("c", "3", "100")]
    await one.run(commands[:2])
    # worker two starts after a crash that lost the commit of the second command: it gets it
    # again, then the third; its state comes from the events topic only
    two = Harness(log)
    await two.run(commands[1:])
    assert two.wiring.state.rebuilds == 1 and two.wiring.state.duplicates == 1
    assert len(two.published) == 1
    third = two.published[0]
    # 1000 − 300 − 300 = 400 free: the third order (300) fits; nothing was opened twice
    assert isinstance(third, PositionOpened) and third.seq == 4
    ledger = await two.wiring.state.current()
    assert len(ledger.accounts["c"].positions) == 3 and ledger.accounts["c"].free_balance == D("100")


async def test_an_order_too_big_for_28_digits_is_answered_and_the_agent_goes_on() -> None:
    """Issue 18 item 1: the margin of this order overflowed the default decimal context and the
    exception killed the agent; now it is an ordinary PORT_001 answer."""
    h = Harness([])
    await h.run([open_cmd("z", "99999999999999999999", "60000"), open_cmd("z", "1", "100")])
    assert [type(e) for e in h.published] == [AccountOpened, PositionRejected, PositionOpened]
    rejected = h.published[1]
    assert isinstance(rejected, PositionRejected) and rejected.code is RejectCode.PORT_001
    assert h.wiring.state.published == 3
