"""Candle history from a live venue (`entasis history backfill`): ccxt `fetch_ohlcv`, paged.

The range asked for is cut into the runs of bars the store does not hold yet (`missing_runs`),
each widened back to its UTC midnight (`whole_days`), so a second backfill fetches only the days
still missing, whole: a day that an interruption cut in two still gets its 1d candle. Each run
is fetched page by page (`since` = the bar after the last one received, at most `limit` bars a
page) under ccxt's own rate limiter. A rate-limit or network error is retried with exponential backoff; after
`retries` failures in a row the backfill stops with `BackfillError`, which names the venue and
the range still missing and carries the bars fetched before it: the caller imports those, so
what was fetched stays.

The bars go through the checks of a file import (`streams.core.history.parse_bars`: on the
interval's grid, ascending, closed before now) and are published by the import's path
(`streams.ingest.history.publish_history`) as they come, a run's bars in whole UTC days (the
day's 1d candle is derived with them), the rest of a run when it ends: a backfill that is killed
keeps every whole day it had fetched, and the next one starts at the first day still missing.

"Now" is the venue's clock (`venue_now_ns`, ccxt `fetch_time`, never later than this machine's):
the last closed bar is the venue's, and an exchange double, whose clock is its recording's,
serves the history that leads up to its recorded feed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ccxt.base.errors import NetworkError

from schemas.events import INTERVAL_NS
from streams.core.backoff import Backoff
from streams.core.history import BadHistory, Bar, check_target, count_gaps, parse_bars
from streams.core.venues.registry import LIVE_VENUES
from streams.ingest.history import ImportSummary, StoredOpenTimes, publish_history
from streams.ingest.publisher import Publisher

_NS_PER_MS = 1_000_000
_DAY_NS = INTERVAL_NS["1d"]
Sleep = Callable[[float], Awaitable[None]]


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fetched:
    bars: list[Bar] = field(default_factory=list)
    pages: int = 0
    retries: int = 0


# (run index, the bars of one page, ascending) -> None: called after each page
OnPage = Callable[[int, list[Bar]], None]


async def venue_now_ns(exchange: Any, wall_ns: int) -> int:
    """The venue's clock (ccxt `fetch_time`), never later than `wall_ns`; `wall_ns` when the
    venue has no clock to ask or does not answer."""
    has = getattr(exchange, "has", None) or {}
    if not has.get("fetchTime"):
        return wall_ns
    try:
        ms = await exchange.fetch_time()
    except Exception:  # any failure: this machine's clock will do
        return wall_ns
    return min(int(ms) * _NS_PER_MS, wall_ns) if ms else wall_ns


class BackfillError(RuntimeError):
    """The venue kept refusing: which venue, which range is still missing, what was fetched."""

    def __init__(self, venue: str, symbol: str, missing: Sequence[tuple[int, int]], fetched: Fetched, cause: str):
        self.venue, self.symbol, self.missing, self.fetched, self.cause = venue, symbol, list(missing), fetched, cause
        ranges = ", ".join(f"[{iso(a)}, {iso(b)})" for a, b in self.missing)
        super().__init__(f"{venue} refused the candles of {symbol} ({cause}); still missing: {ranges}")


def missing_runs(start_ns: int, end_ns: int, step_ns: int, present: set[int]) -> list[tuple[int, int]]:
    """The [from, to) runs of bar open times in [start, end) on the interval's grid that are
    not in `present`, in order."""
    runs: list[tuple[int, int]] = []
    t = start_ns - start_ns % step_ns + (step_ns if start_ns % step_ns else 0)
    run_from: int | None = None
    while t < end_ns:
        if t in present:
            if run_from is not None:
                runs.append((run_from, t))
                run_from = None
        elif run_from is None:
            run_from = t
        t += step_ns
    if run_from is not None:
        runs.append((run_from, t))
    return runs


def whole_days(runs: list[tuple[int, int]], start_ns: int, interval: str) -> list[tuple[int, int]]:
    """`runs` widened back to the UTC midnight before each (not before `start_ns`), and merged
    where they then meet: a day that an interrupted backfill left half fetched is fetched whole
    the next time, so its 1d candle is derived (the hours already stored are skipped on import)."""
    if INTERVAL_NS[interval] >= _DAY_NS:
        return runs
    out: list[tuple[int, int]] = []
    for a, b in runs:
        a = max(start_ns, a - a % _DAY_NS)
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def rows_to_bars(rows: Sequence[Sequence[Any]], interval: str, now_ns: int, source: str) -> list[Bar]:
    """ccxt OHLCV rows `[ms, open, high, low, close, volume]` as checked bars (BadHistory says
    which row is wrong). ccxt hands floats; `repr` is the shortest text that reads back as the
    same float, which gives the venue's decimal string back."""
    lines = [
        (i + 1, [int(row[0]) * _NS_PER_MS, *(repr(v) if isinstance(v, float) else str(v) for v in row[1:6])])
        for i, row in enumerate(rows)
    ]
    return parse_bars(source, lines, interval, now_ns)


