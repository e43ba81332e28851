"""State per stream key, partition-aware.

Faust delivers a key's messages in one partition; when a rebalance revokes that partition,
another worker (or this one, later) takes the key over from the input or from a checkpoint,
so what this worker held for it must go: kept, it would be stale the day the partition
comes back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")


class KeyedState(Generic[K, S]):
    """`state[key]`, the partition each key came from, and counters (`created`, `forgotten`,
    and whatever the agent counts with `count`)."""

    def __init__(self) -> None:
        self.states: dict[K, S] = {}
        self.partitions: dict[K, Any] = {}
        self.counts: Counter[str] = Counter()

    def get(self, key: K) -> S | None:
        return self.states.get(key)

    def put(self, key: K, state: S, partition: Any) -> S:
        self.states[key] = state
        self.partitions[key] = partition
        self.counts["created"] += 1
        return state

    def get_or_create(self, key: K, partition: Any, make: Callable[[], S]) -> S:
        """The key's state, made on first use; the key is (re)assigned to `partition`."""
        state = self.states.get(key)
        if state is None:
            return self.put(key, make(), partition)
        self.partitions[key] = partition
        return state

    async def get_or_load(self, key: K, partition: Any, load: Callable[[], Awaitable[S]]) -> tuple[S, bool]:
        """The key's state, and whether it is new: on first sight it is `await load()` (a
        checkpoint read, a rebuild from stored data), put under `partition`."""
        state = self.states.get(key)
        if state is not None:
            return state, False
        return self.put(key, await load(), partition), True

    def pop(self, key: K) -> S | None:
        self.partitions.pop(key, None)
        return self.states.pop(key, None)

    def forget(self, partitions: Iterable[Any]) -> list[K]:
        """Drop the keys of revoked partitions; returns them."""
        revoked = set(partitions)
        gone = [k for k, p in self.partitions.items() if p in revoked]
        for key in gone:
            self.pop(key)
        self.counts["forgotten"] += len(gone)
        return gone

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def items(self) -> Iterator[tuple[K, S]]:
        return iter(list(self.states.items()))

    def __getitem__(self, key: K) -> S:
        return self.states[key]

    def __contains__(self, key: object) -> bool:
        return key in self.states

    def __len__(self) -> int:
        return len(self.states)


def forget_on_revoke(app: Any, *holders: Any) -> None:
    """Connect each holder's `forget` to the app's partition-revoked signal."""

    async def _forget_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        for holder in holders:
            holder.forget(revoked)

    app.on_partitions_revoked.connect(_forget_revoked)
