"""Per-stream state kept safe across restarts by checkpoints (the protocol and its data types:
`streams.core.checkpoint`).

Each stream's state is stored with the offset of the last input folded into it, and an input
is acknowledged only once a checkpoint covering it is stored. On first sight of a stream (after
a start, or when its partition comes back) the state is restored from its checkpoint and inputs
at or before the checkpoint's offset are skipped as re-deliveries; the rest are folded again,
giving the same outputs, which idempotent consumers absorb. One lock serialises folding, timer
work and checkpoints, so a checkpoint never holds half an input.

Outputs are delivered without waiting for the broker (`deliver`): a checkpoint first waits for
every acknowledgement still pending, so an input is never covered by a stored checkpoint (and so
never skipped at a restart) before the broker holds everything it produced. Waiting per output
instead held the worker to one broker round trip per candle (tests/bench/bench_pipeline.py).

The database going away must not stop the streams: a checkpoint that cannot be stored is
tried again at the next interval, its inputs held unacknowledged meanwhile (nothing is lost, a
restart folds them again), and a stream seen for the first time waits for its checkpoint to be
read (`streams.runtime.retrying`). Raising instead stopped the worker: the checkpoint runs on the
candle timer too, and a Faust timer that raises crashes the app."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from streams.core.checkpoint import Checkpoint, CheckpointStore
from streams.runtime.emit import sender
from streams.runtime.keyed import KeyedState
from streams.runtime.retrying import brief, until_done

log = logging.getLogger(__name__)

# Outputs in flight before `deliver` waits for them all (bounds the memory a stalled broker costs).
MAX_PENDING = 10_000


class Checkpointable(Protocol):
    def to_state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


S = TypeVar("S", bound=Checkpointable)


@dataclass
class Slot(Generic[S]):
    state: S
    partition: Any  # Faust TP
    folded_offset: int = -1  # last input folded into `state`
    unacked: list[Any] = field(default_factory=list)  # inputs folded since the last checkpoint


class CheckpointedStreams(Generic[S]):
    def __init__(self, store: CheckpointStore, topic: str, make: Callable[[str], S], every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.topic, self.make, self.every_s, self.clock = store, topic, make, every_s, clock
        self.slots: KeyedState[str, Slot[S]] = KeyedState()
        self.dirty: set[str] = set()
        self.lock = asyncio.Lock()
        # None until the first input: the first checkpoint comes `every_s` after it, as every
        # later one does after the one before (one right away would cover that input alone)
        self.last_checkpoint: float | None = None
        self.ack: Callable[[Any], Awaitable[Any]] | None = None  # acknowledges an input (the Faust stream's)
        self.pending: list[Awaitable[Any]] = []  # broker acknowledgements of delivered outputs
        self.failed_saves = 0  # checkpoints the store refused (tried again at the next interval)

    async def deliver(self, emit: Callable[[Any], Awaitable[Any]], event: Any) -> None:
        """`event` to the producer of `emit` without waiting for the broker; the next checkpoint
        waits for it. An emitter that is not a topic's is awaited at once."""
        send = sender(emit)
        if send is None:
            await emit(event)
            return
        self.pending.append(await send(event))
        if len(self.pending) >= MAX_PENDING:
            await self.delivered()

    async def delivered(self) -> None:
        """Wait until the broker has every output handed over so far (a failed send raises)."""
        pending, self.pending = self.pending, []
        for ack in pending:
            await ack

    async def slot(self, key: str, partition: Any) -> Slot[S]:
        """The stream's slot; on first sight, restored from its checkpoint if there is one."""
        slot = self.slots.get(key)
        if slot is None:
            slot = Slot(self.make(key), partition)
            saved = await until_done(lambda: self.store.load(self.topic, key),
                                     f"reading the checkpoint of {self.topic} {key}")
            if saved is not None:
                slot.state.restore(saved.state)
                slot.folded_offset = saved.offset
            self.slots.put(key, slot, partition)
        return slot

    def folded(self, key: str, slot: Slot[S], offset: int, message: Any) -> None:
        """`message` (at `offset`) is in the state now: acknowledge it with the next checkpoint."""
        slot.folded_offset = offset
        slot.unacked.append(message)
        self.dirty.add(key)
        if self.last_checkpoint is None:
            self.last_checkpoint = self.clock()

    def due(self) -> bool:
        if not self.dirty:
            return False
        return self.last_checkpoint is None or self.clock() - self.last_checkpoint >= self.every_s

    async def checkpoint(self) -> None:
        """Store the state of every changed stream, then acknowledge what it covers."""
        if not self.dirty:
            return
        keys = sorted(self.dirty)
        slots = [self.slots[k] for k in keys]
        await self.delivered()  # before the store: a stored checkpoint skips its inputs at a restart
        try:
            await self.store.save([Checkpoint(self.topic, k, s.partition.partition, s.folded_offset,
                                              s.state.to_state()) for k, s in zip(keys, slots, strict=True)])
        except Exception as exc:
            self.failed_saves += 1
            self.last_checkpoint = self.clock()  # the next try in `every_s`; nothing acknowledged
            log.warning("storing the checkpoint of %d %s streams failed (%s); their inputs stay unacknowledged "
                        "and the next checkpoint in %.1f s covers them", len(keys), self.topic, brief(exc),
                        self.every_s)
            return
        self.dirty.clear()
        self.last_checkpoint = self.clock()
        for slot in slots:
            if self.ack is not None:
                for message in slot.unacked:
                    await self.ack(message)
            slot.unacked.clear()

    async def checkpoint_if_due(self) -> None:
        if self.due():
            await self.checkpoint()

    async def on_idle(self, close: Callable[[S, float], Sequence[Any]], emit: Callable[[Any], Awaitable[Any]]) -> None:
        """The timer's work: what each stream closes at this wall time (`close(state, now)`),
        emitted, the stream marked changed; then a checkpoint if one is due."""
        async with self.lock:
            now = self.clock()
            for key, slot in self.slots.items():
                out = close(slot.state, now)
                for item in out:
                    await self.deliver(emit, item)
                if out:
                    self.dirty.add(key)
            await self.checkpoint_if_due()

    def forget(self, partitions: set[Any]) -> None:
        """Drop the streams of revoked partitions: their unacknowledged inputs will be delivered
        again (here or to another worker), on top of the stored checkpoint."""
        self.dirty.difference_update(self.slots.forget(partitions))
