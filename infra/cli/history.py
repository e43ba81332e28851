"""`entasis history`: candle history into the running pipeline.

    entasis history import FILE... --venue binance --symbol BTC-USDT --interval 1h
    entasis history simulate [--days 90] [--seed 7] [--symbols BTC-USDT ETH-USDT] [--end ISO]
    entasis history backfill --venues binance:BTC-USDT,coinbase:ETH-USD --interval 1h --days 90 [--endpoint URL]
    entasis history backfill --venue binance --symbol BTC-USDT ...    (one feed; the same)

`import` reads CSV (`timestamp_utc_iso,open,high,low,close,volume`, bar open time in UTC,
ascending) or Parquet files with the same columns, validates every file whole, and publishes
final candles on the candle topics of the interval and of the coarser intervals derived from it
(streams/ingest/history.py, rules in streams/core/history.py). The candle sink stores them and
the risk and prediction agents fold them as they do the pipeline's own candles; candles the
store already holds as final are skipped, so importing a file twice changes nothing.

`backfill` fetches each feed's candles of the last `--days` days that the store lacks (ccxt
`fetch_ohlcv`, paged, retried with backoff: streams/ingest/backfill.py; the venues at once, one
ccxt client and rate limiter each) and imports them through the same path as they come; a venue
that keeps refusing ends its feeds with an error naming the venue and the range still missing,
after the bars already fetched are imported. `up --venues` runs it before the live feed
(`backfill_for_up`).

`simulate` is the warm default of the simulated feed: a seeded history of the feed's symbols
ending where the live feed starts, through the same path. `up` calls
`simulate_history_into(settings, end_ns=t0, seed=seed)` and then starts the feed at `t0`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from infra.cli.feeds import DEFAULT_SIM_SYMBOLS
from infra.config.settings import Settings
from schemas.events import INTERVAL_NS
from streams.core.history import BadHistory
from streams.ingest.history import (
    ImportSummary,
    StoredOpenTimes,
    load_files,
    publish_history,
    publish_simulated_history,
    stored_open_times,
)
from streams.ingest.publisher import KafkaPublisher, Publisher

if TYPE_CHECKING:  # the backfill imports ccxt (~0.5 s): only `history backfill` pays for it
    from streams.core.backoff import Backoff
    from streams.ingest.backfill import BackfillResult


def _store(settings: Settings) -> tuple[StoredOpenTimes, Any]:
    from infra.store.clickhouse import make_client

    client = make_client(settings)
    return stored_open_times(lambda sql, params: client.query(sql, parameters=params).result_rows), client


def import_into(settings: Settings, paths: Sequence[Path], venue: str, symbol: str, interval: str, *,
                now_ns: int | None = None, publisher: Publisher | None = None) -> ImportSummary:
    """Validate `paths` whole, then publish their candles; BadHistory before anything is written."""
    venue, symbol, bars = load_files(paths, venue, symbol, interval, now_ns or time.time_ns())
    stored, client = _store(settings)
    own = publisher is None
    out = publisher if publisher is not None else KafkaPublisher.for_settings(settings)
    try:
        return publish_history(bars, venue, symbol, interval, out, namespace=settings.topic_namespace, stored=stored)
    finally:
        client.close()
        if own:
            out.close()  # type: ignore[attr-defined]


def simulate_history_into(settings: Settings, *, end_ns: int, days: int = 90, seed: int = 7,
                          symbols: Sequence[str] = DEFAULT_SIM_SYMBOLS,
                          publisher: Publisher | None = None) -> list[ImportSummary]:
    """The simulated feed's warm default: `days` of seeded history per symbol ending at `end_ns`
    (the start of the live simulated feed, which continues from the same price): hourly bars,
    then one day and the current day's minutes as 1-minute bars, with 5m, 1h and 1d derived."""
    stored, client = _store(settings)
    own = publisher is None
    out = publisher if publisher is not None else KafkaPublisher.for_settings(settings)
    try:
        return publish_simulated_history(out, symbols, end_ns=end_ns, days=days, seed=seed,
                                         namespace=settings.topic_namespace, stored=stored)
    finally:
        client.close()
        if own:
            out.close()  # type: ignore[attr-defined]


