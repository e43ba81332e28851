"""Group one stream's trades into raw-topic batches. Pure: the caller supplies the clock.

Faust costs ~66 µs per message, so a raw message must carry many trades (docs/architecture.md, "Measured facts"); but a
trade must never wait long for company. The rule, per stream (venue, symbol):

1. trades join the stream's open batch in arrival order;
2. the batch is emitted as soon as it holds `max_batch` trades;
3. a trade whose event time is more than `max_span_ms` after the batch's first trade closes
   the batch (emitted) and opens the next one, so a batch never spans more than
   `max_span_ms` of event time;
4. `expire(clock_ns)` emits every batch opened more than `max_span_ms` before `clock_ns`,
   whatever stream the clock came from, so a trade waits at most `max_span_ms` of input
   time even if its stream goes quiet; callers call it on every input line;
5. `flush()` emits everything at the end.

Each stream has at most one open batch and batches are emitted whole, in order, so a
stream's trades come out in exactly the order they went in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.events import Trade


class TradeBatch(NamedTuple):
    venue: str
    symbol: str
    trades: list[Trade]


@dataclass
class _Open:
    batch: TradeBatch
    opened_clock_ns: int
    first_event_ns: int


@dataclass
class TradeBatcher:
    max_batch: int = 100
    max_span_ms: float = 50.0
    _open: dict[tuple[str, str], _Open] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.max_span_ms < 0:
            raise ValueError(f"max_span_ms must not be negative, got {self.max_span_ms}")
        self._span_ns = int(self.max_span_ms * 1_000_000)

    @property
    def pending(self) -> int:
        """Trades held in open batches."""
        return sum(len(o.batch.trades) for o in self._open.values())

    def add(self, trade: Trade, clock_ns: int) -> list[TradeBatch]:
        """Add one trade received at input time `clock_ns`; returns the batches it completed."""
        key = (trade.venue, trade.symbol)
        done: list[TradeBatch] = []
        current = self._open.get(key)
        if current is not None and trade.event_ts_ns - current.first_event_ns > self._span_ns:
            done.append(self._close(key))
            current = None
        if current is None:
            current = _Open(TradeBatch(trade.venue, trade.symbol, []), clock_ns, trade.event_ts_ns)
            self._open[key] = current
        current.batch.trades.append(trade)
        if len(current.batch.trades) >= self.max_batch:
            done.append(self._close(key))
        return done

    def expire(self, clock_ns: int) -> list[TradeBatch]:
        """Batches opened more than `max_span_ms` before `clock_ns`, oldest first."""
        done: list[TradeBatch] = []
        # `_open` is ordered by opening time (a closed key is removed, a reopened one appended),
        # so only its head can be due.
        while self._open:
            key, oldest = next(iter(self._open.items()))
            if clock_ns - oldest.opened_clock_ns <= self._span_ns:
                break
            done.append(self._close(key))
        return done

    def flush(self) -> list[TradeBatch]:
        """Every open batch, oldest first."""
        done = [o.batch for o in self._open.values()]
        self._open.clear()
        return done

    def _close(self, key: tuple[str, str]) -> TradeBatch:
        return self._open.pop(key).batch
