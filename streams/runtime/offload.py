"""Work taken off the event loop onto a thread of its own: one call at a time, in call order, so
a stream's state is never touched by two threads, and the shared loop never stalls on a long
computation (a model refit, a rebuild). `inline` runs the calls on the loop instead (benchmarks)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Offload:
    def __init__(self, name: str, *, inline: bool = False) -> None:
        self.name, self.inline = name, inline
        self.executor: ThreadPoolExecutor | None = None  # made on the first call

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.inline:
            return fn(*args)
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
