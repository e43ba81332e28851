"""The candles agent's decisions for one (venue, symbol) stream (`CandleProcessor`): trades in,
candles of every interval and data-quality events (late, duplicate trades) out, and the idle
close of a quiet stream's windows; over every stream (`CandleTally`), what a raw message is and
the counters. No I/O: the caller passes wall-clock readings and delivers the actions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.events import Candle, DeadLetter, QualityEvent, QualityKind
from schemas.symbols import stream_key
from schemas.wire import TradeRow, WireError, decode_trade_batch
from streams.core.candle_stream import INTERVALS, CandleStream
from streams.core.dead_letters import dead_letter_for


@dataclass(frozen=True)
class CandleConfig:
    intervals: tuple[str, ...] = INTERVALS
    lateness_ns: int = 0
    grace_ns: int = 0
    # A quiet stream's windows close this long (wall time) after its last trade. Infinite in a
    # replay run: there only event time closes windows, so the pace cannot change the output.
    idle_timeout_s: float = 10.0
    checkpoint_every_s: float = 1.0


@dataclass
class CandleActions:
    candles: list[Candle] = field(default_factory=list)
    quality: list[QualityEvent] = field(default_factory=list)
    late: int = 0
    duplicates: int = 0


def _quality(kind: QualityKind, venue: str, symbol: str, trades: list[TradeRow], interval: str) -> QualityEvent:
    return QualityEvent(
        venue=venue, symbol=symbol, kind=kind,
        event_ts_ns=max(t.event_ts_ns for t in trades), recv_ts_ns=max(t.recv_ts_ns for t in trades),
        detail={"count": len(trades), "trade_ids": [t.trade_id for t in trades[:20]], "interval": interval},
    )


class CandleProcessor:
    def __init__(self, venue: str, symbol: str, config: CandleConfig, now: float) -> None:
        self.config = config
        self.candles = CandleStream(venue, symbol, config.intervals, config.lateness_ns, config.grace_ns)
        self.finest = min(config.intervals, key=INTERVALS.index)
        self.last_trade_wall = now

    @classmethod
    def for_key(cls, key: str, config: CandleConfig, now: float) -> CandleProcessor:
        """The processor of the stream keyed `venue:symbol`."""
        venue, symbol = key.split(":", 1)
        return cls(venue, symbol, config, now)

    @property
    def max_event_ts_ns(self) -> int | None:
        return self.candles.max_event_ts_ns

    def handle(self, rows: Sequence[TradeRow], now: float) -> CandleActions:
        c = self.candles
        update = c.update(rows)
        self.last_trade_wall = now
        out = CandleActions(update.candles, late=len(update.late), duplicates=len(update.duplicates))
        if update.late:
            out.quality.append(_quality(QualityKind.LATE_TRADE, c.venue, c.symbol, update.late, self.finest))
        if update.duplicates:
            out.quality.append(_quality(QualityKind.DUPLICATE_TRADE, c.venue, c.symbol, update.duplicates,
                                        self.finest))
        return out

    def on_idle(self, now: float) -> list[Candle]:
        """The windows a stream quiet for `idle_timeout_s` of wall time closes."""
        idle = now - self.last_trade_wall
        last = self.candles.max_event_ts_ns
        if idle < self.config.idle_timeout_s or last is None:
            return []
        # event time has moved on by about the wall time since the last trade
        return self.candles.advance_to(last + int(idle * 1e9) - self.config.lateness_ns)

    def to_state(self) -> dict[str, Any]:
        return self.candles.to_state()

    def restore(self, state: dict[str, Any]) -> None:
        self.candles.restore(state)


class CandleTally:
    """What the candles agent counts over every stream (the worker's metrics read it)."""

    def __init__(self) -> None:
        self.messages = self.late_trades = self.duplicate_trades = self.dead_letters = 0

    def read(self, raw: bytes, source: str) -> tuple[str, list[TradeRow]] | DeadLetter:
        """The stream key and trades of a `trade_batch.v1` message, or the dead letter for it."""
        self.messages += 1
        try:
            venue, symbol, rows = decode_trade_batch(raw)
        except WireError as exc:
            self.dead_letters += 1
            return dead_letter_for(raw, source, exc)
        return stream_key(venue, symbol), rows

    def counted(self, actions: CandleActions) -> CandleActions:
        self.late_trades += actions.late
        self.duplicate_trades += actions.duplicates
        return actions
