"""Where a stream's online models come from when a worker starts or a partition arrives: the
checkpoint store (ClickHouse in service, memory in tests), read with retries, and the stored
final candles a stream replays to catch up. An unusable checkpoint never stops the worker: the
stream starts from scratch, marked `load_failed` so the API answers AI_001 until it is warm."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from streams.core.predict.engine import CheckpointError, StreamPredictor, decode_checkpoint
from streams.core.predict.features import Bar
from streams.core.predict_processor import PredictAgentConfig, PredictProcessor, PredictStream

log = logging.getLogger(__name__)

# (venue, symbol, interval, after open ns (exclusive, None: no bound), before open ns, limit) -> bars oldest first
BarLoader = Callable[[str, str, str, int | None, int, int], Awaitable[Sequence[Bar]]]


class ModelStore(Protocol):
    async def load(self, venue: str, symbol: str, interval: str) -> bytes | None: ...

    async def save(self, venue: str, symbol: str, interval: str, last_open_ns: int, blob: bytes) -> None: ...


class MemoryModelStore:
    """For tests and for a worker without a database."""

    def __init__(self) -> None:
        self.saved: dict[tuple[str, str, str], tuple[int, bytes]] = {}
        self.saves = 0

    async def load(self, venue: str, symbol: str, interval: str) -> bytes | None:
        found = self.saved.get((venue, symbol, interval))
        return found[1] if found else None

    async def save(self, venue: str, symbol: str, interval: str, last_open_ns: int, blob: bytes) -> None:
        self.saves += 1
        self.saved[(venue, symbol, interval)] = (last_open_ns, blob)


async def load_predictor(store: ModelStore, config: PredictAgentConfig, venue: str, symbol: str) -> StreamPredictor:
    """The stream's checkpointed predictor, a fresh one when it has none, or a fresh one marked
    `load_failed` when the store stays unreachable or the checkpoint cannot be decoded. Off the
    event loop; the models themselves are built on their first use (`engine._Deferred`)."""
    core = config.core()
    error = "no attempt"
    for attempt in range(config.load_attempts):
        try:
            blob = await store.load(venue, symbol, config.interval)
        except Exception as exc:  # the store is unreachable: retry, then start fresh
            error = f"checkpoint store failed: {exc!r}"
            log.warning("prediction checkpoint of %s:%s not readable (attempt %d): %s", venue, symbol, attempt + 1, exc)
            await asyncio.sleep(config.retry_delay_s * (attempt + 1))
            continue
        if blob is None:
            return await asyncio.to_thread(StreamPredictor, core)
        try:
            return await asyncio.to_thread(decode_checkpoint, blob, core)
        except CheckpointError as exc:
            error = str(exc)
            break
    log.error("prediction models of %s:%s start from scratch (AI_001 until warm): %s", venue, symbol, error)
    return await asyncio.to_thread(StreamPredictor, core, load_error=error)


async def open_stream(store: ModelStore, processor: PredictProcessor, venue: str, symbol: str) -> PredictStream:
    """A stream seen for the first time since the start (or since its partition came back)."""
    return processor.opened(await load_predictor(store, processor.config, venue, symbol))


async def stored_bars(loader: BarLoader | None, config: PredictAgentConfig, venue: str, symbol: str,
                      window: tuple[int | None, int] | None) -> list[Bar]:
    """The stored final candles in `window` (`PredictProcessor.replay_window`), newest
    `bootstrap_bars`; none without a window or without a loader."""
    if window is None or loader is None:
        return []
    return list(await loader(venue, symbol, config.interval, *window, config.bootstrap_bars))


async def save_predictor(store: ModelStore, interval: str, venue: str, symbol: str, stream: PredictStream) -> None:
    """Store the stream's models (serialised off the event loop) as its checkpoint."""
    last = stream.predictor.last_open_ns
    assert last is not None  # only a stream whose checkpoint is due is saved
    blob = await asyncio.to_thread(stream.predictor.dumps)
    await store.save(venue, symbol, interval, last, blob)
    stream.checkpointed_ns = last
