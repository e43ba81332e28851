"""The portfolio's storage as the API sees it: `pf.commands.v1` to write, `pf.events.v1` to read.

`KafkaPortfolioBus`, one per API process:
- a producer writes each command keyed by its account (murmur2, the partitioner Faust and every
  Java client use, so an account's commands always land in the same partition);
- one consumer, manually assigned every partition of the events topic (no group: each process
  reads everything), reads from the beginning and folds each event into the process's read model
  (the same `Ledger` the agent keeps), then resolves the future of the command it answers. Only
  events the agent signed are folded (HMAC-SHA256 in the `entasis-signature` header, with the
  portfolio signing key this process also signs its commands with); any other local producer's
  message is counted (`forged`), logged and skipped.
  Folding before resolving gives read-your-writes: once a POST has answered, a GET on the same
  process shows the position. Other processes show it once they have read that event (normally
  milliseconds).
- commands are accepted only once the read model has caught up with the events that existed
  when the bus started (503 until then), so an API restart never answers from a partial fold;
- the API's lifespan builds one and connects it in the background (`start_in_background`),
  retrying with backoff: an API started before its broker answers 503 until the broker and the
  topics are there, then serves without a restart. The CLI connects in the foreground (`start`).

The fold of every account is held in memory. With a snapshot loader (the served API reads the
portfolio agent's `portfolio_snapshots`, streams/core/portfolio_snapshot.py), a start restores every
account from its latest snapshot and reads each partition only after its mark: the replay is bounded
by the agent's snapshot interval, not by the topic's length. Snapshots that do not continue the
topic (marks past its end, an event that does not follow its account's snapshot) are dropped and the
topic is folded from the beginning, as without a loader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from api.portfolio_service import BusTimeout, BusUnavailable, PortfolioCommand, is_answer
from infra.config.settings import get_settings, portfolio_signing_key
from schemas.portfolio import (
    ADMIN_TOPIC_NAME,
    COMMANDS_TOPIC_NAME,
    EVENTS_TOPIC_NAME,
    PortfolioEvent,
    SetBalance,
    decode_event,
)
from schemas.wire import encode_event
from streams.core.backoff import Backoff
from streams.core.portfolio import (
    SIGNATURE_HEADER,
    AccountDefaults,
    Ledger,
    admin_signature,
    command_signature,
    event_signed,
)
from streams.core.portfolio_snapshot import EventPosition, SnapshotLedger, SnapshotMismatch, SnapshotRow
from streams.sinks.portfolio_snapshots import load_rows

log = logging.getLogger("api.portfolio")

# The stored snapshots of an events topic (its full name): the rows `SnapshotLedger.restore` takes.
SnapshotLoader = Callable[[str], Awaitable[list[SnapshotRow]]]


def clickhouse_snapshots(client_factory: Callable[[], Any]) -> SnapshotLoader:
    """The portfolio agent's snapshots (`portfolio_snapshots`), read once at start on a thread with
    a client of their own (the clients block)."""

    async def load(topic: str) -> list[SnapshotRow]:
        def read() -> list[SnapshotRow]:
            client = client_factory()
            try:
                return load_rows(client, topic)
            finally:
                client.close()

        return await asyncio.to_thread(read)

    return load


class KafkaPortfolioBus:
    def __init__(self, bootstrap: str, namespace: str = "", defaults: AccountDefaults | None = None,
                 catch_up_timeout_s: float = 30.0, signing_key: bytes | None = None,
                 admin_key: bytes | None = None, snapshots: SnapshotLoader | None = None,
                 kafka_options: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or AccountDefaults()
        self.commands_topic = f"{namespace}{COMMANDS_TOPIC_NAME}"
        self.admin_topic = f"{namespace}{ADMIN_TOPIC_NAME}"
        self.events_topic = f"{namespace}{EVENTS_TOPIC_NAME}"
        self._bootstrap = bootstrap
        self._catch_up_timeout_s = catch_up_timeout_s
        self._book = SnapshotLedger()  # the read model, and where each account's last event lies
        self._snapshots = snapshots
        self._kafka_options = kafka_options or {}  # SASL (infra/config/kafka.py), where the broker wants it
        self.replayed = 0  # events folded since the start (after the snapshots it restored)
        self.restored_accounts = 0
        self._waiting: dict[str, asyncio.Future[PortfolioEvent]] = {}
        self._ready = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._connector: asyncio.Task[None] | None = None
        self._connect_error = "portfolio bus not started"
        self.malformed = 0
        self.forged = 0  # events without the agent's signature (not folded)
        self.reader_restarts = 0  # times the events reader failed and started over
        self._reader_retry_s = 1.0
        # None: the process settings' key (the data directory's file in development), read at start.
        # It signs orders and checks every event read (the agent signs them with it). Empty: a
        # process that holds no such key (`entasis portfolio set-balance`, which only prints the
        # answer to its own command) and folds events unchecked; the API always holds one.
        self._signing_key = signing_key
        # set_balance goes to pf.admin.v1 signed with this; None (the API): this process cannot send one
        self._admin_key = admin_key

    async def start(self) -> None:
        """Connect and start replaying pf.events; raises when the broker or the topic is missing
        (the clients are stopped again then). For a caller that can report the failure (the CLI)."""
        if self._signing_key is None:
            self._signing_key = portfolio_signing_key(get_settings())
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all", **self._kafka_options)
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False, group_id=None,
                                    **self._kafka_options)
        try:
            await producer.start()
            await consumer.start()
            await consumer.topics()  # metadata, so the topic's partitions are known
            partitions = consumer.partitions_for_topic(self.events_topic)
            if not partitions:
                # the reason reaches clients: no topic name in it (the log has it)
                log.error("topic %s does not exist (run `entasis topics create`)", self.events_topic)
                raise BusUnavailable("portfolio events not available yet")
            tps = [TopicPartition(self.events_topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            await self._restore(consumer, tps, end)
        except BaseException:
            for client in (consumer, producer):
                await client.stop()
            raise
        self._producer, self._consumer = producer, consumer
        self._task = asyncio.create_task(self._supervise(tps, end), name="portfolio-events")

    def start_in_background(self, backoff: Backoff | None = None) -> None:
        """For the API's lifespan: connect without holding up the app's start, retrying until the
        broker answers. Until then every call is a retryable BusUnavailable, as when the broker
        is down, so an API started before its broker serves portfolio requests once it is up."""
        self._connector = asyncio.create_task(self._connect(backoff or Backoff()), name="portfolio-connect")

    async def _connect(self, backoff: Backoff) -> None:
        while True:
            try:
                await self.start()
                return
            except Exception as exc:  # aiokafka's errors, or the events topic missing
                # clients read this reason: no exception class or topic name in it (the log has them)
                self._connect_error = (str(exc) if isinstance(exc, BusUnavailable)
                                       else "portfolio bus unavailable")
                delay = backoff.next()
                log.warning("%s (%s); retrying in %.1f s", self._connect_error, exc, delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        for task in (self._connector, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        for future in self._waiting.values():
            future.cancel()

    async def _restore(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                       end: dict[TopicPartition, int]) -> None:
        """Start from the stored snapshots, when there are any that fit the topic: the read model
        takes them, and each partition is read after its mark."""
        self._book = SnapshotLedger()
        if self._snapshots is None:
            return
        try:
            rows = await self._snapshots(self.events_topic)
            book, start = SnapshotLedger.restore(rows)
        except Exception as exc:  # the database is down, or rows unreadable: slower, not wrong
            log.warning("portfolio snapshots not used (%r): replaying the whole events topic", exc)
            return
        ends = {tp.partition: end[tp] for tp in tps}
        if any(first > ends.get(p, 0) for p, first in start.items()):
            log.warning("portfolio snapshots cover events the topic does not hold: replaying it whole")
            return
        for tp in tps:
            if start.get(tp.partition):
                consumer.seek(tp, start[tp.partition])
        self._book = book
        self.restored_accounts = sum(1 for row in rows if not row.is_mark)

    async def _supervise(self, tps: list[TopicPartition], end: dict[TopicPartition, int]) -> None:
        """`_run`, restarted whenever it fails: a reader that died silently would leave every
        request answered from a ledger nobody reads any more. Until the topic is read again from
        the beginning, requests get the retryable "not replayed yet" (503)."""
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                await self._run(tps, end)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self._ready.clear()
                self.reader_restarts += 1
                log.exception("portfolio events reader failed: reading the topic again from the beginning")
            await asyncio.sleep(self._reader_retry_s)
            try:
                self._book, self.replayed = SnapshotLedger(), 0
                await consumer.seek_to_beginning(*tps)
                end = await consumer.end_offsets(tps)
            except Exception:  # the broker is away: the next `_run` fails too and this comes round again
                log.exception("portfolio events reader: could not rewind")

    async def _run(self, tps: list[TopicPartition], end: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            if not self._ready.is_set():
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                    self._ready.set()
            batches = await consumer.getmany(*tps, timeout_ms=200)
            refold = False
            for records in batches.values():
                for record in records:
                    if not self._on_record(record):
                        refold = True
                        break
                if refold:
                    break
            if refold:
                # the snapshots did not continue the topic: everything again, from the beginning
                self._ready.clear()
                self._book, self.replayed = SnapshotLedger(), 0
                await consumer.seek_to_beginning(*tps)
                end = await consumer.end_offsets(tps)

    def _on_record(self, record: Any) -> bool:
        """Fold one record; False when the restored snapshots turn out not to fit the topic."""
        if self._signing_key != b"" and not event_signed(
                self._signing_key or b"", record.key, record.value, record.headers):
            # any local producer can write the topic: only what the agent signed is a fact
            self.forged += 1
            log.warning("portfolio event at %s:%s without the agent's signature: not folded",
                        record.partition, record.offset)
            return True
        try:
            return self._on_event(record.value, EventPosition(record.partition, record.offset))
        except SnapshotMismatch as exc:
            log.warning("portfolio snapshots do not continue the events topic (%s): replaying it whole", exc)
            return False

    def _on_event(self, raw: Any, position: EventPosition | None = None) -> bool:
        try:
            event = decode_event(raw)
            if not self._book.fold(event, position):
                return True  # already in the snapshot it was restored from
        except (ValidationError, ValueError) as exc:
            self.malformed += 1  # the agent is the only writer; this is a bug to log, not to crash on
            log.error("unreadable portfolio event: %s", exc)
            return True
        self.replayed += 1
        if is_answer(event):
            future = self._waiting.get(event.command_id)
            if future is not None and not future.done():
                future.set_result(event)
        return True

    async def _caught_up(self) -> None:
        if self._producer is None:  # not connected (yet): answer at once rather than wait for a replay
            raise BusUnavailable(self._connect_error)
        try:
            await asyncio.wait_for(self._ready.wait(), self._catch_up_timeout_s)
        except TimeoutError:
            raise BusUnavailable("portfolio events not replayed yet") from None

    async def submit(self, command: PortfolioCommand, timeout_s: float) -> PortfolioEvent:
        await self._caught_up()
        assert self._producer is not None
        future: asyncio.Future[PortfolioEvent] = asyncio.get_running_loop().create_future()
        self._waiting[command.command_id] = future  # before sending: the answer may come at once
        try:
            key, value = command.account.encode(), encode_event(command)
            if isinstance(command, SetBalance):
                # an operator's command: its own topic and key, which the API does not hold
                if self._admin_key is None:
                    raise BusUnavailable("set_balance needs the portfolio admin key (entasis portfolio set-balance)")
                topic, signature = self.admin_topic, admin_signature(self._admin_key, key, value).encode()
            else:
                assert self._signing_key is not None  # set by start()
                topic, signature = self.commands_topic, command_signature(self._signing_key, key, value).encode()
            try:
                await self._producer.send_and_wait(topic, value, key=key, headers=[(SIGNATURE_HEADER, signature)])
            except Exception as exc:  # aiokafka's errors: broker down, topic missing, timeouts
                log.warning("could not write a portfolio command: %r", exc)
                raise BusUnavailable("could not write the command") from exc
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                raise BusTimeout(command.command_id) from None
        finally:
            self._waiting.pop(command.command_id, None)

    async def ledger(self) -> Ledger:
        await self._caught_up()
        return self._book.ledger
