"""Issue 18: `pf.events.v1` was not signed, and every reader folded whatever was on it, so any local
producer on the open embedded broker could set any account's balance or positions. Now the agent
signs every event it publishes (HMAC-SHA256 over key and value, header `entasis-signature`, the
portfolio signing key under the events' domain), and every reader skips an event without a valid
signature: the agent's rebuild (here), the API's read model (tests/unit/test_portfolio_bus_snapshots.py),
the `portfolio_events` sink and `entasis portfolio rebuild` (here).

The oracle for "signed" is computed here with hmac directly, not with the code under test."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal as D
from typing import Any

import faust
import orjson
import pyarrow as pa
import pytest
from pydantic import SecretStr

from infra.config.settings import PortfolioSettings, Settings
from schemas.events import DeadLetter
from schemas.portfolio import BalanceSet, OpenPosition, PortfolioEvent, PositionType, SetBalance, decode_event
from schemas.wire import encode_event
from streams.agents.portfolio import PortfolioWiring, TopicHistory, register_portfolio_agent
from streams.agents.sinks import PortfolioEventSink
from streams.core.portfolio import SIGNATURE_HEADER, admin_signature, command_signature
from streams.runtime.portfolio_store import positioned_emitter
from streams.runtime.topic_reader import TopicRecord

SIGNING_KEY = b"tests-only-portfolio-signing-key-0123456789"
ADMIN_KEY = b"tests-only-portfolio-admin-key-0123456789ab"
OTHER_KEY = b"x" * 64
_app_ids = itertools.count()


def hmac_oracle(secret: bytes, key: bytes, value: bytes, domain: bytes = b"entasis pf.events v1\x00") -> bytes:
    message = domain + len(key).to_bytes(4, "big") + key + value
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode()


def signed_record(secret: bytes, partition: int, offset: int, value: bytes) -> TopicRecord:
    """An event as the agent publishes it: keyed by its account, signed with `secret`."""
    key = orjson.loads(value)["account"].encode()
    return TopicRecord(partition, offset, value, key, ((SIGNATURE_HEADER, hmac_oracle(secret, key, value)),))


def forgeries(value: bytes, key: bytes = b"victim",
              secret: bytes = SIGNING_KEY) -> list[tuple[bytes, tuple[tuple[str, bytes], ...]]]:
    """(key, headers) of the same event as a local producer could write it (`secret`: the agent's key)."""
    return [
        (key, ()),  # no signature
        (key, ((SIGNATURE_HEADER, b"00" * 32),)),  # a made-up one
        (key, ((SIGNATURE_HEADER, hmac_oracle(OTHER_KEY, key, value)),)),  # another key
        # the right key under the commands' domain: a command's signature never passes for an event's
        (key, ((SIGNATURE_HEADER, hmac_oracle(secret, key, value, b"entasis pf.commands v1\x00")),)),
        # the agent's genuine signature of this value, moved to another message key (partition)
        (b"other", ((SIGNATURE_HEADER, hmac_oracle(secret, key, value)),)),
    ]


def forged_balance(account: str, seq: int) -> bytes:
    """The right shape and the next seq of the account: folded, it would give it 1e9 of cash."""
    return encode_event(BalanceSet(account=account, command_id=f"forged-{seq}", seq=seq, ts_ns=10**18,
                                   balance=D("1e9"), max_open_positions=5, max_symbol_notional=D("1e12")))


def open_cmd(account: str, n: int) -> OpenPosition:
    return OpenPosition(account=account, command_id=f"evsig-{n}", symbol="BTC-USDT", type=PositionType.LONG,
                        size=D("1"), leverage=D("1"), price=D("100"), price_ts_ns=n, idempotency_key=None,
                        request_hash="h", issued_ts_ns=10_000 + n)


# --- the agent signs what it publishes --------------------------------------------------------


@dataclass
class _Metadata:
    partition: int
    offset: int


class _Topic:
    """Faust's topic as `positioned_emitter` uses it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []

    async def send(self, *, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        self.sent.append((key, value, headers))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(_Metadata(0, len(self.sent) - 1))
        return done


async def test_the_agent_publishes_every_event_signed_over_key_and_value() -> None:
    topic = _Topic()
    emit = positioned_emitter(topic, SIGNING_KEY)
    event = decode_event(forged_balance("alice", 2))
    await emit(event)
    [(key, value, headers)] = topic.sent
    assert key == b"alice" and decode_event(value) == event
    assert dict(headers)[SIGNATURE_HEADER] == hmac_oracle(SIGNING_KEY, key, value)


# --- the agent's rebuild ---------------------------------------------------------------------------


class Worker:
    """The portfolio agent over an in-memory events topic of one partition."""

    def __init__(self, records: list[TopicRecord]) -> None:
        self.records = records  # the topic, shared by every "worker" of a test
        app = faust.App(f"t-pf-evsig-{next(_app_ids)}", broker="kafka://127.0.0.1:1", value_serializer="raw",
                        key_serializer="raw", store="memory://")

        async def emit(event: PortfolioEvent) -> None:
            # the broker's copy of what the agent publishes (the signing itself: the test above)
            records.append(signed_record(SIGNING_KEY, 0, len(records), encode_event(event)))

        async def history(start: Mapping[int, int]) -> TopicHistory:
            return TopicHistory([r for r in records if r.offset >= start.get(0, 0)], {0: len(records)})

        async def dead_letter(letter: DeadLetter) -> None:
            pass

        settings = Settings(portfolio=PortfolioSettings(initial_balance=D("1000")))
        self.wiring: PortfolioWiring = register_portfolio_agent(
            app, settings, commands_topic=app.topic("t.pf.evsig.commands"),
            events_topic=app.topic("t.pf.evsig.events"), admin_topic=app.topic("t.pf.evsig.admin"),
            emit_event=emit, history=history, signing_key=SIGNING_KEY, admin_key=ADMIN_KEY,
            emit_dead_letter=dead_letter)

    async def run(self, command: OpenPosition | SetBalance) -> None:
        state = self.wiring.state
        start = state.messages
        admin = isinstance(command, SetBalance)
        key, raw = command.account.encode(), encode_event(command)
        signature = admin_signature(ADMIN_KEY, key, raw) if admin else command_signature(SIGNING_KEY, key, raw)
        async with self.wiring.agents["portfolio_admin" if admin else "portfolio"].test_context() as agent:
            await agent.put(raw, key=key, wait=False, headers={SIGNATURE_HEADER: signature.encode()})
            for _ in range(1000):
                if state.messages > start:
                    break
                await asyncio.sleep(0.005)
        assert state.messages == start + 1


def append(records: list[TopicRecord], value: bytes, key: bytes, headers: tuple[tuple[str, bytes], ...]) -> None:
    records.append(TopicRecord(0, len(records), value, key, headers))


async def test_a_rebuilt_agent_folds_no_forged_event_and_a_signed_one() -> None:
    records: list[TopicRecord] = []
    first = Worker(records)
    await first.run(open_cmd("victim", 1))  # AccountOpened (1000), PositionOpened (margin 100): seq 2
    before = (await first.wiring.state.current()).accounts["victim"].cash
    forged = forged_balance("victim", 3)
    for key, headers in forgeries(forged):
        append(records, forged, key, headers)

    restarted = Worker(records)  # a restart, or a rebalance: the state comes from the topic
    state = restarted.wiring.state
    victim = (await state.current()).accounts["victim"]
    assert state.forged_events == len(forgeries(forged))
    assert victim.cash == before == D("1000") and victim.seq == 2
    # it decides on the real state: a 2000 order does not fit 900 free (it would fit 1e9)
    await restarted.run(open_cmd("victim", 2).model_copy(update={"price": D("2000")}))
    assert decode_event(records[-1].value).kind == "position_rejected"

    # an event the agent signed (here: signed with its key) is a fact
    genuine = forged_balance("victim", 4)
    records.append(signed_record(SIGNING_KEY, 0, len(records), genuine))
    again = Worker(records)
    assert (await again.wiring.state.current()).accounts["victim"].cash == D("1e9")
    assert again.wiring.state.forged_events == len(forgeries(forged))


# --- the portfolio_events sink -------------------------------------------------------------------


@dataclass
class _Event:
    """A Faust event as the sink agent's batches hold it (`take_batches(..., events=True)`)."""

    key: bytes | None
    value: bytes
    headers: Any


class _ClickHouse:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def insert(self, table: str, data: pa.Table) -> int:
        assert table == "portfolio_events"
        self.rows.extend(data.to_pylist())
        return data.num_rows


async def test_the_sink_stores_only_signed_events_and_dead_letters_the_rest() -> None:
    genuine = [forged_balance("alice", n) for n in (1, 2)]
    forged = forged_balance("victim", 3)
    signed = [_Event(r.key, r.value, list(r.headers)) for r in (signed_record(SIGNING_KEY, 0, i, v)
                                                                  for i, v in enumerate(genuine))]
    bad = [_Event(key, forged, dict(headers)) for key, headers in forgeries(forged)]
    clickhouse, dead = _ClickHouse(), []

    async def dead_letter(letter: DeadLetter) -> None:
        dead.append(letter)

    # the agent's batching and acknowledgement: tests/agents/test_batch_take.py
    writer = PortfolioEventSink(clickhouse, SIGNING_KEY, dead_letter, "t.pf.events")  # type: ignore[arg-type]
    for batch in ([signed[0], *bad[:2]], [*bad[2:], signed[1]]):
        await writer.write(batch)  # type: ignore[arg-type]
    assert [(row["account"], row["seq"]) for row in clickhouse.rows] == [("alice", 1), ("alice", 2)]
    assert [bytes.fromhex(letter.raw_hex) for letter in dead] == [forged] * len(bad)
    assert {letter.source for letter in dead} == {"t.pf.events"}


# --- entasis portfolio rebuild ---------------------------------------------------------------------


class _Client:
    def __init__(self) -> None:
        self.inserted: list[dict[str, Any]] = []

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        assert table == "portfolio_events"
        self.inserted.extend(data.to_pylist())

    def close(self) -> None:
        pass


def test_rebuild_refills_the_table_with_signed_events_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.cli.portfolio import cmd_rebuild

    genuine = forged_balance("alice", 1)
    forged = forged_balance("victim", 3)
    records = [signed_record(SIGNING_KEY, 0, 0, genuine)]
    records += [TopicRecord(0, 1 + i, forged, key, headers) for i, (key, headers) in enumerate(forgeries(forged))]
    client = _Client()

    async def read(bootstrap: str, topic: str, start: Any = None, **options: Any) -> TopicHistory:
        return TopicHistory(records, {0: len(records)})

    monkeypatch.setattr("streams.runtime.topic_reader.read_topic_records", read)
    monkeypatch.setattr("infra.store.clickhouse.make_client", lambda settings: client)
    settings = Settings(portfolio=PortfolioSettings(signing_key=SecretStr(SIGNING_KEY.decode())))
    assert cmd_rebuild(settings, argparse.Namespace()) == 0
    assert [(row["account"], row["seq"]) for row in client.inserted] == [("alice", 1)]
