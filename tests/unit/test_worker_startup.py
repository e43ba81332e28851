"""The worker's Faust app starts table recovery (which gates its first fetch) without Faust's
fixed one-second wait: `streams.app.PromptTableManager`, measured by `bench_pipeline` as worker
spawn -> Ready 4.4 s -> 3.3-3.6 s."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
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


def tansu_join_hold_s(session_timeout_s: float) -> float:
    """How long Tansu 0.6 holds a JoinGroup, as its coordinator's loop does it
    (tansu-broker src/coordinator/group/administrator.rs, join_group): while less than half the
    session timeout has passed since the request arrived, sleep one whole second and look again."""
    elapsed = 0.0
    while elapsed < session_timeout_s / 2:
        elapsed += 1.0
    return elapsed


def test_a_worker_on_the_embedded_broker_joins_after_one_of_its_sleeps() -> None:
    conf = faust_settings(Settings(worker_id="test-join", kafka_bootstrap="127.0.0.1:1", broker_flavour="tansu"))
    session = conf["broker_session_timeout"]
    assert tansu_join_hold_s(session) == 1.0  # 3 s (the previous setting) held joins for 2 s
    # heartbeats well inside the session, as Kafka's clients require (at most a third of it)
    assert conf["broker_heartbeat_interval"] <= session / 3
    kafka = faust_settings(Settings(worker_id="test-join", kafka_bootstrap="127.0.0.1:1", broker_flavour="kafka"))
    assert "broker_session_timeout" not in kafka  # a real Kafka keeps Faust's defaults


PRELOADED = ("scipy.special", "pandas")


def _imported_after(code: str) -> dict[str, bool]:
    script = f"import sys, infra.cli.main, streams.app\n{code}\nprint([m in sys.modules for m in {PRELOADED!r}])"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root)
    return dict(zip(PRELOADED, ast.literal_eval(out.stdout.strip()), strict=True))


def test_a_starting_worker_imports_its_late_libraries_on_the_preload_thread() -> None:
    """`entasis worker` imports neither before it builds the app (scipy.special ~0.3 s, pandas ~0.2 s);
    the preload thread imports both (streams.runtime.preload), while the worker joins its group."""
    assert _imported_after("") == {"scipy.special": False, "pandas": False}
    assert _imported_after("from streams.runtime.preload import start_preload\nstart_preload().join()") == {
        "scipy.special": True, "pandas": True}
