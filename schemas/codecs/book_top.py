"""`md.book.top.v1`: one `book_snapshot.v1` per message, the top N levels of a book (the
`BookSnapshot` model's JSON), bids and asks best first."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import pyarrow as pa

from schemas.codecs.envelope import DEC_LIST, TS, EventCodec
from schemas.events import BookSnapshot
from schemas.limits import MAX_UPDATE_ID, count_problem, level_problem


def storable(snapshot: BookSnapshot) -> str | None:
    """Levels the `book_snapshots` Decimal(38, 8) arrays hold, an update id its UInt64 holds."""
    for price, size in (*snapshot.bids, *snapshot.asks):
        if problem := level_problem(price, size):
            return problem
    return count_problem(snapshot.last_update_id, "last_update_id", MAX_UPDATE_ID)


CODEC = EventCodec(BookSnapshot, storable)
BOOK_SNAPSHOT = CODEC.format
FORMATS = (BOOK_SNAPSHOT,)
encode = CODEC.encode
decode = CODEC.decode
decode_fields = CODEC.decode_fields


def table(snapshots: Sequence[BookSnapshot], depth: int) -> pa.Table:
    """Rows of `book_snapshots`: each snapshot's levels, best first, as parallel price/size
    arrays; `depth` is the number of levels per side the snapshots were cut at (a side with
    fewer is the whole side)."""

    def column(side: str, index: int) -> pa.Array:
        return pa.array([[Decimal(level[index]) for level in getattr(s, side)] for s in snapshots], DEC_LIST)

    return pa.table(
        {
            "venue": pa.array([s.venue for s in snapshots], pa.string()),
            "symbol": pa.array([s.symbol for s in snapshots], pa.string()),
            "event_ts": pa.array([s.event_ts_ns for s in snapshots], TS),
            "recv_ts": pa.array([s.recv_ts_ns for s in snapshots], TS),
            "last_update_id": pa.array([s.last_update_id for s in snapshots], pa.uint64()),
            "depth": pa.array([depth] * len(snapshots), pa.uint16()),
            "bid_prices": column("bids", 0),
            "bid_sizes": column("bids", 1),
            "ask_prices": column("asks", 0),
            "ask_sizes": column("asks", 1),
        }
    )