def cmd_history_import(settings: Settings, args: Any) -> int:
    try:
        # the venue and symbol are checked before any file is read, every file before anything is written
        summary = _guarded(settings, "import", lambda: import_into(
            settings, [Path(p) for p in args.files], args.venue, args.symbol, args.interval))
    except BadHistory as exc:
        print(f"entasis history import: {exc}; nothing imported", file=sys.stderr)
        return 2
    if summary is None:
        return 2
    print(summary)
    return 0


@dataclass
class FeedBackfill:
    """One feed's backfill: the venue's result, or why it could not be asked at all."""

    venue: str
    symbol: str
    interval: str
    days: int
    result: BackfillResult | None = None
    failure: str | None = None  # the venue's markets, a symbol it does not list, ...: nothing fetched

    @property
    def key(self) -> str:
        return f"{self.venue}:{self.symbol}"

    @property
    def ok(self) -> bool:
        return self.failure is None and self.result is not None and self.result.error is None

    def lines(self) -> list[str]:
        """What the command prints: one line, and one more for an unserved range."""
        from streams.ingest.backfill import iso

        head = f"{self.key} {self.interval}"
        result = self.result
        if self.failure is not None:
            return [f"{head}: {self.failure}; nothing fetched"]
        assert result is not None
        out = []
        if not result.runs:
            out.append(f"{head}: the last {self.days} days are all stored; nothing fetched")
        elif result.summary is None and result.error is None:
            out.append(f"{head}: the venue has no candles in the missing range")
        if result.summary is not None:
            out.append(f"{result.summary} ({result.fetched.pages} pages fetched, {result.fetched.retries} retries)")
        if result.unserved and result.summary is not None:
            ranges = ", ".join(f"[{iso(a)}, {iso(b)})" for a, b in result.unserved[:3])
            more = f" and {len(result.unserved) - 3} more" if len(result.unserved) > 3 else ""
            out.append(f"{head}: not served by the venue (before its history, or no trades): {ranges}{more}")
        return out


def parse_targets(venues: str | None, venue: str | None, symbol: str | None) -> list[tuple[str, str]]:
    """The (venue, symbol) pairs of `--venues binance:BTC-USDT,...` or of `--venue` with
    `--symbol`; BadHistory when neither or both are given, or a pair is malformed."""
    from schemas.venues import InvalidFeed, parse_feeds

    if venues and (venue or symbol):
        raise BadHistory("--venues", None, "give --venues, or --venue with --symbol, not both")
    if venues:
        try:
            return [(f.venue, f.symbol) for f in parse_feeds(venues)]
        except InvalidFeed as exc:
            raise BadHistory("--venues", None, str(exc)) from None
    if not (venue and symbol):
        raise BadHistory("--venues", None, "name the feeds: --venues binance:BTC-USDT,... (or --venue and --symbol)")
    return [(venue, symbol)]


