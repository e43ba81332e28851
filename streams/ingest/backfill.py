"""Candle history from a live venue (`entasis history backfill`): ccxt `fetch_ohlcv`, paged.

The range asked for is cut into the runs of bars the store does not hold yet (`missing_runs`),
so a second backfill fetches only what is still missing. Each run is fetched page by page
(`since` = the bar after the last one received, at most `limit` bars a page) under ccxt's own
rate limiter. A rate-limit or network error is retried with exponential backoff; after
`retries` failures in a row the backfill stops with `BackfillError`, which names the venue and
the range still missing and carries the bars fetched before it: the caller imports those, so
what was fetched stays.

The bars go through the checks of a file import (`streams.core.history.parse_bars`: on the
interval's grid, ascending, closed before now) and are published by the import's path
(`streams.ingest.history.publish_history`).
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
from streams.core.history import BadHistory, Bar, check_target, parse_bars
from streams.core.venues.registry import LIVE_VENUES
from streams.ingest.history import ImportSummary, StoredOpenTimes, publish_history
from streams.ingest.publisher import Publisher

_NS_PER_MS = 1_000_000
Sleep = Callable[[float], Awaitable[None]]


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fetched:
    bars: list[Bar] = field(default_factory=list)
    pages: int = 0
    retries: int = 0


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
) -> Fetched:
    """Every closed bar of `runs` the venue has, ascending; BackfillError after `retries`
    refusals in a row (with the bars fetched so far)."""
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
            out.bars.extend(rows_to_bars(wanted, interval, now_ns, f"{venue} fetch_ohlcv {ccxt_symbol}"))
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
    """The closed bars of the last `days` days that the store lacks, fetched and imported. On
    BackfillError the bars fetched are imported all the same, and the error is returned."""
    venue, symbol, interval = check_target(venue, symbol, interval)
    adapter = LIVE_VENUES.get(venue)
    if adapter is None:
        raise BadHistory(
            "--venue", None, f"{venue!r} is not a live venue; backfill from: {', '.join(sorted(LIVE_VENUES))}"
        )
    if days < 1:
        raise BadHistory("--days", None, f"must be at least 1, got {days}")
    step = INTERVAL_NS[interval]
    end = now_ns - now_ns % step  # the open time of the bar still open: not fetched
    start = end - days * INTERVAL_NS["1d"]
    present = stored(venue, symbol, interval, start, end - step) if stored is not None else set()
    runs = missing_runs(start, end, step, present)
    error: BackfillError | None = None
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
        )
    except BackfillError as exc:
        error = exc
        fetched = exc.fetched
    summary = None
    if fetched.bars:
        summary = publish_history(fetched.bars, venue, symbol, interval, publisher, namespace=namespace, stored=stored)
    return BackfillResult(summary, fetched, runs, error)
