"""`md.deadletter.v1`: one `dead_letter.v1` per message, the `DeadLetter` model's JSON."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from schemas.codecs.envelope import TS, EventCodec, event_id
from schemas.events import DeadLetter

CODEC = EventCodec(DeadLetter)
DEAD_LETTER = CODEC.format
FORMATS = (DEAD_LETTER,)
encode = CODEC.encode
decode = CODEC.decode


def table(letters: Sequence[DeadLetter]) -> pa.Table:
    """Rows of `dead_letters`, keyed by a hash of where the bytes came from, when, and the bytes."""
    return pa.table(
        {
            "event_id": [event_id(d.source, d.recv_ts_ns, d.raw_hex) for d in letters],
            "venue": [d.venue for d in letters],
            "source": [d.source for d in letters],
            "error": [d.error for d in letters],
            "raw": [d.raw_hex for d in letters],
            "recv_ts": pa.array([d.recv_ts_ns for d in letters], TS),
        }
    )
