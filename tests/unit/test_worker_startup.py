"""The worker's Faust app starts table recovery (which gates its first fetch) without Faust's
fixed one-second wait: `streams.app.PromptTableManager`, measured by `bench_pipeline` as worker
spawn -> Ready 4.4 s -> 3.3-3.6 s."""

from __future__ import annotations

from typing import Any

import faust

from infra.config.settings import Settings
from streams.app import PromptTableManager, faust_settings


async def test_the_worker_starts_table_recovery_without_waiting() -> None:
    app = faust.App("test-startup", **faust_settings(Settings(worker_id="test-startup", kafka_bootstrap="127.0.0.1:1")))
    manager = app.tables
    assert isinstance(manager, PromptTableManager)
    waits: list[Any] = []
    started: list[bool] = []

    async def sleep(seconds: Any) -> None:
        waits.append(seconds)

    async def start_recovery() -> None:
        started.append(True)

    async def update_channels() -> None:
        pass

    manager.sleep = sleep  # type: ignore[method-assign]
    manager.recovery.start = start_recovery  # type: ignore[method-assign]
    manager._update_channels = update_channels  # type: ignore[method-assign]
    await manager.on_start()
    assert started == [True]
    assert waits == []
