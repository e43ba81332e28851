"""Digests of what a run stored: one sha256 per table (candles per interval), over a canonical
rendering of the table's final rows, so that two replays of one input can be compared with a
glance (`entasis replay ... --digest`, README "Determinism").

What is digested is the content, never the way it was produced: rows as readers see them
(`FINAL`, the newest version of each key), without the columns that record the process
rather than the market: `recv_ts` of derived rows (when an agent happened to compute them),
a candle's `revision` and `version` (how many times it was emitted), and tables that record
processing only (dead letters carry the wall time they were caught; checkpoints).

`render_value`, `canonical_lines` and `digest_rows` are pure; `table_digests` runs the queries.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

from schemas.events import INTERVAL_NS


@dataclass(frozen=True)
class DigestTable:
    """One digested table: `columns` of `table FINAL`, `where` filters it (candles by interval).
    Columns ending in `*` are DateTime64: read as integer nanoseconds (a Python datetime would
    drop the nanoseconds)."""

    name: str
    table: str
    columns: tuple[str, ...]
    where: str = ""

    def sql(self) -> str:
        cols = ", ".join(f"toUnixTimestamp64Nano({c[:-1]})" if c.endswith("*") else c for c in self.columns)
        where = f" WHERE {self.where}" if self.where else ""
        return f"SELECT {cols} FROM {self.table} FINAL{where}"


_CANDLE = (
    "venue",
    "symbol",
    "open_ts*",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trades",
    "first_trade_id",
    "last_trade_id",
    "is_final",
    "event_ts*",
)

TABLES: tuple[DigestTable, ...] = (
    # the input as stored: a replay of one input must store the same trades
    DigestTable("trades", "trades", ("venue", "symbol", "trade_id", "price", "size", "side", "event_ts*", "recv_ts*")),
    *(DigestTable(f"candles_{iv}", "candles", _CANDLE, f"interval = '{iv}'") for iv in INTERVAL_NS),
    DigestTable(
        "book_snapshots",
        "book_snapshots",
        (
            "venue",
            "symbol",
            "event_ts*",
            "recv_ts*",
            "last_update_id",
            "depth",
            "bid_prices",
            "bid_sizes",
            "ask_prices",
            "ask_sizes",
        ),
    ),
    DigestTable("quality_events", "quality_events", ("event_id", "venue", "symbol", "kind", "detail", "event_ts*")),
    DigestTable(
        "risk_estimates",
        "risk_estimates",
        (
            "venue",
            "symbol",
            "interval",
            "method",
            "as_of*",
            "price",
            "var_95",
            "expected_shortfall",
            "volatility",
            "window",
        ),
    ),
    DigestTable(
        "predictions",
        "predictions",
        (
            "venue",
            "symbol",
            "interval",
            "model",
            "horizon",
            "as_of*",
            "target_ts*",
            "model_version",
            "features_version",
            "price",
            "prediction",
            "log_return",
            "raw_log_return",
            "direction",
            "confidence",
            "status",
            "remaining_candles",
            "scored",
            "mae",
            "mae_naive",
            "skill",
            "r2",
            "hit_rate",
            "up_rate",
            "mean_confidence",
            "calibration_error",
            "recent_scored",
            "recent_mae",
            "recent_mae_naive",
            "recent_skill",
            "recent_r2",
            "recent_hit_rate",
            "recent_up_rate",
            "recent_mean_confidence",
            "recent_calibration_error",
        ),
    ),
    DigestTable(
        "prediction_outcomes",
        "prediction_outcomes",
        (
            "venue",
            "symbol",
            "interval",
            "model",
            "horizon",
            "as_of*",
            "target_ts*",
            "price",
            "realised_price",
            "realised_log_return",
            "log_return",
            "direction",
            "confidence",
            "hit",
        ),
    ),
    DigestTable("vwap", "vwap", ("venue", "symbol", "window_minutes", "as_of*", "vwap", "volume", "candles")),
)


def _escape(text: str) -> str:
    # the separators of the rendering must not occur inside a value
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace(",", "\\,")


def render_value(value: Any) -> str:
    """One value as canonical text: equal values render equally whatever their Python spelling
    (Decimal('1.50') and Decimal('1.5000') are one number), distinct values distinctly."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):  # before int: True is an int
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return "nan"
        return "0" if value.is_zero() else format(value.normalize(), "f")
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return "0" if value == 0 else repr(value)  # repr round-trips: the exact double
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    return _escape(str(value))


def canonical_lines(rows: Iterable[Sequence[Any]]) -> list[str]:
    """Each row as one tab-separated line, the lines sorted: the rendering does not depend on
    the order the database returned the rows in."""
    return sorted("\t".join(render_value(v) for v in row) for row in rows)


def digest_rows(rows: Iterable[Sequence[Any]]) -> str:
    """sha256 (hex) of the canonical lines, each ended by a newline."""
    h = hashlib.sha256()
    for line in canonical_lines(rows):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class TableDigest:
    name: str
    rows: int
    sha256: str


def combined_digest(digests: Sequence[TableDigest]) -> str:
    """One sha256 over every table's name, row count and digest: equal iff all of them are."""
    return hashlib.sha256("".join(f"{d.name}\t{d.rows}\t{d.sha256}\n" for d in digests).encode()).hexdigest()


def render_report(digests: Sequence[TableDigest]) -> str:
    width = max(len(d.name) for d in digests)
    lines = [f"{d.name:<{width}}  {d.rows:>9} rows  sha256:{d.sha256}" for d in digests]
    lines.append(f"{'all':<{width}}  {sum(d.rows for d in digests):>9} rows  sha256:{combined_digest(digests)}")
    return "\n".join(lines)


class _Query(Protocol):
    def __call__(self, sql: str) -> Sequence[Sequence[Any]]: ...


def table_digests(query: _Query, tables: Sequence[DigestTable] = TABLES) -> list[TableDigest]:
    """The digest of every table, `query(sql)` returning its rows (e.g.
    `lambda sql: client.query(sql).result_rows`)."""
    out = []
    for table in tables:
        rows = query(table.sql())
        out.append(TableDigest(table.name, len(rows), digest_rows(rows)))
    return out
