"""Rows of `portfolio_events` (infra/store/migrations/0007_portfolio_events.sql) from pf.events."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from schemas.portfolio import decode_event

TS = pa.timestamp("ns", tz="UTC")


def portfolio_events_table(raws: Sequence[bytes]) -> pa.Table:
    """Undecodable values are skipped: the topic keeps them, and no event of ours is one."""
    rows = []
    for raw in raws:
        try:
            rows.append((decode_event(raw), raw.decode()))
        except ValueError:
            continue
    return pa.table(
        {
            "account": pa.array([e.account for e, _ in rows], pa.string()),
            "seq": pa.array([e.seq for e, _ in rows], pa.uint64()),
            "kind": pa.array([e.kind for e, _ in rows], pa.string()),
            "command_id": pa.array([e.command_id for e, _ in rows], pa.string()),
            "body": pa.array([body for _, body in rows], pa.string()),
            "event_ts": pa.array([e.ts_ns for e, _ in rows], TS),
        }
    )
