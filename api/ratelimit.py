"""Rate limiting with the `limits` library's moving window: at most N requests in any window of the
configured length (default 1000 per minute), per account when authenticated, per client address
otherwise.

Storage: in process memory by default; Redis when a URL is configured, so every API process
shares the counters (Lua scripts in Redis do the counting atomically; the entries are stamped with
each API host's clock, so those hosts need synchronised clocks, as NTP gives). If Redis becomes
unreachable, requests are counted in this process's memory until it answers again (retried every
few seconds, logged): each process then still enforces the limit on its own, rather than letting
everything through or refusing everything.

Headers (docs/decisions.md, "Credentials and limits"): `X-RateLimit-Limit`, `X-RateLimit-Remaining` (after this
request), `X-RateLimit-Reset` (whole seconds until the window frees a request, i.e. until the
oldest counted request leaves it), and on 429 `Retry-After` (the same wait, at least 1 and at most
60 seconds).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from limits import RateLimitItem
from limits import parse as parse_limit
from limits.aio.storage import RedisStorage as AsyncRedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow

logger = logging.getLogger("api.ratelimit")

KEY_PREFIX = "entasis-rl"
MAX_RETRY_AFTER_S = 60
_REDIS_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # whole seconds until the window frees a request

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(min(MAX_RETRY_AFTER_S, max(1, self.reset_s)))
        return headers


def _decision(item: RateLimitItem, allowed: bool, reset_at: float, remaining: int) -> RateDecision:
    reset_s = max(0, math.ceil(reset_at - time.time()))
    return RateDecision(allowed, item.amount, max(0, remaining) if allowed else 0, min(reset_s, item.get_expiry()))


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


class RateLimiter(Protocol):
    async def hit(self, identity: str) -> RateDecision: ...


class MemoryRateLimiter:
    """In this process only: the moving window kept by hand, one deque of hit times per identity.

    Why not `limits`' MemoryStorage (it is still what parses the limit, and what counts in Redis):
    it starts a timer thread every 10 ms that walks every key's list under the GIL, 2.2 ms a sweep
    with 600 accounts of 300 hits each on this machine: a fifth of a core, and every request that
    arrives meanwhile waits for the GIL. Here a key's expired hits are dropped when the key is hit,
    and idle keys leave in the order they were last hit, a few per call: no thread, no sweep.

    Same window as `limits`' moving window: a hit counts while it is at most the window's length
    old, a request is allowed while fewer than the limit count, and the window frees a request
    when its oldest counted hit leaves it. A thread lock, not an asyncio one, so the limiter is not
    tied to an event loop (each call is microseconds with no I/O)."""

    def __init__(self, limit: str) -> None:
        self.item = parse_limit(limit)
        self.amount = self.item.amount
        self.window_s = float(self.item.get_expiry())
        # identity -> its hit times (monotonic, oldest first), ordered by when it was last hit
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    async def hit(self, identity: str) -> RateDecision:
        return self.hit_now(identity)

    def hit_now(self, identity: str) -> RateDecision:
        now = time.monotonic()
        horizon = now - self.window_s
        with self._lock:
            self._forget_idle(horizon)
            hits = self._hits.get(identity)
            if hits is None:
                hits = self._hits[identity] = deque()
            else:
                self._hits.move_to_end(identity)
                while hits and hits[0] < horizon:
                    hits.popleft()
            allowed = len(hits) < self.amount
            if allowed:
                hits.append(now)
            remaining = self.amount - len(hits)
            oldest = hits[0] if hits else now
        reset_s = min(max(0, math.ceil(oldest + self.window_s - now)), int(self.window_s))
        return RateDecision(allowed, self.amount, remaining if allowed else 0, reset_s)

    def _forget_idle(self, horizon: float, at_most: int = 4) -> None:
        """Drops up to `at_most` identities none of whose hits is still in the window: the least
        recently hit come first, so the idle ones leave as fast as new ones arrive."""
        for _ in range(at_most):
            if not self._hits:
                return
            identity, hits = next(iter(self._hits.items()))
            if hits and hits[-1] >= horizon:
                return
            del self._hits[identity]


class RedisRateLimiter:
    """Counters in Redis, shared by every API process that uses the same URL."""

    def __init__(self, limit: str, url: str) -> None:
        self.item = parse_limit(limit)
        self.url = url
        self._fallback = MemoryRateLimiter(limit)
        self._strategy: AsyncMovingWindow | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_until = 0.0

    def _storage_uri(self) -> str:
        return self.url if self.url.startswith("async+") else "async+" + self.url

    def _for_this_loop(self) -> AsyncMovingWindow:
        # redis.asyncio connections belong to the loop that opened them; a served app has one
        # loop, test clients start a new one each.
        loop = asyncio.get_running_loop()
        if self._strategy is None or self._loop is not loop:
            storage = AsyncRedisStorage(
                self._storage_uri(),
                implementation="redispy",
                key_prefix=KEY_PREFIX,
                wrap_exceptions=True,
                socket_connect_timeout=1.0,
                socket_timeout=1.0,
            )
            self._strategy = AsyncMovingWindow(storage)
            self._loop = loop
        return self._strategy

    async def hit(self, identity: str) -> RateDecision:
        if time.monotonic() < self._down_until:
            return self._fallback.hit_now(identity)
        try:
            strategy = self._for_this_loop()
            allowed = await strategy.hit(self.item, identity)
            reset_at, remaining = await strategy.get_window_stats(self.item, identity)
        except Exception as exc:  # any storage failure: count locally rather than fail open or closed
            self._down_until = time.monotonic() + _REDIS_RETRY_S
            self._strategy = None
            logger.error(
                "rate-limit store %s unreachable (%s); counting in this process for now", _redacted(self.url), exc
            )
            return self._fallback.hit_now(identity)
        return _decision(self.item, allowed, reset_at, remaining)


def build_rate_limiter(limit: str, redis_url: str | None) -> RateLimiter:
    return RedisRateLimiter(limit, redis_url) if redis_url else MemoryRateLimiter(limit)
