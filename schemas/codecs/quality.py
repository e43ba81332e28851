"""`md.quality.v1`: one `quality.v1` per message, the `QualityEvent` model's JSON."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa

from schemas.codecs.envelope import TS, EventCodec, event_id
from schemas.events import QualityEvent

CODEC = EventCodec(QualityEvent)
QUALITY = CODEC.format
FORMATS = (QUALITY,)
encode = CODEC.encode
decode = CODEC.decode


def table(events: Sequence[QualityEvent]) -> pa.Table:
    """Rows of `quality_events`, keyed by a hash of the event (it has no id of its own)."""
    details = [orjson.dumps(e.detail) for e in events]
    return pa.table(
        {
            "event_id": [event_id(e.venue, e.symbol, e.kind.value, e.event_ts_ns, d)
                         for e, d in zip(events, details, strict=True)],
            "venue": [e.venue for e in events],
            "symbol": [e.symbol for e in events],
            "kind": [e.kind.value for e in events],
            "detail": [d.decode() for d in details],
            "event_ts": pa.array([e.event_ts_ns for e in events], TS),
            "recv_ts": pa.array([e.recv_ts_ns for e in events], TS),
        }
    )