def backfill_feeds_into(settings: Settings, targets: Sequence[tuple[str, str]], interval: str, days: int, *,
                        endpoint: str | None = None, now_ns: int | None = None, exchanges: dict[str, Any] | None = None,
                        publisher: Publisher | None = None, stored: StoredOpenTimes | None = None,
                        progress: bool = True, retries: int = 5, backoff: Backoff | None = None) -> list[FeedBackfill]:
    """`history backfill` of several feeds: every (venue, symbol) checked first (BadHistory
    before the store or a venue is asked anything), then each venue's feeds one after the other,
    the venues at once, each under its own ccxt client and rate limiter. `exchanges` (venue ->
    ccxt.pro client) replaces the venues' own clients, pointed at `endpoint` (an exchange double)
    when given. "Now" is each venue's clock (`venue_now_ns`) unless `now_ns` is given. `publisher`
    and `stored` (what the store holds) replace the broker and the database (tests)."""
    import asyncio

    from tqdm import tqdm

    from streams.ingest.backfill import backfill_history, check_backfill, venue_now_ns
    from streams.ingest.venues.ccxt_client import plain_exchange

    checked = [check_backfill(v, s, interval, days) for v, s in targets]
    feeds = list(dict.fromkeys((v, s) for v, s, _ in checked))
    client = None
    if stored is None:
        stored, client = _store(settings)
    own_publisher = publisher is None
    out = publisher if publisher is not None else KafkaPublisher.for_settings(settings)
    jobs = [FeedBackfill(v, s, interval, days) for v, s in feeds]
    bars = [tqdm(unit=" bars", disable=not progress, desc=f"backfill {job.key}", position=i, leave=True)
            for i, job in enumerate(jobs)]

    async def venue_task(venue: str) -> None:
        given = (exchanges or {}).get(venue)
        ccxt_client = given if given is not None else plain_exchange(venue, endpoint)
        try:
            now = now_ns or await venue_now_ns(ccxt_client, time.time_ns())
            for job, bar in zip(jobs, bars, strict=True):
                if job.venue != venue:
                    continue
                try:
                    job.result = await backfill_history(
                        ccxt_client, venue, job.symbol, interval, days, out, now_ns=now, stored=stored,
                        namespace=settings.topic_namespace, retries=retries, backoff=backoff,
                        progress=bar.update)
                except BadHistory:
                    raise
                except Exception as exc:  # the venue's markets, an unlisted symbol, a refusal that is no NetworkError
                    job.failure = f"{venue} could not be asked for {job.symbol} ({type(exc).__name__}: {exc})"
        finally:
            if given is None:
                await ccxt_client.close()

    async def run() -> None:
        await asyncio.gather(*(venue_task(v) for v in dict.fromkeys(v for v, _ in feeds)))

    try:
        asyncio.run(run())
    finally:
        for bar in bars:
            bar.close()
        if client is not None:
            client.close()
        if own_publisher:
            out.close()  # type: ignore[attr-defined]
    return jobs


def backfill_into(settings: Settings, venue: str, symbol: str, interval: str, days: int, **kw: Any) -> BackfillResult:
    """One feed's backfill (`backfill_feeds_into`); its failure to ask the venue at all is raised."""
    job = backfill_feeds_into(settings, [(venue, symbol)], interval, days, **kw)[0]
    if job.failure is not None:
        raise RuntimeError(job.failure)
    assert job.result is not None
    return job.result


def cmd_history_backfill(settings: Settings, args: Any) -> int:
    try:
        targets = parse_targets(args.venues, args.venue, args.symbol)
        jobs = _guarded(settings, "backfill", lambda: backfill_feeds_into(
            settings, targets, args.interval, args.days, endpoint=args.endpoint, progress=not args.quiet))
    except BadHistory as exc:
        print(f"entasis history backfill: {exc}; nothing fetched", file=sys.stderr)
        return 2
    if jobs is None:
        return 2
    for job in jobs:
        for line in job.lines():
            print(line)
    failed = [job for job in jobs if not job.ok]
    for job in failed:
        if job.result is not None and job.result.error is not None:
            print(f"entasis history backfill: {job.result.error}; the candles fetched before are imported, "
                  "run it again to fetch the rest", file=sys.stderr)
        elif job.failure is not None:
            print(f"entasis history backfill: {job.failure}", file=sys.stderr)
    return 1 if failed else 0


def backfill_for_up(settings: Settings, feeds: Sequence[Any], days: int, *, endpoint: str | None = None
                    ) -> list[str]:
    """`up --venues`: before the live feed starts, what the risk window and the prediction
    warm-up need (`days`, 90 by default, of the predict interval and of every risk interval;
    ENTASIS_PREDICT_INTERVAL, ENTASIS_RISK_INTERVALS) for every feed, through the backfill. A
    venue that refuses is reported and the live feed starts anyway (run `entasis history
    backfill` later: it fetches only what is missing). The lines to print."""
    intervals = list(dict.fromkeys([settings.predict.interval, *settings.risk.intervals]))
    targets = [(f.venue, f.symbol) for f in feeds]
    lines = []
    for interval in intervals:
        try:
            jobs = backfill_feeds_into(settings, targets, interval, days, endpoint=endpoint, progress=False)
        except Exception as exc:  # the store or the broker: the live feed still starts
            lines.append(f"{interval}: backfill failed ({type(exc).__name__}: {exc}); the live feed starts without it")
            continue
        for job in jobs:
            lines += job.lines()
            if job.result is not None and job.result.error is not None:
                lines.append(f"{job.result.error}; the live feed starts anyway, `entasis history backfill` "
                             "fetches the rest later")
    return lines


