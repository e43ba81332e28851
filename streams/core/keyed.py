"""What a processor needs of the table of its per-stream states. The worker passes its
`streams.runtime.keyed.KeyedState`, which also forgets the states of revoked partitions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

S = TypeVar("S")


class StreamTable(Protocol[S]):
    counts: Counter[str]

    def get_or_create(self, key: str, partition: Any, make: Callable[[], S]) -> S: ...

    def pop(self, key: str) -> S | None: ...

    def items(self) -> Iterator[tuple[str, S]]: ...

    def forget(self, partitions: Iterable[Any]) -> list[str]: ...
