"""The trade sink's work in a process of its own: building the rows of `trades` from the raw
messages (`trades.table_for_sink`) and inserting them.

Why a process: that work is ~1.5 us a trade of Python (a JSON parse, a column per field, two
decimal casts) and was about a third of the worker's event loop, the worker's one core, while
the machine has two (bench_pipeline with py-spy). A thread would not do: every thread of a
process shares one interpreter lock. The worker keeps what must stay with it: the Faust agent,
its batches and their acknowledgement, which still follows the insert (the agent awaits
`store`), so a crash anywhere re-delivers a batch that the idempotent table absorbs.

The process is started with `spawn` (the worker has threads: forking it would copy their locks
in whatever state), once, when the worker is built: its imports (~0.5 s) overlap the worker's
start-up and group join. It ignores SIGINT (a terminal's Ctrl-C reaches the whole process group;
the worker decides when it ends) and exits when the worker closes it or is gone. A process that
dies under the worker is replaced, and the batch it held is stored again.
Like every `spawn` child, it imports the parent's main module again (`__mp_main__`): a script that
builds a worker must do so under `if __name__ == "__main__":`, as `entasis` does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from schemas.codecs import trades

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from infra.config.settings import Settings

log = logging.getLogger(__name__)


class TradeStoreProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start the process now, if it is not running (its imports take ~0.5 s)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start, initargs=(self.settings,))
            self._pool.submit(_warm_up)  # the process starts on its first task

    async def store(self, messages: Sequence[bytes]) -> int:
        """Store the batch's trades; returns how many rows were inserted. Raises what the insert
        raised (the database refused it or is unreachable), as the in-process sink does."""
        self.start()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _store, list(messages))
        except BrokenProcessPool:
            self.restarts += 1
            log.error("the trade store's process died; a new one stores the batch again")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self.start()
            return await loop.run_in_executor(self._pool, _store, list(messages))

    async def pid(self) -> int:
        """The process's id (asked of the process itself; starts it if need be)."""
        self.start()
        assert self._pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._pool, os.getpid)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# --- in the trade store's process ---------------------------------------------------------------

_settings: Settings | None = None
_client: Client | None = None


def _start(settings: Settings) -> None:
    global _settings
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _settings = settings
    threading.Thread(target=_exit_with, args=(os.getppid(),), name="parent-watch", daemon=True).start()


def _exit_with(parent: int) -> None:
    """End this process once the worker is gone: killed, it closes nothing this process would
    notice (the task queue's pipe has a writer in this process too)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _warm_up() -> None:
    import pyarrow as pa

    import infra.store.clickhouse  # noqa: F401  (clickhouse-connect and pyarrow, before the first batch)

    pa.array([0])  # pyarrow imports pandas on its first conversion of Python values (~0.2 s)

    # A batch parses ~50,000 rows into lists that die with it, none in a cycle: collecting the
    # young generation every 700 allocations (the default) measured ~2x the parse's own cost
    # (818 against 357 ns a trade at 100,000). Frozen: what the imports made is never scanned again.
    gc.freeze()
    gc.set_threshold(100_000, 20, 20)


def _store(messages: list[bytes]) -> int:
    global _client
    table = trades.table_for_sink(messages)
    if table.num_rows == 0:
        return 0
    try:
        if _client is None:
            from infra.store.clickhouse import make_client

            assert _settings is not None
            _client = make_client(_settings)
        _client.insert_arrow("trades", table)
    except Exception as exc:
        _client = None  # connect afresh next time
        # re-raised as a plain error: the driver's exception types need not survive pickling
        raise RuntimeError(f"trade insert failed: {type(exc).__name__}: {exc}") from None
    return int(table.num_rows)
