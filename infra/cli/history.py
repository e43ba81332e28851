"""`entasis history`: candle history into the running pipeline.

    entasis history import FILE... --venue binance --symbol BTC-USDT --interval 1h
    entasis history simulate [--days 90] [--seed 7] [--symbols BTC-USDT ETH-USDT] [--end ISO]
    entasis history backfill --venue binance --symbol BTC-USDT --interval 1h --days 90 [--endpoint URL]

`import` reads CSV (`timestamp_utc_iso,open,high,low,close,volume`, bar open time in UTC,
ascending) or Parquet files with the same columns, validates every file whole, and publishes
final candles on the candle topics of the interval and of the coarser intervals derived from it
(streams/ingest/history.py, rules in streams/core/history.py). The candle sink stores them and
the risk and prediction agents fold them as they do the pipeline's own candles; candles the
store already holds as final are skipped, so importing a file twice changes nothing.

`backfill` fetches the venue's candles of the last `--days` days that the store lacks (ccxt
`fetch_ohlcv`, paged, retried with backoff: streams/ingest/backfill.py) and imports them through
the same path; a venue that keeps refusing ends it with an error naming the venue and the range
still missing, after the bars already fetched are imported.

`simulate` is the warm default of the simulated feed: a seeded history of the feed's symbols
ending where the live feed starts, through the same path. `up` calls
`simulate_history_into(settings, end_ns=t0, seed=seed)` and then starts the feed at `t0`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
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
    out = publisher if publisher is not None else KafkaPublisher(settings.kafka_bootstrap)
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
    out = publisher if publisher is not None else KafkaPublisher(settings.kafka_bootstrap)
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


def backfill_into(settings: Settings, venue: str, symbol: str, interval: str, days: int, *,
                  endpoint: str | None = None, now_ns: int | None = None, exchange: Any = None,
                  publisher: Publisher | None = None, progress: bool = True) -> BackfillResult:
    """`history backfill`: the venue's missing candles through the import path. `exchange` (a
    ccxt.pro client) defaults to the venue's, pointed at `endpoint` (an exchange double) when given."""
    import asyncio

    from tqdm import tqdm

    from streams.core.history import check_target
    from streams.ingest.backfill import backfill_history
    from streams.ingest.venues.ccxt_client import plain_exchange

    check_target(venue, symbol, interval)  # before the store or the venue is asked anything
    stored, client = _store(settings)
    own_publisher = publisher is None
    out = publisher if publisher is not None else KafkaPublisher(settings.kafka_bootstrap)

    async def run() -> BackfillResult:
        ccxt_client = exchange if exchange is not None else plain_exchange(venue.strip().lower(), endpoint)
        try:
            with tqdm(unit=" bars", disable=not progress, desc=f"backfill {venue}:{symbol}") as bar:
                return await backfill_history(ccxt_client, venue, symbol, interval, days, out,
                                              now_ns=now_ns or time.time_ns(), stored=stored,
                                              namespace=settings.topic_namespace, progress=bar.update)
        finally:
            if exchange is None:
                await ccxt_client.close()

    try:
        return asyncio.run(run())
    finally:
        client.close()
        if own_publisher:
            out.close()  # type: ignore[attr-defined]


def cmd_history_backfill(settings: Settings, args: Any) -> int:
    try:
        result = _guarded(settings, "backfill", lambda: backfill_into(
            settings, args.venue, args.symbol, args.interval, args.days, endpoint=args.endpoint,
            progress=not args.quiet))
    except BadHistory as exc:
        print(f"entasis history backfill: {exc}; nothing fetched", file=sys.stderr)
        return 2
    if result is None:
        return 2
    if not result.runs:
        print(f"{args.venue}:{args.symbol} {args.interval}: the last {args.days} days are all stored; nothing fetched")
    elif result.summary is None and result.error is None:
        print(f"{args.venue}:{args.symbol} {args.interval}: the venue has no candles in the missing range")
    if result.summary is not None:
        print(f"{result.summary} ({result.fetched.pages} pages fetched, {result.fetched.retries} retries)")
    if result.error is not None:
        print(f"entasis history backfill: {result.error}; the candles fetched before are imported, "
              "run it again to fetch the rest", file=sys.stderr)
        return 1
    return 0


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
    back.add_argument("--venue", required=True, help="a live venue, e.g. binance")
    back.add_argument("--symbol", required=True, help="BASE-QUOTE, e.g. BTC-USDT")
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
