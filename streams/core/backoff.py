"""Reconnect delays: exponential backoff with full jitter. Pure.

Hand-written rather than taken from tenacity/backoff: those retry one function call, while a
connector's loop runs forever and must reset its delay the moment a connection works again."""

from __future__ import annotations

import random


class Backoff:
    """`next()` is uniform in [0, min(maximum, initial * 2**attempt)] ("full jitter"), so many
    clients dropped at once do not come back in step; `reset()` after a success."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0, rng: random.Random | None = None) -> None:
        if initial_s <= 0 or maximum_s < initial_s:
            raise ValueError(f"need 0 < initial_s <= maximum_s, got {initial_s}, {maximum_s}")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The largest delay the next attempt may get."""
        return min(self.maximum_s, self.initial_s * 2.0 ** min(self.attempt, 62))

    def next(self) -> float:
        delay = self._rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
