"""The per-socket outgoing queue: bounded, and conflating to the latest value per (channel,
symbol) once the client falls behind, so a slow client costs memory proportional to its
subscriptions, never to the feed rate, and nobody else waits for it.

Two lanes: control messages (acknowledgements, errors) in order, bounded; and data updates.
While the client keeps up, data updates wait in arrival order and every one is sent: a fast
client sees every update. When more than `max_backlog` are waiting, the client is behind: the lane
folds into a dict keyed by (channel, symbol) holding only the newest (a market update merges
into the pending one so its `volume` still counts everything traded since the last message the
client got), bounded by `max_keys`, until the sender has taken everything. The sender takes
control first, then all data (in arrival order, or the order the keys first became pending).

Each data update comes with its subscription's `seq` (1, 2, 3, ... per key, given by the hub); a
merge keeps the newest one, so the message a client gets after a conflation shows the gap. The
seq is spliced into the shared rendering when the sender takes it (protocol `with_seq`); 0 means
"no seq" (unit tests of the queue alone)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from api.ws.protocol import with_seq

Key = tuple[str, ...]  # a subscription: (channel, venue, symbol) or (channel, venue, symbol, interval)


class Update(Protocol):
    def render(self) -> str: ...

    def merge(self, newer: Update) -> Update:
        """What to keep when `newer` arrives while this one still waits to be sent."""
        ...


class QueueOverflow(Exception):
    """The client let its queue exceed a bound: it is too slow, or misbehaving."""


class ConflatingQueue:
    def __init__(
        self,
        max_keys: int,
        max_control: int = 256,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_backlog: int = 256,
    ) -> None:
        self.max_keys = max_keys
        self.max_control = max_control
        self.max_backlog = max_backlog
        self._clock = clock
        self._control: deque[str] = deque()
        self._backlog: list[tuple[Key, Update, int]] = []  # every update, in order, while keeping up
        self._data: dict[Key, tuple[Update, int]] = {}  # the newest per key (and its seq), once behind
        self._behind = max_backlog <= 0
        # The sender parked in `get`, if any: a bare future is the cheapest wake-up there is,
        # and the hub wakes every subscriber's sender on every update.
        self._waiter: asyncio.Future[None] | None = None
        # When the oldest undelivered update was queued (None when the data lane is empty):
        # how far behind the client is.
        self._since: float | None = None
        self.conflated = 0  # updates replaced before they were sent (statistics, tests)

    def put(self, key: Key, update: Update, seq: int = 0) -> None:
        if not self._behind:
            self._backlog.append((key, update, seq))
            if len(self._backlog) > self.max_backlog:
                self._fall_behind()
            if self._since is None:
                self._since = self._clock()
            self._wake()
            return
        self._conflate(key, update, seq)

    def _fall_behind(self) -> None:
        backlog, self._backlog = self._backlog, []
        self._behind = True
        for key, update, seq in backlog:
            self._conflate(key, update, seq)

    def _conflate(self, key: Key, update: Update, seq: int) -> None:
        pending = self._data.get(key)
        if pending is not None:
            self._data[key] = (pending[0].merge(update), seq)
            self.conflated += 1
            return
        if len(self._data) >= self.max_keys:
            raise QueueOverflow(f"more than {self.max_keys} pending keys")
        self._data[key] = (update, seq)
        if self._since is None:
            self._since = self._clock()
        self._wake()

    def put_control(self, text: str) -> None:
        if len(self._control) >= self.max_control:
            raise QueueOverflow(f"more than {self.max_control} control messages pending")
        self._control.append(text)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def discard(self, key: Key) -> None:
        """Drop a pending update (after an unsubscribe nothing more of it may arrive)."""
        self._data.pop(key, None)
        if self._backlog:
            self._backlog = [item for item in self._backlog if item[0] != key]
        if not self._data and not self._backlog:
            self._since = None

    def lag(self) -> float:
        """Seconds the oldest undelivered update has waited (0 when none waits)."""
        return 0.0 if self._since is None else self._clock() - self._since

    def __len__(self) -> int:
        return len(self._control) + len(self._backlog) + len(self._data)

    def take(self) -> list[str]:
        """Everything pending, rendered, control first; empties the queue (the client has caught up)."""
        out = list(self._control)
        self._control.clear()
        if self._backlog:
            out.extend(_text(update, seq) for _, update, seq in self._backlog)
            self._backlog = []
        if self._data:
            out.extend(_text(update, seq) for update, seq in self._data.values())
            self._data.clear()
        self._behind = self.max_backlog <= 0
        self._since = None
        return out

    async def get(self) -> list[str]:
        while not (self._control or self._backlog or self._data):
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.take()


def _text(update: Update, seq: int) -> str:
    text = update.render()
    return with_seq(text, seq) if seq else text
