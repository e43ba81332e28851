"""The latest risk estimate of each series, method and interval, kept in memory from the risk
topic the API process consumes (api/ws/feed.py), in front of the store's `risk_estimates`
(docs/architecture.md, "the API is a read model").

Same answer as the store's `ORDER BY as_of DESC LIMIT 1` over `risk_estimates FINAL`: the
estimate with the latest as-of time wins, amounts rounded to the store's 8 places. The consumer
reads from the topic's end, so estimates published before the process started are the store's:
the first request of a key that memory has not seen goes to the store, and what it returns is
kept (an older stored row never replaces a newer consumed one). Estimates consumed but not yet
stored are served at once, as the price route serves trades.

Readers run in the threadpool while the consumer writes on the event loop: one lock, held for a
dict operation."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Protocol

from infra.store.risk_repository import RiskRow
from schemas.risk import RiskEstimate

_PLACES = Decimal("1e-8")  # the store's Decimal(38, 8) (schemas/codecs/risk.py rounds the same way)

Key = tuple[str, str, str, str]  # venue, symbol, method, interval


class RiskStore(Protocol):
    def latest_risk(self, symbol: str, venue: str, method: str, interval: str) -> RiskRow | None: ...


def row_of(estimate: RiskEstimate) -> RiskRow:
    """The row the store will hold for `estimate`."""
    return RiskRow(
        estimate.event_ts_ns, estimate.price.quantize(_PLACES), estimate.var_95.quantize(_PLACES),
        estimate.expected_shortfall.quantize(_PLACES), estimate.volatility.quantize(_PLACES), estimate.window,
    )


class LatestRisk:
    def __init__(self) -> None:
        self._rows: dict[Key, RiskRow] = {}
        self._lock = threading.Lock()
        self.hits = 0  # answers from memory (statistics, tests)
        self.misses = 0

    def apply(self, estimate: RiskEstimate) -> None:
        """A consumed `risk_estimate.v1`."""
        key = (estimate.venue, estimate.symbol, estimate.method.value, estimate.interval.value)
        self.offer(key, row_of(estimate))

    def offer(self, key: Key, row: RiskRow) -> None:
        # An equal as-of time replaces: the agent's estimates are deterministic, so a re-emitted
        # one carries the same numbers, and the store keeps the last insert of a key the same way.
        with self._lock:
            held = self._rows.get(key)
            if held is None or row.as_of_ns >= held.as_of_ns:
                self._rows[key] = row

    def held(self, key: Key) -> RiskRow | None:
        with self._lock:
            return self._rows.get(key)

    def latest_risk(self, store: RiskStore, symbol: str, venue: str, method: str, interval: str) -> RiskRow | None:
        """Memory's row of the key, else the store's (then kept)."""
        key = (venue, symbol, method, interval)
        row = self.held(key)
        if row is not None:
            self.hits += 1
            return row
        self.misses += 1
        row = store.latest_risk(symbol, venue, method, interval)
        if row is not None:
            self.offer(key, row)
            return self.held(key)
        return None