async def fetch_bars(
    exchange: Any,
    venue: str,
    symbol: str,
    ccxt_symbol: str,
    interval: str,
    runs: Sequence[tuple[int, int]],
    *,
    now_ns: int,
    limit: int = 1000,
    retries: int = 5,
    backoff: Backoff | None = None,
    sleep: Sleep = asyncio.sleep,
    progress: Callable[[int], None] | None = None,
    on_page: OnPage | None = None,
) -> Fetched:
    """Every closed bar of `runs` the venue has, ascending; BackfillError after `retries`
    refusals in a row (with the bars fetched so far). `on_page` sees each page's bars."""
    step = INTERVAL_NS[interval]
    backoff = backoff or Backoff(1.0, 30.0, random.Random())
    out = Fetched()
    for index, (run_from, run_to) in enumerate(runs):
        cursor = run_from
        failures = 0
        while cursor < run_to:
            try:
                rows = await exchange.fetch_ohlcv(ccxt_symbol, interval, cursor // _NS_PER_MS, limit)
            except NetworkError as exc:  # RateLimitExceeded and DDoSProtection are NetworkErrors
                failures += 1
                out.retries += 1
                if failures > retries:
                    missing = [(cursor, run_to), *runs[index + 1 :]]
                    raise BackfillError(venue, symbol, missing, out, f"{type(exc).__name__}: {exc}") from exc
                await sleep(backoff.next())
                continue
            failures = 0
            backoff.reset()
            out.pages += 1
            # only this run's closed bars: a venue also sends the bar still open, or bars past the run
            wanted = [r for r in rows if cursor <= int(r[0]) * _NS_PER_MS < run_to]
            wanted = [r for r in wanted if int(r[0]) * _NS_PER_MS + step <= now_ns]
            if not wanted:
                break  # the venue has nothing more in this run (before its listing, or not closed yet)
            page = rows_to_bars(wanted, interval, now_ns, f"{venue} fetch_ohlcv {ccxt_symbol}")
            out.bars.extend(page)
            if on_page is not None:
                on_page(index, page)
            if progress is not None:
                progress(len(wanted))
            cursor = int(wanted[-1][0]) * _NS_PER_MS + step
    out.bars.sort(key=lambda b: b.open_ts_ns)
    return out


@dataclass
class BackfillResult:
    summary: ImportSummary | None  # None: nothing was missing, or the venue had nothing
    fetched: Fetched
    runs: list[tuple[int, int]]
    error: BackfillError | None = None
    # what the venue did not serve although asked (before its history starts, or holes); not an error
    unserved: list[tuple[int, int]] = field(default_factory=list)


def check_backfill(venue: str, symbol: str, interval: str, days: int) -> tuple[str, str, str]:
    """A backfill's (venue, symbol, interval), normalised; BadHistory before anything is asked."""
    venue, symbol, interval = check_target(venue, symbol, interval)
    if venue not in LIVE_VENUES:
        raise BadHistory(
            "--venue", None, f"{venue!r} is not a live venue; backfill from: {', '.join(sorted(LIVE_VENUES))}"
        )
    if days < 1:
        raise BadHistory("--days", None, f"must be at least 1, got {days}")
    return venue, symbol, interval


class _DayPublisher:
    """Publishes a backfill's bars through the import path as they come: a run's whole UTC days
    at once (their 1d candle derived with them), its last part when the run is over. Bars of
    two runs never go out together: the store holds what lies between them, and a roll-up of
    one side alone would be a partial candle."""

    def __init__(self, venue: str, symbol: str, interval: str, publisher: Publisher, namespace: str,
                 stored: StoredOpenTimes | None) -> None:
        self.venue, self.symbol, self.interval = venue, symbol, interval
        self.publisher, self.namespace, self.stored = publisher, namespace, stored
        self.run: int | None = None
        self.pending: list[Bar] = []
        self.summary: ImportSummary | None = None

    def page(self, run: int, bars: list[Bar]) -> None:
        if run != self.run:
            self.flush()
            self.run = run
        self.pending.extend(bars)
        if not self.pending:
            return
        step = INTERVAL_NS[self.interval]
        reached = self.pending[-1].open_ts_ns + step
        day_end = reached - reached % _DAY_NS
        whole = [b for b in self.pending if b.open_ts_ns < day_end]
        if whole:
            self.pending = self.pending[len(whole):]
            self._publish(whole)

    def flush(self) -> None:
        if self.pending:
            bars, self.pending = self.pending, []
            self._publish(bars)

    def _publish(self, bars: list[Bar]) -> None:
        part = publish_history(bars, self.venue, self.symbol, self.interval, self.publisher,
                               namespace=self.namespace, stored=self.stored)
        self.summary = part if self.summary is None else _merged(self.summary, part)


def _merged(a: ImportSummary, b: ImportSummary) -> ImportSummary:
    out = ImportSummary(a.venue, a.symbol, a.interval, a.bars + b.bars, a.gaps + b.gaps, a.empty + b.empty)
    for iv in dict.fromkeys([*a.imported, *b.imported]):
        out.imported[iv] = a.imported.get(iv, 0) + b.imported.get(iv, 0)
        out.skipped[iv] = a.skipped.get(iv, 0) + b.skipped.get(iv, 0)
    return out


async def backfill_history(
    exchange: Any,
    venue: str,
    symbol: str,
    interval: str,
    days: int,
    publisher: Publisher,
    *,
    now_ns: int,
    stored: StoredOpenTimes | None = None,
    namespace: str = "",
    limit: int = 1000,
    retries: int = 5,
    backoff: Backoff | None = None,
    sleep: Sleep = asyncio.sleep,
    progress: Callable[[int], None] | None = None,
) -> BackfillResult:
    """The closed bars of the last `days` days that the store lacks, fetched and imported as
    they come (`_DayPublisher`). On BackfillError the bars fetched are imported all the same,
    and the error is returned."""
    venue, symbol, interval = check_backfill(venue, symbol, interval, days)
    adapter = LIVE_VENUES[venue]
    step = INTERVAL_NS[interval]
    end = now_ns - now_ns % step  # the open time of the bar still open: not fetched
    start = end - days * INTERVAL_NS["1d"]
    present = stored(venue, symbol, interval, start, end - step) if stored is not None else set()
    runs = whole_days(missing_runs(start, end, step, present), start, interval)
    error: BackfillError | None = None
    out = _DayPublisher(venue, symbol, interval, publisher, namespace, stored)
    try:
        fetched = await fetch_bars(
            exchange,
            venue,
            symbol,
            adapter.ccxt_symbol(symbol),
            interval,
            runs,
            now_ns=now_ns,
            limit=limit,
            retries=retries,
            backoff=backoff,
            sleep=sleep,
            progress=progress,
            on_page=out.page,
        )
    except BackfillError as exc:
        error = exc
        fetched = exc.fetched
    out.flush()
    publisher.flush()
    summary = out.summary
    if summary is not None:  # gaps over the whole series, not per part
        summary.gaps = count_gaps(fetched.bars, interval)
    # what was asked for (all of the runs, or up to where the venue kept refusing) and not served
    cut = error.missing[0][0] if error is not None and error.missing else end
    got = {b.open_ts_ns for b in fetched.bars}
    unserved = [r for a, b in runs if a < cut for r in missing_runs(a, min(b, cut), step, got)]
    return BackfillResult(summary, fetched, runs, error, unserved)
