"""Import candle history: read CSV or Parquet files, validate every file whole, and publish the
final candles (and the coarser ones derived from them) on the candle topics, where the candle
sink stores them and the risk and prediction agents fold them like the pipeline's own.

Decisions are in `streams.core.history` (what a valid row is, what a candle of a bar is, what
is derived); here is the reading, the question "what does the store already hold", and the
publishing. Nothing is published before every file of the import has been read and checked.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.codecs import candles as candle_codec
from schemas.events import INTERVAL_NS, Candle
from schemas.symbols import stream_key
from schemas.topics import CANDLES
from streams.core.history import (
    COLUMNS,
    BadHistory,
    Bar,
    check_header,
    check_target,
    count_empty,
    count_gaps,
    history_candles,
    merge_files,
    parse_bars,
    simulated_history,
)
from streams.core.simulation import SIM_VENUE, default_symbol
from streams.ingest.publisher import Publisher

# (venue, symbol, interval, first open ns, last open ns) -> open times of the final candles stored
StoredOpenTimes = Callable[[str, str, str, int, int], set[int]]


@dataclass
class ImportSummary:
    venue: str
    symbol: str
    interval: str
    bars: int = 0
    gaps: int = 0  # bars missing between the first and the last
    empty: int = 0  # bars without volume: no trade, so no candle (the pipeline builds none either)
    imported: dict[str, int] = field(default_factory=dict)  # by interval: candles published
    skipped: dict[str, int] = field(default_factory=dict)  # by interval: already stored, not published

    def __str__(self) -> str:
        per = ", ".join(f"{iv} {self.imported.get(iv, 0)} imported / {self.skipped.get(iv, 0)} already present"
                        for iv in self.imported)
        return (f"{self.venue}:{self.symbol} {self.interval}: {self.bars} bars, {self.gaps} gaps (missing bars), "
                f"{self.empty} without volume (no candle); {per}")


def read_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, Sequence[object]]]]:
    """The column names and the (line number, fields) of a CSV or Parquet candle file. Parquet
    rows are numbered as a CSV of the same table would be (the header is line 1)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        table = pq.read_table(path)
        names = list(table.column_names)
        if names != list(COLUMNS):
            return names, iter(())
        ts = table.column(0)
        if pa.types.is_timestamp(ts.type):  # typed (naive means UTC): exact nanoseconds
            ts = ts.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
        columns = [ts.to_pylist(), *(table.column(i).to_pylist() for i in range(1, len(COLUMNS)))]
        return names, ((i + 2, row) for i, row in enumerate(zip(*columns, strict=True)))
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = [(reader.line_num, row) for row in reader if row]  # a trailing blank line is not a row
    return header, iter(rows)


def load_file(path: Path, interval: str, now_ns: int) -> list[Bar]:
    """Every bar of one file, validated whole; BadHistory (file, line, reason) otherwise."""
    try:
        names, rows = read_rows(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BadHistory(str(path), None, f"cannot read: {exc}") from None
    check_header(str(path), names)
    return parse_bars(str(path), rows, interval, now_ns)


def load_files(paths: Sequence[Path], venue: str, symbol: str, interval: str, now_ns: int
               ) -> tuple[str, str, list[Bar]]:
    """(venue, symbol, bars) of an import: the target checked first, then every file whole."""
    venue, symbol, interval = check_target(venue, symbol, interval)
    if not paths:
        raise BadHistory("FILE", None, "no file given")
    files = [(str(p), load_file(p, interval, now_ns)) for p in paths]
    return venue, symbol, merge_files(files)


def publish_history(bars: Sequence[Bar], venue: str, symbol: str, interval: str, publisher: Publisher, *,
                    namespace: str = "", stored: StoredOpenTimes | None = None) -> ImportSummary:
    """Publish the final candles of a validated series and of the intervals derived from it,
    each interval in event-time order, skipping candles whose (interval, open time) the store
    already holds as final. Flushes before returning."""
    summary = ImportSummary(venue, symbol, interval, len(bars), count_gaps(bars, interval), count_empty(bars))
    key = stream_key(venue, symbol).encode()
    # Ask the store about every interval first: a store that does not answer stops the import
    # before anything is published.
    plan = {iv: (candles, _present(stored, venue, symbol, iv, candles))
            for iv, candles in history_candles(bars, venue, symbol, interval).items()}
    for iv, (candles, present) in plan.items():
        topic = CANDLES[iv].full_name(namespace)
        fresh = [c for c in candles if c.open_ts_ns not in present]
        for candle in fresh:
            publisher.publish(topic, key, candle_codec.encode(candle))
        summary.imported[iv] = len(fresh)
        summary.skipped[iv] = len(candles) - len(fresh)
    publisher.flush()
    return summary


def publish_simulated_history(publisher: Publisher, symbols: Sequence[str], *, end_ns: int, days: int = 90,
                              seed: int = 7, namespace: str = "", stored: StoredOpenTimes | None = None
                              ) -> list[ImportSummary]:
    """The simulated feed's warm start: `days` of seeded history per symbol ending at `end_ns`
    (`streams.core.history.simulated_history`), published as an import of its hourly bars, then
    of its minutes (5m, 1h and 1d derived), per symbol."""
    summaries = []
    for symbol in symbols:
        history = simulated_history(default_symbol(symbol), seed=seed, end_ns=end_ns, days=days)
        for interval, bars in (("1h", history.hours), ("1m", history.minutes)):
            summaries.append(publish_history(bars, SIM_VENUE, history.symbol, interval, publisher,
                                             namespace=namespace, stored=stored))
    return summaries


def _present(stored: StoredOpenTimes | None, venue: str, symbol: str, interval: str,
             candles: Sequence[Candle]) -> set[int]:
    if stored is None or not candles:
        return set()
    return stored(venue, symbol, interval, candles[0].open_ts_ns, candles[-1].open_ts_ns)


_STORED_FINAL = """
SELECT DISTINCT toUnixTimestamp64Nano(open_ts)
FROM candles
WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String} AND is_final = 1
  AND open_ts BETWEEN fromUnixTimestamp64Nano({first:Int64}, 'UTC') AND fromUnixTimestamp64Nano({last:Int64}, 'UTC')
"""


def stored_open_times(query: Callable[[str, dict[str, object]], Sequence[Sequence[Any]]]) -> StoredOpenTimes:
    """A `StoredOpenTimes` over a ClickHouse query function (`client.query(...).result_rows`).
    Any final row counts, whatever its revision: a candle the pipeline finalised is never
    replaced by an imported one."""

    def stored(venue: str, symbol: str, interval: str, first_ns: int, last_ns: int) -> set[int]:
        if interval not in INTERVAL_NS:
            raise ValueError(interval)
        rows = query(_STORED_FINAL, {"venue": venue, "symbol": symbol, "interval": interval,
                                     "first": first_ns, "last": last_ns})
        return {int(r[0]) for r in rows}

    return stored
