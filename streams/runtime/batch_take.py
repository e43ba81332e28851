"""`take_batches`: Faust's `Stream.take` (faust-streaming 0.15, `faust/streams.py`) with one more
reason to hand a batch over: it holds at least `early` values, nothing more is queued for it, and
no value arrived for `idle` seconds.

Why our own: Faust's `take` hands a partial batch over only once `within` seconds have passed
since the previous hand-over. At the end of a burst (a replay, a backfill, a connector catching
up after a reconnect) the last few hundred messages then sit for `within` (0.5 s by default) with
nothing else to wait for: in `bench_pipeline --trades 500000` that was ~0.5 s of a ~5 s run (with
`ENTASIS_SINK_FLUSH_SECONDS=0.1` instead, alternating: 105.3k and 105.7k trades/s from spawn
against 92.7k and 96.0k). A shorter `within` would do the same but also write a trickle (a live
feed) in many small inserts, each a part ClickHouse must merge; a batch of `early` values or more
is worth its insert at once. Faust offers no hook for this, so its `take` is followed here
otherwise: a processor on the stream buffers the values, and a batch's events are acknowledged
when the loop body that received it returns (after the write).

One difference on purpose: Faust's `take` and `take_events` acknowledge a batch in a `finally`,
so also when the body raised (the write failed) and the generator is closed afterwards; that
commits offsets whose messages were never stored (tests/agents/test_batch_take.py shows it with
`stream.take`). Here a batch is acknowledged only when the body returns; one whose write failed
is delivered again after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from mode.utils.futures import notify

# A partial batch of at least 1/EARLY_FRACTION of the batch size goes once its stream has been idle
# for IDLE_SECONDS (the end of a burst), rather than after the flush interval.
EARLY_FRACTION = 4
IDLE_SECONDS = 0.02


async def take_batches(stream: Any, max_: int, within: float, *, events: bool = False) -> AsyncIterator[list[Any]]:
    """Batches of at most `max_` values of `stream` (its events, with `events`: for their headers):
    handed over when full, when `within` seconds passed since the previous one, or when the batch
    holds at least a quarter of `max_`, its queue is empty and nothing arrived for 20 ms."""
    early, idle = max(1, max_ // EARLY_FRACTION), min(IDLE_SECONDS, within)
    buffer: list[Any] = []
    taken: list[Any] = []  # their events
    wake = asyncio.Event()  # the buffer is full, or has just reached `early`
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    last_added = 0.0
    channel_it = aiter(stream.channel)

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming, last_added
        try:
            if consuming is not None:  # a batch is being handed over: wait until it is taken
                try:
                    await consuming
                finally:
                    consuming = None
            buffer.append(value)
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found no current event")
            taken.append(event)
            last_added = time.monotonic()
            if len(buffer) == early:
                wake.set()
            if len(buffer) >= max_:
                wake.set()
                consumed.clear()
                await stream.wait(consumed)  # never more than `max_` values in a batch
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    def queue_empty() -> bool:
        queue = getattr(channel_it, "queue", None)
        return queue is None or queue.empty()

    async def wait_for_batch() -> None:
        deadline = time.monotonic() + within
        while not stream.should_stop:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(buffer) >= max_:
                return
            if len(buffer) < early:
                await stream.wait_for_stopped(wake, timeout=remaining)  # full, `early`, or `within`
                wake.clear()
                continue
            quiet = time.monotonic() - last_added
            if quiet >= idle and queue_empty():
                return
            await stream.wait_for_stopped(wake, timeout=min(remaining, max(idle - quiet, idle / 4)))

    enable_acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged below, once the batch is written
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            await wait_for_batch()
            if buffer:
                consuming = asyncio.get_running_loop().create_future()
                try:
                    yield list(taken if events else buffer)
                    for event in taken:  # only once the body returned: see the module's docstring
                        await stream.ack(event)
                finally:
                    buffer.clear()
                    taken.clear()
                    notify(consuming)
                    wake.clear()
                    consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
