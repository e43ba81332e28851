"""The worker's calls to its database, tried again until the database answers.

The database may be down, restarting or refusing for a while (a ClickHouse server upgraded, the
embedded owner busy). What an agent cannot do without (store a sink's batch, read the checkpoint
or the stored candles a stream starts from) waits for it with backoff, its input held and
unacknowledged, instead of raising: Faust restarts an agent that raised on the messages after the
one it failed, which that worker then never handles (and its consumer never commits past the gap),
and a timer that raises stops the whole worker. A stop cancels the wait; what was held is
delivered again after the restart.

Hand-written rather than tenacity's `AsyncRetrying`: one loop over `streams.core.backoff`, which the
connectors already use, with the warning and the metrics hook the worker needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from streams.core.backoff import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

# A failed call is tried again after a delay drawn up to RETRY_FIRST_S, doubling up to RETRY_MAX_S.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
# The database driver's errors carry the whole request URL: the warning keeps their start.
ERROR_CHARS = 300


def brief(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:ERROR_CHARS]}{'...' if len(text) > ERROR_CHARS else ''}"


async def until_done(call: Callable[[], Awaitable[T]], what: str, on_failure: Callable[[], None] | None = None,
                     backoff: Backoff | None = None) -> T:
    """`await call()` until it succeeds, with backoff. For writes: the same rows are sent again
    (every table is idempotent, so rows an attempt stored before failing collapse). `on_failure()`
    is told each failed attempt (the metrics)."""
    backoff = backoff or Backoff(RETRY_FIRST_S, RETRY_MAX_S)
    while True:
        try:
            return await call()
        except Exception as exc:  # not CancelledError (a BaseException): a stop ends the retries
            if on_failure is not None:
                on_failure()
            delay = backoff.next()
            log.warning("%s failed (attempt %d: %s); trying again in %.1f s, holding what comes after it",
                        what, backoff.attempt, brief(exc), delay)
            await asyncio.sleep(delay)