def cmd_history_simulate(settings: Settings, args: Any) -> int:
    if args.days < 2:
        print("entasis history simulate: --days must be at least 2", file=sys.stderr)
        return 2
    end_ns = _parse_end(args.end) if args.end else time.time_ns()
    summaries = _guarded(settings, "simulate", lambda: simulate_history_into(
        settings, end_ns=end_ns, days=args.days, seed=args.seed, symbols=args.symbols))
    if summaries is None:
        return 2
    for summary in summaries:
        print(summary)
    return 0


T = TypeVar("T")


def _guarded(settings: Settings, command: str, run: Callable[[], T]) -> T | None:
    """`run()`, or None with one line on stderr when the store or the broker is not there. The
    store is asked before anything is published, so a store error means nothing was written."""
    from clickhouse_connect.driver.exceptions import Error as StoreError

    from streams.ingest.publisher import PublishError

    try:
        return run()
    except StoreError as exc:
        print(f"entasis history {command}: the database at {settings.clickhouse.url} did not answer "
              f"(is it running, and migrated with `entasis migrate`?): {str(exc).splitlines()[0][:300]}; "
              "nothing imported", file=sys.stderr)
    except PublishError as exc:
        print(f"entasis history {command}: the broker at {settings.kafka_bootstrap} did not take the candles: "
              f"{exc}; run the import again once it is up (a re-import only adds what is missing)", file=sys.stderr)
    return None


def _parse_end(text: str) -> int:
    when = datetime.fromisoformat(text)
    if when.utcoffset() is None:
        raise SystemExit(f"entasis history simulate: --end {text!r} needs a UTC offset (e.g. a Z suffix)")
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000


def add_parser(sub: Any) -> None:
    """Add `history import`, `history backfill` and `history simulate` to the `entasis` sub-command parsers."""
    history = sub.add_parser("history", help="candle history into the pipeline (files, or a simulated warm start)")
    history_sub = history.add_subparsers(dest="history_command", required=True)
    imp = history_sub.add_parser("import", help="import candle files (CSV or Parquet) as final candles")
    imp.add_argument("files", nargs="+", metavar="FILE",
                     help="timestamp_utc_iso,open,high,low,close,volume; bar open time UTC, ascending")
    imp.add_argument("--venue", required=True, help="the venue the candles belong to, e.g. binance")
    imp.add_argument("--symbol", required=True, help="BASE-QUOTE, e.g. BTC-USDT")
    imp.add_argument("--interval", required=True, choices=tuple(INTERVAL_NS), help="the files' bar interval")
    imp.set_defaults(func=cmd_history_import)
    back = history_sub.add_parser("backfill", help="fetch a live venue's candles (ccxt fetch_ohlcv) and import them")
    back.add_argument("--venues", metavar="VENUE:SYMBOL,...",
                      help="the feeds, comma-separated, e.g. binance:BTC-USDT,coinbase:ETH-USD (venues at once)")
    back.add_argument("--venue", help="one live venue, e.g. binance (with --symbol; or use --venues)")
    back.add_argument("--symbol", help="BASE-QUOTE, e.g. BTC-USDT (with --venue)")
    back.add_argument("--interval", default="1h", choices=tuple(INTERVAL_NS), help="bar interval (default 1h)")
    back.add_argument("--days", type=int, default=90, help="days back from now (default 90)")
    back.add_argument("--endpoint", help="an exchange double URL instead of the venue")
    back.add_argument("--quiet", action="store_true", help="no progress bar")
    back.set_defaults(func=cmd_history_backfill)
    sim = history_sub.add_parser("simulate", help="publish a seeded simulated history of the simulated feed")
    sim.add_argument("--days", type=int, default=90, help="whole UTC days of history (default 90)")
    sim.add_argument("--seed", type=int, default=7, help="seed (default 7, as the simulated feed)")
    sim.add_argument("--symbols", nargs="+", default=list(DEFAULT_SIM_SYMBOLS))
    sim.add_argument("--end", help="where the history ends, ISO 8601 UTC (default: now)")
    sim.set_defaults(func=cmd_history_simulate)
