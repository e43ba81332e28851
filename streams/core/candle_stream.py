"""Every candle interval of one (venue, symbol) stream, with duplicate trades dropped.

Higher intervals are built from the trades themselves, not from 1m candles, and equal what
rolling up the 1m candles gives: a trade too late for its (final) 1m window is dropped from
every interval, so no interval counts a trade another one does not. Pure logic: the caller
passes the clock (`advance_to`) and persists `to_state()`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from schemas.events import INTERVAL_NS, Candle
from schemas.wire import TradeRow
from streams.core.candles import CandleBuilder, one_partial, partials

INTERVALS: tuple[str, ...] = tuple(INTERVAL_NS)  # finest first: 1m, 5m, 1h, 1d
STATE_VERSION = 1


@dataclass
class StreamUpdate:
    candles: list[Candle] = field(default_factory=list)
    late: list[TradeRow] = field(default_factory=list)
    duplicates: list[TradeRow] = field(default_factory=list)


class RecentIds:
    """The last `capacity` trade ids of a stream: a re-sent trade is recognised and dropped.
    Bounded, because a stream runs forever; exchanges re-send recent trades, not old ones."""

    def __init__(self, capacity: int, ids: Iterable[str] = ()):
        self.capacity = capacity
        self._order: deque[str] = deque(maxlen=capacity)
        self._set: set[str] = set()
        for trade_id in ids:
            self.add(trade_id)

    def add(self, trade_id: str) -> bool:
        """True if new; False if seen among the recent ids."""
        if trade_id in self._set:
            return False
        if len(self._order) == self.capacity:
            self._set.discard(self._order[0])
        self._order.append(trade_id)
        self._set.add(trade_id)
        return True

    def add_all(self, trade_ids: Sequence[str]) -> bool:
        """Every one of `trade_ids` remembered, as `add` one by one would, and True, when all
        are new and distinct (the common case); False, with nothing changed, otherwise."""
        seen = self._set
        fresh = set(trade_ids)
        if len(fresh) != len(trade_ids) or not seen.isdisjoint(fresh):
            return False
        if len(trade_ids) >= self.capacity:
            kept = trade_ids[len(trade_ids) - self.capacity :]
            self._order, self._set = deque(kept, maxlen=self.capacity), set(kept)
            return True
        # the oldest ids that `add` would push out of a full window
        overflow = len(self._order) + len(trade_ids) - self.capacity
        if overflow > 0:
            seen.difference_update(islice(self._order, overflow))
        self._order.extend(trade_ids)
        seen |= fresh
        return True

    def __iter__(self) -> Any:
        return iter(self._order)

    def __contains__(self, trade_id: object) -> bool:
        return trade_id in self._set


class CandleStream:
    def __init__(self, venue: str, symbol: str, intervals: Sequence[str] = INTERVALS, lateness_ns: int = 0,
                 grace_ns: int = 0, dedupe_capacity: int = 4096):
        ordered = sorted(intervals, key=INTERVAL_NS.__getitem__)
        self.venue, self.symbol = venue, symbol
        self.builders = [CandleBuilder(venue, symbol, iv, lateness_ns, grace_ns) for iv in ordered]
        self.recent = RecentIds(dedupe_capacity)

    @property
    def max_event_ts_ns(self) -> int | None:
        return self.builders[0].max_event_ts_ns

    def update(self, trades: Iterable[TradeRow]) -> StreamUpdate:
        out = StreamUpdate()
        trades = trades if isinstance(trades, list) else list(trades)
        fresh = trades
        if not self.recent.add_all([t.trade_id for t in trades]):
            fresh = []
            for t in trades:
                if self.recent.add(t.trade_id):
                    fresh.append(t)
                else:
                    out.duplicates.append(t)
        finest, *coarser = self.builders
        # The common case: the message's trades fall in one open window of the finest interval.
        # They are folded once, into a partial window that the finest merges and the coarser
        # intervals (multiples of it) merge too.
        part = one_partial(fresh, finest.interval_ns)
        if part is not None and (merged := finest.merge_into_open(part)) is not None:
            out.candles += merged.candles
            parts = [part]
        else:
            first = finest.update(fresh)
            out.candles += first.candles
            out.late = first.late
            on_time = fresh
            if first.late:
                late_ids = {id(t) for t in first.late}
                on_time = [t for t in fresh if id(t) not in late_ids]
            # every interval is a multiple of the finest: fold its per-bucket partials, not each trade
            parts = partials(on_time, finest.interval_ns) if coarser and on_time else []
        if parts:
            for builder in coarser:
                out.candles += builder.update_partials(parts).candles
        return out

    def advance_to(self, watermark_ns: int) -> list[Candle]:
        """Idle close: see CandleBuilder.advance_to."""
        candles: list[Candle] = []
        for builder in self.builders:
            candles += builder.advance_to(watermark_ns).candles
        return candles

    def open_candles(self) -> list[Candle]:
        return [c for b in self.builders for c in b.open_candles()]

    def to_state(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "intervals": {b.interval.value: b.to_state() for b in self.builders},
            "recent_ids": list(self.recent),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unknown candle state version {state.get('v')!r}")
        for builder in self.builders:
            saved = state["intervals"].get(builder.interval.value)
            if saved is not None:
                builder.restore(saved)
        self.recent = RecentIds(self.recent.capacity, state["recent_ids"])
