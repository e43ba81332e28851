"""The per-socket outgoing queue: bounded, and conflating to the latest value per (channel,
symbol), so a slow client costs memory proportional to its subscriptions, never to the feed rate,
and nobody else waits for it.

Two lanes: control messages (acknowledgements, errors) in order, bounded; data updates in a dict
keyed by (channel, symbol) holding only the newest (a market update merges into the pending one
so its `volume` still counts everything traded since the last message the client got). The
sender takes control first, then all data, in the order the keys first became pending."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

Key = tuple[str, str]  # (channel, symbol)


class Update(Protocol):
    def render(self) -> str: ...

    def merge(self, newer: Update) -> Update:
        """What to keep when `newer` arrives while this one still waits to be sent."""
        ...


class QueueOverflow(Exception):
    """The client let its queue exceed a bound: it is too slow, or misbehaving."""


class ConflatingQueue:
    def __init__(self, max_keys: int, max_control: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self.max_control = max_control
        self._clock = clock
        self._control: deque[str] = deque()
        self._data: dict[Key, Update] = {}
        self._ready = asyncio.Event()
        # When the oldest undelivered update was queued (None when the data lane is empty):
        # how far behind the client is.
        self._since: float | None = None
        self.conflated = 0  # updates replaced before they were sent (statistics, tests)

    def put(self, key: Key, update: Update) -> None:
        pending = self._data.get(key)
        if pending is not None:
            self._data[key] = pending.merge(update)
            self.conflated += 1
            return
        if len(self._data) >= self.max_keys:
            raise QueueOverflow(f"more than {self.max_keys} pending keys")
        self._data[key] = update
        if self._since is None:
            self._since = self._clock()
        self._ready.set()

    def put_control(self, text: str) -> None:
        if len(self._control) >= self.max_control:
            raise QueueOverflow(f"more than {self.max_control} control messages pending")
        self._control.append(text)
        self._ready.set()

    def discard(self, key: Key) -> None:
        """Drop a pending update (after an unsubscribe nothing more of it may arrive)."""
        self._data.pop(key, None)
        if not self._data:
            self._since = None

    def lag(self) -> float:
        """Seconds the oldest undelivered update has waited (0 when none waits)."""
        return 0.0 if self._since is None else self._clock() - self._since

    def __len__(self) -> int:
        return len(self._control) + len(self._data)

    def take(self) -> list[str]:
        """Everything pending, rendered, control first; empties the queue."""
        out = list(self._control)
        self._control.clear()
        out.extend(update.render() for update in self._data.values())
        self._data.clear()
        self._since = None
        self._ready.clear()
        return out

    async def get(self) -> list[str]:
        while not (self._control or self._data):
            self._ready.clear()
            await self._ready.wait()
        return self.take()
