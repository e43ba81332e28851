"""Checkpoints of a stream's state, stored with the offset of the last input folded into it.

The protocol: a worker acknowledges an input only after a checkpoint that covers it is stored; on
restart it loads the checkpoint, skips inputs at or before its offset and folds the rest again.
The stores themselves (ClickHouse, memory) implement `CheckpointStore`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Checkpoint:
    topic: str
    key: str
    partition: int
    offset: int  # last raw message folded into `state`
    state: dict[str, Any]


class CheckpointStore(Protocol):
    async def load(self, topic: str, key: str) -> Checkpoint | None: ...

    async def save(self, checkpoints: Sequence[Checkpoint]) -> None: ...


class MemoryCheckpointStore:
    """For tests and for a worker without a database."""

    def __init__(self) -> None:
        self.saved: dict[tuple[str, str], Checkpoint] = {}
        self.saves = 0

    async def load(self, topic: str, key: str) -> Checkpoint | None:
        return self.saved.get((topic, key))

    async def save(self, checkpoints: Sequence[Checkpoint]) -> None:
        self.saves += 1
        for c in checkpoints:
            self.saved[(c.topic, c.key)] = c
