"""When to try a request again, and how long to wait first: pure functions of the attempt, the
answer and the `Retry-After` header, so the policy is tested without a clock or a server.

- 429 and 503 with a `Retry-After` are retried (`retry_statuses`), waiting exactly what it says.
  A `Retry-After` longer than `max_retry_after` is not waited for: the error is raised at once,
  with `.retry_after` set (a warming-up model says hours; a call should not hang that long).
- Without the header, only `backoff_statuses` (429) are retried, with exponential backoff and
  jitter. This API announces the 503s worth retrying (a portfolio answer still pending, a busy
  backtest, a model warming up) with `Retry-After`; one without it ("no risk estimate yet", a
  feed down) would most likely answer the same a few seconds later.
- A request that got no answer (connection refused or reset, timeout) is retried with backoff
  when `retry_connection_errors` (TLS certificate failures never are).
- `max_attempts` counts every attempt, the first included: 1 turns retrying off.

Every POST carries an `Idempotency-Key` that stays the same across the attempts of one call, so a
retried write is answered with the first result instead of being applied twice."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["ReconnectPolicy", "RetryPolicy", "parse_retry_after"]


def _backoff(number: int, initial: float, multiplier: float, maximum: float, jitter: float, rand: float) -> float:
    """The `number`-th wait (1, 2, ...): initial × multiplier^(number-1), capped, spread by
    ±`jitter` (a fraction) with `rand` in [0, 1)."""
    base = initial
    for _ in range(max(0, number - 1)):  # stepwise: a forever-reconnecting client must not overflow
        if base >= maximum:
            break
        base *= multiplier
    base = min(maximum, base)
    return max(0.0, base * (1.0 + jitter * (2.0 * rand - 1.0)))


@dataclass(frozen=True)
class RetryPolicy:
    """How a REST call is retried (see the module's doc). The default: up to 4 attempts.
    `RetryPolicy(backoff_statuses=frozenset({429, 503}))` also retries unannounced 503s."""

    max_attempts: int = 4
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))
    backoff_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429}))
    retry_connection_errors: bool = True
    backoff_initial: float = 0.5
    backoff_multiplier: float = 2.0
    backoff_max: float = 8.0
    jitter: float = 0.1
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts counts the first attempt too: at least 1")
        if self.backoff_initial < 0 or self.backoff_max < 0 or self.max_retry_after < 0:
            raise ValueError("waits cannot be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(max_attempts=1)

    def backoff(self, retry: int, rand: float = 0.5) -> float:
        """The wait before retry number `retry` (1 for the first retry) without `Retry-After`."""
        return _backoff(retry, self.backoff_initial, self.backoff_multiplier, self.backoff_max, self.jitter, rand)

    def delay(
        self,
        attempt: int,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        connection_error: bool = False,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before another attempt after attempt number `attempt` (1 for the first)
        failed, or None: do not retry. `status`: the answer's HTTP status (None when there was no
        answer, then `connection_error` says whether it is a retryable one); `retry_after`: its
        `Retry-After` in seconds, if any."""
        if attempt >= self.max_attempts:
            return None
        if status is None:
            return self.backoff(attempt, rand()) if connection_error and self.retry_connection_errors else None
        if retry_after is not None and status in self.retry_statuses:
            return max(0.0, retry_after) if retry_after <= self.max_retry_after else None
        if retry_after is None and status in self.backoff_statuses:
            return self.backoff(attempt, rand())
        return None


@dataclass(frozen=True)
class ReconnectPolicy:
    """How the WebSocket client reconnects: exponential backoff with jitter from `initial` to
    `maximum` seconds; `max_attempts` consecutive failed connections before giving up (None: never
    give up). The count restarts once a connection is up and resubscribed."""

    initial: float = 0.5
    multiplier: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.2
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("waits cannot be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts: at least 1, or None")

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float | None:
        """The wait before reconnecting after `failures` consecutive failures (1, 2, ...), or None
        when the policy gives up."""
        if self.max_attempts is not None and failures > self.max_attempts:
            return None
        return _backoff(failures, self.initial, self.multiplier, self.maximum, self.jitter, rand())


def parse_retry_after(value: str | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """`Retry-After` in seconds: delta-seconds (`"12"`) or an HTTP date; None when absent or
    unreadable. A date in the past is 0."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())
