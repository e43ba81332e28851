"""Rolling VWAP of one stream over final 1m candles (the event: `schemas.vwap.Vwap`)."""

from __future__ import annotations

from collections import deque
from decimal import Context, Decimal, localcontext

from schemas.events import Candle, Interval
from schemas.vwap import Vwap

_QUANT = Decimal("0.00000001")
# Wide and explicit: the default 28 digits cannot quantize a large price to 8 places (it raises).
_MONEY = Context(prec=100)


class RollingVwap:
    def __init__(self, window_minutes: int) -> None:
        self.window_minutes = window_minutes
        self.bars: deque[tuple[int, Decimal, Decimal]] = deque()  # (open ns, typical × volume, volume)
        self.last_open_ns: int | None = None

    def handle(self, c: Candle) -> Vwap | None:
        """None for a candle that is not a final 1m one, or at or before the last (a re-delivery)."""
        if not c.is_final or c.interval is not Interval.M1:
            return None
        if self.last_open_ns is not None and c.open_ts_ns <= self.last_open_ns:
            return None
        self.last_open_ns = c.open_ts_ns
        with localcontext(_MONEY):
            self.bars.append((c.open_ts_ns, (c.high + c.low + c.close) / 3 * c.volume, c.volume))
            while self.bars[0][0] <= c.open_ts_ns - self.window_minutes * Interval.M1.ns:
                self.bars.popleft()
            volume = sum((v for _, _, v in self.bars), Decimal(0))
            if volume == 0:
                return None  # no trade volume in the window: no average to take
            vwap = (sum((pv for _, pv, _ in self.bars), Decimal(0)) / volume).quantize(_QUANT)
        return Vwap(venue=c.venue, symbol=c.symbol, event_ts_ns=c.open_ts_ns + Interval.M1.ns, recv_ts_ns=c.recv_ts_ns,
                    window_minutes=self.window_minutes, vwap=vwap, volume=volume,
                    candles=len(self.bars))
