"""Feed staleness: a stream with no trade for `stale_after_s` of wall time gets one
`stale_feed` event (what the API turns into MARKET_002); its next trade gets a
`feed_connected` event. Both carry the stream's last exchange event time, so the API's
"no trade since the mark" rule works on event time, live and in replays alike."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.events import QualityEvent, QualityKind


@dataclass
class StreamClock:
    venue: str
    symbol: str
    last_wall: float
    last_event_ns: int | None


@dataclass
class StaleFeedMonitor:
    stale_after_s: float  # 0 disables (replays have no live feed to go stale)
    stale: set[str] = field(default_factory=set)

    def check(self, streams: Iterable[tuple[str, StreamClock]], now: float) -> list[QualityEvent]:
        if self.stale_after_s <= 0:
            return []
        events = []
        for key, s in streams:
            if s.last_event_ns is None:
                continue
            quiet = now - s.last_wall
            if quiet >= self.stale_after_s and key not in self.stale:
                self.stale.add(key)
                events.append(self._event(s, QualityKind.STALE_FEED, {"quiet_s": round(quiet, 3)}))
            elif quiet < self.stale_after_s and key in self.stale:
                self.stale.discard(key)
                events.append(self._event(s, QualityKind.FEED_CONNECTED, {"after": "stale_feed"}))
        return events

    @staticmethod
    def _event(s: StreamClock, kind: QualityKind, detail: dict[str, object]) -> QualityEvent:
        assert s.last_event_ns is not None
        return QualityEvent(venue=s.venue, symbol=s.symbol, kind=kind, event_ts_ns=s.last_event_ns,
                            recv_ts_ns=s.last_event_ns, detail=detail)
