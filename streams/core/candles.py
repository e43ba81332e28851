"""Event-time OHLCV candles for one stream (venue, symbol) and one interval.

A window [open, open + interval) closes when the watermark (max event time seen minus the
allowed lateness) reaches its end: it is emitted as revision 0. A trade that arrives for a
closed window while the watermark is still within `grace` of the window's end updates the
candle and emits revision + 1. When the watermark passes end + grace the candle is final:
with grace 0 the first emission is already final; otherwise a last emission with
`is_final=True` (same revision) tells consumers nothing more will come. Trades for a final
window are returned as late (the caller reports them; they never change a final candle).

Open is the earliest trade by event time and close the latest (ties: arrival order), which
for an exchange feed in trade-id order is the first and last trade by id.

Pure logic: no I/O, no clock. Deterministic: the same trades in the same order give the
same emissions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from schemas.events import INTERVAL_NS, Candle, Interval
from schemas.wire import TradeRow


@dataclass
class _Window:
    open_ts_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int
    first_trade_id: str
    last_trade_id: str
    first_ts_ns: int
    last_ts_ns: int
    max_recv_ns: int
    revision: int = 0
    emitted: bool = False

    @classmethod
    def start(cls, open_ts_ns: int, t: TradeRow) -> _Window:
        return cls(open_ts_ns, t.price, t.price, t.price, t.price, t.size, 1, t.trade_id, t.trade_id,
                   t.event_ts_ns, t.event_ts_ns, t.recv_ts_ns)

    def add(self, t: TradeRow) -> None:
        price, ts = t.price, t.event_ts_ns
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        if ts < self.first_ts_ns:
            self.open, self.first_ts_ns, self.first_trade_id = price, ts, t.trade_id
        if ts >= self.last_ts_ns:
            self.close, self.last_ts_ns, self.last_trade_id = price, ts, t.trade_id
        if t.recv_ts_ns > self.max_recv_ns:
            self.max_recv_ns = t.recv_ts_ns
        self.volume += t.size
        self.trades += 1

    def add_all(self, trades: Sequence[TradeRow]) -> None:
        """`add` of each of `trades` in order, folded field by field with builtins (C loops
        instead of a Python call per trade). Same result to the object: `max`/`min` keep the
        first of equal extremes as `add`'s strict comparisons do, the open is the first trade at
        the earliest time and the close the last at the latest, and the volume is summed in the
        same order."""
        ids, prices, sizes, _, times, received = zip(*trades, strict=True)
        high, low = max(prices), min(prices)
        if high > self.high:
            self.high = high
        if low < self.low:
            self.low = low
        first_ts = min(times)
        if first_ts < self.first_ts_ns:
            i = times.index(first_ts)
            self.open, self.first_ts_ns, self.first_trade_id = prices[i], first_ts, ids[i]
        last_ts = max(times)
        if last_ts >= self.last_ts_ns:
            i = len(times) - 1 - times[::-1].index(last_ts)
            self.close, self.last_ts_ns, self.last_trade_id = prices[i], last_ts, ids[i]
        max_recv = max(received)
        if max_recv > self.max_recv_ns:
            self.max_recv_ns = max_recv
        self.volume = sum(sizes, self.volume)
        self.trades += len(times)

    def merge(self, p: _Window) -> None:
        """Fold in a partial window (the same rules as adding its trades one by one)."""
        if p.high > self.high:
            self.high = p.high
        if p.low < self.low:
            self.low = p.low
        if p.first_ts_ns < self.first_ts_ns:
            self.open, self.first_ts_ns, self.first_trade_id = p.open, p.first_ts_ns, p.first_trade_id
        if p.last_ts_ns >= self.last_ts_ns:
            self.close, self.last_ts_ns, self.last_trade_id = p.close, p.last_ts_ns, p.last_trade_id
        if p.max_recv_ns > self.max_recv_ns:
            self.max_recv_ns = p.max_recv_ns
        self.volume += p.volume
        self.trades += p.trades


def one_partial(trades: Sequence[TradeRow], interval_ns: int) -> _Window | None:
    """`trades` pre-aggregated, when they all fall in one `interval_ns` bucket (the common case: a
    message holds milliseconds of one stream); None when they span buckets or there are none."""
    bucket = _one_bucket(trades, interval_ns)
    if bucket is None:
        return None
    window = _Window.start(bucket[0], trades[0])
    if len(trades) > 1:
        window.add_all(trades[1:])
    return window


def partials(trades: Sequence[TradeRow], interval_ns: int) -> list[_Window]:
    """Trades pre-aggregated per `interval_ns` bucket, in order of first arrival. Coarser
    intervals fold these instead of every trade: one merge per bucket and message."""
    one = one_partial(trades, interval_ns)
    if one is not None:
        return [one]
    out: dict[int, _Window] = {}
    for t in trades:
        open_ts = t.event_ts_ns - t.event_ts_ns % interval_ns
        w = out.get(open_ts)
        if w is None:
            out[open_ts] = _Window.start(open_ts, t)
        else:
            w.add(t)
    return list(out.values())


def _one_bucket(trades: Sequence[TradeRow], interval_ns: int) -> tuple[int, int] | None:
    """(open time of the one `interval_ns` bucket all of `trades` fall in, their latest event
    time); None when they span more than one bucket (or there are none)."""
    if not trades:
        return None
    times = [t.event_ts_ns for t in trades]
    first, last = min(times), max(times)
    open_ts = first - first % interval_ns
    return (open_ts, last) if last < open_ts + interval_ns else None


@dataclass
class CandleUpdate:
    """What one `update` produced: candles to publish and trades too late to count."""

    candles: list[Candle] = field(default_factory=list)
    late: list[TradeRow] = field(default_factory=list)


class CandleBuilder:
    def __init__(self, venue: str, symbol: str, interval: str | Interval, lateness_ns: int = 0, grace_ns: int = 0):
        self.venue = venue
        self.symbol = symbol
        self.interval = Interval(interval)
        self.interval_ns = INTERVAL_NS[self.interval.value]
        self.lateness_ns = lateness_ns
        self.grace_ns = grace_ns
        self.max_event_ts_ns: int | None = None
        self._idle_watermark_ns: int | None = None  # pushed by the wall clock when the stream is quiet
        self._open: dict[int, _Window] = {}  # not yet emitted
        self._closed: dict[int, _Window] = {}  # emitted, still inside the grace period

    @property
    def watermark_ns(self) -> int | None:
        from_events = None if self.max_event_ts_ns is None else self.max_event_ts_ns - self.lateness_ns
        if self._idle_watermark_ns is None:
            return from_events
        return self._idle_watermark_ns if from_events is None else max(from_events, self._idle_watermark_ns)

    def advance_to(self, watermark_ns: int) -> CandleUpdate:
        """Move the watermark without a trade (the caller's idle timeout estimated how far
        event time has gone); windows that end before it close now. Never moves back."""
        if self._idle_watermark_ns is None or watermark_ns > self._idle_watermark_ns:
            self._idle_watermark_ns = watermark_ns
        out = CandleUpdate()
        self._advance(out)
        return out

    def bucket(self, event_ts_ns: int) -> int:
        return event_ts_ns - event_ts_ns % self.interval_ns

    def update(self, trades: Iterable[TradeRow]) -> CandleUpdate:
        out = CandleUpdate()
        revised: set[int] = set()
        trades = trades if isinstance(trades, list | tuple) else list(trades)
        # the common case, all of them in one open window: folded at once
        part = one_partial(trades, self.interval_ns)
        if part is not None and (merged := self.merge_into_open(part)) is not None:
            return merged
        for t in trades:
            self._add(t, out, revised)
        self._emit_revisions(revised, out)
        self._advance(out)
        return out

    def update_partials(self, parts: Iterable[_Window]) -> CandleUpdate:
        """Like `update`, from partial windows of a finer interval that divides this one
        (see `partials`); the caller has already dropped trades too late for the finer one."""
        out = CandleUpdate()
        revised: set[int] = set()
        for p in parts:
            if self.max_event_ts_ns is None or p.last_ts_ns > self.max_event_ts_ns:
                self.max_event_ts_ns = p.last_ts_ns
            open_ts = p.open_ts_ns - p.open_ts_ns % self.interval_ns
            window = self._open.get(open_ts)
            if window is not None:
                window.merge(p)
            elif open_ts in self._closed:
                self._closed[open_ts].merge(p)
                revised.add(open_ts)
            else:
                # never final here: a finer window that is not final lies in a coarser one that is not
                self._open[open_ts] = _Window(**{**asdict(p), "open_ts_ns": open_ts, "revision": 0, "emitted": False})
        self._emit_revisions(revised, out)
        self._advance(out)
        return out

    def merge_into_open(self, part: _Window) -> CandleUpdate | None:
        """A partial window of this interval (`one_partial`) merged into the open window it
        belongs to, as `update` of its trades would fold them (none is late or revises an emitted
        window there), then the watermark's closes; None, with nothing changed, when that window
        is not open. Lets a `CandleStream` fold a message once for its finest interval and pass
        the same partial on to the coarser ones."""
        window = self._open.get(part.open_ts_ns)
        if window is None:
            return None
        if self.max_event_ts_ns is None or part.last_ts_ns > self.max_event_ts_ns:
            self.max_event_ts_ns = part.last_ts_ns
        window.merge(part)
        out = CandleUpdate()
        self._advance(out)
        return out

    def _add(self, t: TradeRow, out: CandleUpdate, revised: set[int]) -> None:
        if self.max_event_ts_ns is None or t.event_ts_ns > self.max_event_ts_ns:
            self.max_event_ts_ns = t.event_ts_ns
        open_ts = t.event_ts_ns - t.event_ts_ns % self.interval_ns
        window = self._open.get(open_ts)
        if window is not None:
            window.add(t)
            return
        window = self._closed.get(open_ts)
        if window is not None:
            window.add(t)
            revised.add(open_ts)
            return
        if self._is_final(open_ts):
            out.late.append(t)
            return
        self._open[open_ts] = _Window.start(open_ts, t)

    def _emit_revisions(self, revised: set[int], out: CandleUpdate) -> None:
        """One new revision per emitted window that late trades changed in this update."""
        for open_ts in sorted(revised):
            window = self._closed[open_ts]
            window.revision += 1
            out.candles.append(self._candle(window, is_final=False))

    def _is_final(self, open_ts: int) -> bool:
        """A window whose end + grace the watermark has passed can never change again. A
        window emitted and then finalised is gone from our state, so this also says 'late'."""
        wm = self.watermark_ns
        return wm is not None and open_ts + self.interval_ns + self.grace_ns <= wm and open_ts not in self._open

    def _advance(self, out: CandleUpdate) -> None:
        wm = self.watermark_ns
        if wm is None:
            return
        for open_ts in sorted(ts for ts in self._open if ts + self.interval_ns <= wm):
            window = self._open.pop(open_ts)
            window.emitted = True
            final = open_ts + self.interval_ns + self.grace_ns <= wm
            out.candles.append(self._candle(window, is_final=final))
            if not final:
                self._closed[open_ts] = window
        for open_ts in sorted(ts for ts in self._closed if ts + self.interval_ns + self.grace_ns <= wm):
            out.candles.append(self._candle(self._closed.pop(open_ts), is_final=True))

    def pending_since_ns(self) -> int | None:
        """Open time of the oldest window that can still change (open, or closed within
        grace); None when every window seen is final. A trade in a window at or after this
        point must be seen again after a restart to rebuild the state exactly."""
        pending = list(self._open) + list(self._closed)
        return min(pending) if pending else None

    def to_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this builder is, as JSON-able data."""
        return {
            "max_event_ts_ns": self.max_event_ts_ns,
            "idle_watermark_ns": self._idle_watermark_ns,
            "open": [_window_state(w) for w in self._open.values()],
            "closed": [_window_state(w) for w in self._closed.values()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.max_event_ts_ns = state["max_event_ts_ns"]
        self._idle_watermark_ns = state["idle_watermark_ns"]
        self._open = {w.open_ts_ns: w for w in map(_window_from_state, state["open"])}
        self._closed = {w.open_ts_ns: w for w in map(_window_from_state, state["closed"])}

    def open_candles(self) -> list[Candle]:
        """The windows not yet emitted, as provisional candles (revision 0, not final)."""
        return [self._candle(self._open[ts], is_final=False) for ts in sorted(self._open)]

    def _candle(self, w: _Window, is_final: bool) -> Candle:
        return Candle(
            venue=self.venue,
            symbol=self.symbol,
            interval=self.interval,
            open_ts_ns=w.open_ts_ns,
            event_ts_ns=w.last_ts_ns,
            recv_ts_ns=w.max_recv_ns,  # derived: when its latest input arrived, never the wall clock
            open=w.open,
            high=w.high,
            low=w.low,
            close=w.close,
            volume=w.volume,
            trades=w.trades,
            first_trade_id=w.first_trade_id,
            last_trade_id=w.last_trade_id,
            revision=w.revision,
            is_final=is_final,
        )


_DECIMAL_FIELDS = ("open", "high", "low", "close", "volume")


def _window_state(w: _Window) -> dict[str, Any]:
    state = asdict(w)
    for name in _DECIMAL_FIELDS:
        state[name] = str(state[name])
    return state


def _window_from_state(state: dict[str, Any]) -> _Window:
    values = dict(state)
    for name in _DECIMAL_FIELDS:
        values[name] = Decimal(values[name])
    return _Window(**values)
