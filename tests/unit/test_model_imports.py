"""The prediction models' libraries are imported once, off the event loop, when the first stream
opens, not when the worker is built (streams/runtime/model_store.py `ModelImports`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from streams.core.predict_processor import PredictAgentConfig, PredictProcessor
from streams.runtime import model_store
from streams.runtime.model_store import MemoryModelStore, ModelImports


class GatedLoad:
    """A stand-in for the imports: records its calls and holds until released."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.threads: list[str] = []
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, models: Sequence[str]) -> None:
        self.calls.append(tuple(models))
        self.threads.append(threading.current_thread().name)
        assert self.release.wait(10)
        if self.fail:
            raise ImportError("no such library")


def test_nothing_is_imported_until_the_first_stream_asks() -> None:
    load = GatedLoad()
    imports = ModelImports(("ensemble", "lstm"), load)
    assert not imports.started and load.calls == []
    done = imports.ready()
    again = imports.ready()  # a second stream opening meanwhile waits on the same imports
    assert again is done and not done.done()
    load.release.set()
    assert done.result(timeout=10) is None
    assert load.calls == [("ensemble", "lstm")]
    assert load.threads == ["model-imports"]  # off the caller's thread
    assert imports.ready() is done and len(load.calls) == 1


def test_failed_imports_still_let_the_streams_open(caplog: pytest.LogCaptureFixture) -> None:
    load = GatedLoad(fail=True)
    load.release.set()
    done = ModelImports(("lstm",), load).ready()
    assert done.result(timeout=10) is None
    assert "could not be imported" in caplog.text


def test_many_streams_opening_at_once_import_once() -> None:
    load = GatedLoad()
    imports = ModelImports(("ensemble",), load)
    futures: list[object] = []
    callers = [threading.Thread(target=lambda: futures.append(imports.ready())) for _ in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    load.release.set()
    assert len({id(f) for f in futures}) == 1 and len(load.calls) == 1


def test_the_worker_build_starts_no_import_and_a_stream_waits_for_them() -> None:
    config = PredictAgentConfig(models=("ensemble",), horizons=("1h",), min_scored=5, min_independent=1)
    imports = model_store.prepare_models(config)
    assert imports is not None and not imports.started

    load = GatedLoad()
    imports = ModelImports(config.models, load)

    async def open_first_stream() -> None:
        opening = asyncio.ensure_future(
            model_store.open_stream(MemoryModelStore(), PredictProcessor(config), "binance", "BTC-USDT", imports))
        await asyncio.sleep(0.05)
        assert imports.started and not opening.done()  # the stream waits for its libraries
        load.release.set()
        stream = await asyncio.wait_for(opening, 10)
        assert stream.predictor is not None

    asyncio.run(open_first_stream())
    assert load.calls == [("ensemble",)]
