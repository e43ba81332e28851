"""The portfolio agent's decisions: which commands are decided at all (signature, topic, key),
the events a command produces (`streams.core.portfolio.decide`), how a state rebuilt from
snapshots and the events topic is judged (a snapshot that does not continue the topic is
discarded, an unreadable or unsigned event skipped), and the counters of all that. No I/O: the agent reads
the snapshots and the topic, publishes the events and stores the snapshot rounds."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.events import DeadLetter
from schemas.portfolio import ClosePosition, OpenPosition, PortfolioEvent, SetBalance, decode_event
from streams.core.dead_letters import dead_letter_for
from streams.core.portfolio import (
    ADMIN_SIGNATURE_DOMAIN,
    COMMANDS_SIGNATURE_DOMAIN,
    SIGNATURE_HEADER,
    AccountDefaults,
    Ledger,
    decide,
    event_signed,
    header_value,
    signature_valid,
)
from streams.core.portfolio_snapshot import EventPosition, SnapshotLedger, SnapshotMismatch, SnapshotRow

log = logging.getLogger(__name__)

Command = OpenPosition | ClosePosition | SetBalance


class Record(Protocol):
    """A message of the events topic, where it lies."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def headers(self) -> Any: ...


@dataclass(frozen=True)
class Refusal:
    """A command not decided; `letter`, when there is one, goes to the dead-letter topic (kept for
    the operator: who is producing these?)."""

    letter: DeadLetter | None


@dataclass
class PortfolioProcessor:
    defaults: AccountDefaults
    # orders not signed with it are refused, and events read back not signed with it skipped (the
    # agent signs what it publishes with it); an empty key refuses all
    signing_key: bytes = b""
    admin_key: bytes = b""  # set_balance not signed with it is refused (empty: refuses all)
    snapshot_every: int = 1000  # events of a partition between two snapshot rounds
    book: SnapshotLedger | None = None  # None: to be rebuilt before the next command
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
    forged_events: int = 0  # events met while rebuilding without the agent's signature (skipped)

    @property
    def ledger(self) -> Ledger | None:
        return self.book.ledger if self.book is not None else None

    def refusal(self, key: Any, headers: Any, value: bytes, command: Command, source: str,
                admin: bool) -> Refusal | None:
        """None for a command to decide. Orders must be signed with the API's key, set_balance
        with the operator's, each on its own topic; a command must be keyed by its account."""
        raw_key = key if isinstance(key, bytes) else str(key or "").encode()
        signature = header_value(headers, SIGNATURE_HEADER)
        secret = self.admin_key if admin else self.signing_key
        domain = ADMIN_SIGNATURE_DOMAIN if admin else COMMANDS_SIGNATURE_DOMAIN
        if not secret or not signature_valid(secret, raw_key, value, signature, domain):
            why = "no signature" if signature is None else "an invalid signature"
            return self._forged(value, command, source, why)
        if isinstance(command, SetBalance) != admin:
            # set_balance is an operator's command: never on the API's topic, whoever signed it
            return self._forged(value, command, source, f"a kind this topic does not carry ({command.kind})")
        account_key = raw_key.decode(errors="replace") if key is not None else None
        if account_key is not None and account_key != command.account:
            # in another partition than the account's other commands: deciding it would break the
            # in-order guarantee
            self.malformed += 1
            log.warning("portfolio command %s keyed %r, not by its account", command.command_id, account_key)
            return Refusal(None)
        return None

    def _forged(self, value: bytes, command: Command, source: str, why: str) -> Refusal:
        self.forged += 1
        log.warning("portfolio command %s on %s refused: %s", command.command_id, source, why)
        return Refusal(dead_letter_for(value, source, f"portfolio command with {why}"))

    def decide(self, book: SnapshotLedger, command: Command) -> list[PortfolioEvent]:
        """The events to publish, then fold (`book.fold`) one by one; none for a re-delivery."""
        events = decide(book.ledger, command, self.defaults)
        if not events:
            self.duplicates += 1
        return events

    def restore(self, rows: Sequence[SnapshotRow]) -> tuple[SnapshotLedger, dict[int, int]] | None:
        """The ledger the snapshot `rows` hold and where each partition's events continue; None
        when the rows do not fit together."""
        try:
            return SnapshotLedger.restore(rows, self.snapshot_every)
        except SnapshotMismatch as exc:
            log.error("portfolio snapshots unreadable (%s): folding the whole events topic", exc)
            return None

    def replay(self, book: SnapshotLedger, rows: Sequence[SnapshotRow], start: Mapping[int, int],
               records: Sequence[Record], end: Mapping[int, int]) -> SnapshotLedger | None:
        """`book` (restored from `rows`) with the events read after them (`records`, up to `end`);
        None when the snapshots do not continue the topic (a broker that restarted empty)."""
        beyond = {p: first for p, first in start.items() if first > end.get(p, 0)}
        if beyond:
            log.warning("portfolio snapshots cover events the topic does not hold (partitions %s): "
                        "folding the whole events topic", sorted(beyond))
            return None
        folded = 0
        for record in records:
            if not event_signed(self.signing_key, record.key, record.value, record.headers):
                # the broker takes any local producer's message: only what an agent signed is a fact
                self.forged_events += 1
                log.warning("portfolio event at %s:%s without the agent's signature: skipped",
                            record.partition, record.offset)
                continue
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
