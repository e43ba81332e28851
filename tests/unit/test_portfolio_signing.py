"""Issue 18, finding 7: any local producer could write `pf.commands.v1` and the portfolio agent
decided whatever it read (its own account, its own price). Now the API signs every command
(HMAC-SHA256 over key and value, in a Kafka header) and the agent decides only signed ones.

The oracle for "signed" is computed here with hmac directly, not with the code under test."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import os
import stat
from decimal import Decimal as D
from pathlib import Path

import faust
import pytest
from pydantic import SecretStr

from api.portfolio_repository import KafkaPortfolioBus
from api.portfolio_service import BusTimeout
from infra.config.settings import PortfolioSettings, Settings, portfolio_signing_key
from schemas.events import DeadLetter
from schemas.portfolio import OpenPosition, PortfolioEvent, PositionOpened, PositionType, SetBalance
from schemas.wire import encode_event
from streams.agents.portfolio import PortfolioWiring, TopicHistory, register_portfolio_agent

SECRET = b"k" * 64
_app_ids = itertools.count()
_ids = itertools.count(1)


def hmac_oracle(secret: bytes, key: bytes, value: bytes) -> bytes:
    message = b"entasis pf.commands v1\x00" + len(key).to_bytes(4, "big") + key + value
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode()


def open_cmd(account: str, price: str = "1") -> OpenPosition:
    n = next(_ids)
    return OpenPosition(
        account=account,
        command_id=f"sig-{n}",
        symbol="BTC-USDT",
        type=PositionType.LONG,
        size=D("1"),
        leverage=D("1"),
        price=D(price),
        price_ts_ns=n,
        idempotency_key=None,
        request_hash="h",
        issued_ts_ns=10_000 + n,
    )


class Agent:
    def __init__(self) -> None:
        self.published: list[PortfolioEvent] = []
        self.dead: list[DeadLetter] = []
        app = faust.App(
            f"t-pf-sig-{next(_app_ids)}",
            broker="kafka://127.0.0.1:1",
            value_serializer="raw",
            key_serializer="raw",
            store="memory://",
        )

        async def emit(event: PortfolioEvent) -> None:
            self.published.append(event)

        async def history(start: object) -> TopicHistory:
            return TopicHistory()

        async def dead_letter(letter: DeadLetter) -> None:
            self.dead.append(letter)

        self.wiring: PortfolioWiring = register_portfolio_agent(
            app,
            Settings(),
            commands_topic=app.topic("t.pf.sig.commands"),
            events_topic=app.topic("t.pf.sig.events"),
            emit_event=emit,
            history=history,
            signing_key=SECRET,
            emit_dead_letter=dead_letter,
        )

    async def put(self, messages: list[tuple[bytes, bytes, dict[str, bytes] | None]]) -> None:
        state = self.wiring.state
        start = state.messages
        async with self.wiring.agents["portfolio"].test_context() as agent:
            for key, value, headers in messages:
                await agent.put(value, key=key, headers=headers, wait=False)
            for _ in range(1000):
                if state.messages - start == len(messages):
                    break
                await asyncio.sleep(0.01)
        assert state.messages - start == len(messages)


async def test_forged_commands_are_refused_and_a_signed_one_is_applied() -> None:
    agent = Agent()
    forged_balance = SetBalance(account="victim", command_id="forge-1", balance=D("1e15"), issued_ts_ns=1)
    raw = encode_event(forged_balance)
    cheap = open_cmd("victim", price="0.00000001")
    cheap_raw = encode_event(cheap)
    signed = open_cmd("victim")
    signed_raw = encode_event(signed)
    await agent.put(
        [
            (b"victim", raw, None),  # produced straight to the topic: no signature
            (b"victim", raw, {"entasis-signature": b"00" * 32}),  # a made-up one
            (b"victim", raw, {"entasis-signature": hmac_oracle(b"x" * 64, b"victim", raw)}),  # another key
            # a genuine signature of another command, replayed on this one
            (b"victim", cheap_raw, {"entasis-signature": hmac_oracle(SECRET, b"victim", signed_raw)}),
            (b"victim", signed_raw, {"entasis-signature": hmac_oracle(SECRET, b"victim", signed_raw)}),
        ]
    )
    assert agent.wiring.state.forged == 4
    # each refused command is dead-lettered with its raw bytes, for the operator to trace
    assert [bytes.fromhex(d.raw_hex) for d in agent.dead] == [raw, raw, raw, cheap_raw]
    assert all(d.source == "t.pf.sig.commands" for d in agent.dead)
    opened = [e for e in agent.published if isinstance(e, PositionOpened)]
    assert [e.command_id for e in opened] == [signed.command_id]
    assert {e.command_id for e in agent.published} == {signed.command_id}


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.sent.append((key, value, headers))


async def test_the_api_bus_signs_what_the_agent_accepts() -> None:
    bus = KafkaPortfolioBus("127.0.0.1:1", signing_key=SECRET)
    producer = _Producer()
    bus._producer = producer  # type: ignore[assignment]  # no broker: capture what would be written
    bus._ready.set()
    command = open_cmd("alice")
    with pytest.raises(BusTimeout):  # nobody answers: the capture is what matters
        await bus.submit(command, timeout_s=0.0)
    [(key, value, headers)] = producer.sent
    assert dict(headers)["entasis-signature"] == hmac_oracle(SECRET, key, value)
    agent = Agent()
    await agent.put([(key, value, dict(headers))])
    assert agent.wiring.state.forged == 0
    assert [type(e) for e in agent.published][-1] is PositionOpened


def test_the_embedded_default_key_is_random_per_data_directory_and_private(tmp_path: Path) -> None:
    one, other = tmp_path / "one" / ".entasis", tmp_path / "other"
    key = portfolio_signing_key(Settings(data_dir=one))
    assert len(key) >= 32
    assert portfolio_signing_key(Settings(data_dir=one)) == key  # the API and the worker agree
    assert portfolio_signing_key(Settings(data_dir=other)) != key
    mode = stat.S_IMODE(os.stat(one / "portfolio-signing.key").st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(one).st_mode) == 0o700


def test_production_needs_the_setting_and_uses_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        portfolio_signing_key(Settings(profile="production", data_dir=tmp_path))
    configured = Settings(
        profile="production", data_dir=tmp_path, portfolio=PortfolioSettings(signing_key=SecretStr("s" * 40))
    )
    assert portfolio_signing_key(configured) == b"s" * 40
    assert not any(tmp_path.iterdir())  # no file written when the key is configured
