"""Where a stream's online models come from when a worker starts or a partition arrives: the
checkpoint store (ClickHouse in service, memory in tests), read with retries, and the stored
final candles a stream replays to catch up. An unusable checkpoint never stops the worker: the
stream starts from scratch, marked `load_failed` so the API answers AI_001 until it is warm."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
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


async def load_predictor(store: ModelStore, config: PredictAgentConfig, venue: str, symbol: str,
                         models: ModelImports | None = None) -> StreamPredictor:
    """The stream's checkpointed predictor, a fresh one when it has none, or a fresh one marked
    `load_failed` when the store stays unreachable or the checkpoint cannot be decoded. Models are
    built off the event loop, once their libraries are imported (`ModelImports`)."""
    core = config.core()
    if models is not None:
        await asyncio.wrap_future(models.ready())
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


async def open_stream(store: ModelStore, processor: PredictProcessor, venue: str, symbol: str,
                      models: ModelImports | None = None) -> PredictStream:
    """A stream seen for the first time since the start (or since its partition came back)."""
    return processor.opened(await load_predictor(store, processor.config, venue, symbol, models))


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


def import_model_libraries(models: Sequence[str]) -> None:
    """Import the libraries of `models` (river's ensemble; torch with the compiler package its
    optimisers import on their first use) and keep torch to one intra-op thread (the worker runs
    many streams side by side)."""
    if "ensemble" in models:
        import streams.core.predict.ensemble  # noqa: F401
    if "lstm" in models:
        from streams.core.predict.lstm import import_optimiser_compiler, limit_torch_threads

        limit_torch_threads(1)
        import_optimiser_compiler()


class ModelImports:
    """The configured models' libraries, imported once, in a background thread, when the first
    prediction stream opens (`ready()`); not when the worker starts.

    Why a thread: these imports take ~3 s of CPU (torch ~2, river's ensemble ~1). Made on the
    event loop at the first candle of the first stream, they stalled every agent (bench_pipeline:
    no row stored for ~2.8 s mid-run). Why not at start: the worker's every thread shares one
    interpreter lock, so a thread importing while trades flow takes their time; started at the
    worker's build they slowed its first seconds of trades by ~15 % (bench_pipeline, 1M trades,
    with and without torch's import: 67k and 63k against 77k and 74k trades/s from spawn). A
    prediction stream opens at the first final candle of the prediction interval (an hour of event
    time on a live feed; at once when stored history is folded), so that is when they are paid."""

    def __init__(self, models: Sequence[str], load: Callable[[Sequence[str]], None] = import_model_libraries) -> None:
        self.models, self._load = tuple(models), load
        self._done: Future[None] | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._done is not None

    def ready(self) -> Future[None]:
        """Done when the imports are over, failed or not (the first model built imports again and
        fails there, with its stream); the first call starts them."""
        with self._lock:
            if self._done is None:
                self._done = Future()
                threading.Thread(target=self._run, args=(self._done,), name="model-imports", daemon=True).start()
            return self._done

    def _run(self, done: Future[None]) -> None:
        try:
            self._load(self.models)
        except Exception:
            log.exception("the prediction models' libraries could not be imported in the background")
        finally:
            done.set_result(None)


def prepare_models(config: PredictAgentConfig) -> ModelImports | None:
    """The imports the configured models need, not yet started; None when there is nothing to import."""
    return ModelImports(config.models) if config.models else None
