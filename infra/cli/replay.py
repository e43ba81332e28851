"""`entasis replay PATH [--speed X] [--run-id NAME] [--digest]`: recorded captures, or the
recordings of `entasis connect --record DIR` (streams/core/recording.py), onto the raw topics,
optionally into an isolated run (infra/config/run.py), and a digest of what the run stored once
all of it is stored (infra/store/digest.py).

`entasis replay --from clickhouse --venue V --symbols S,... --start T --end T --run-id NAME`:
the trades the live database stored, republished in event-time order onto the raw trade topic
of an isolated run (see `stored_trade_messages`). Only trades: the order books cannot be
replayed from what is stored (periodic snapshots of the top levels, not the diffs between them),
so a run fed from ClickHouse has no books, book snapshots or book-derived features.

`--digest` needs a worker of the same run (`entasis worker --run-id NAME`): the replay only
publishes. Once the last published trade of every stream is stored, the digests are read until
they stop changing (the derived tables follow the trades through the candle, risk and
prediction agents and their sinks), then printed.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.config.run import is_run
from infra.config.settings import Settings
from infra.store.digest import TableDigest, render_report, table_digests

if TYPE_CHECKING:
    from infra.cli.feeds import FeedResult


def prepare_run(settings: Settings) -> None:
    """The run's database, tables and topics (idempotent): a run starts from nothing."""
    from infra.cli.topics import create_topics
    from infra.store.clickhouse import ensure_database, make_client
    from infra.store.migrate import apply_migrations

    ensure_database(settings)
    client = make_client(settings)
    try:
        apply_migrations(client)
    finally:
        client.close()
    create_topics(settings.kafka_bootstrap, settings.topic_namespace, replication=settings.topic_replication)


def read_digests(settings: Settings) -> list[TableDigest]:
    from infra.store.clickhouse import make_client

    client = make_client(settings)
    try:
        return table_digests(lambda sql: client.query(sql).result_rows)
    finally:
        client.close()


def candles_caught_up(settings: Settings, last_trade_ids: dict[str, str]) -> bool:
    """Whether the candles agent has folded the last trade of every stream: its stored
    checkpoint remembers that trade among its recent ids (streams/core/candle_stream.py). The
    trade sink storing a trade says nothing about the candles agent, a separate consumer."""
    import orjson

    from infra.store.clickhouse import make_client
    from schemas import topics

    client = make_client(settings)
    try:
        rows = client.query(
            "SELECT stream, state FROM candle_checkpoints FINAL WHERE topic = {t:String}",
            parameters={"t": topics.TRADES.full_name(settings.topic_namespace)},
        ).result_rows
    finally:
        client.close()
    recent = {stream: {str(i) for i in orjson.loads(state).get("recent_ids", [])} for stream, state in rows}
    return all(trade_id in recent.get(key, ()) for key, trade_id in last_trade_ids.items())


def settled(
    read: Callable[[], Any],
    quiet_s: float,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """`read()` once it has returned the same value for `quiet_s`; None if it kept changing
    for `timeout_s`. (The wait is how long to look, never part of what is compared.)"""
    deadline = clock() + timeout_s
    last, since = read(), clock()
    while clock() < deadline:
        sleep(min(0.5, quiet_s / 4))
        now = read()
        if now != last:
            last, since = now, clock()
        elif clock() - since >= quiet_s:
            return now
    return None


def cmd_replay(settings: Settings, args: Any) -> int:
    from infra.cli.feeds import replay_into, wait_until_stored

    if args.digest and not is_run(settings):
        print(
            "entasis replay: --digest needs --run-id NAME: it digests the run's whole database, "
            "which must hold nothing but this replay",
            file=sys.stderr,
        )
        return 2
    if args.source == "clickhouse":
        request = _stored_request(settings, args)
        if request is None:
            return 2
        prepare_run(settings)
        result = replay_stored_into(settings, request, speed=args.speed)
        if not result.last_trade_ids:
            print(
                f"entasis replay: no stored trades of {args.venue} {','.join(request.symbols)} in "
                f"[{args.start}, {args.end}) in database {request.database}",
                file=sys.stderr,
            )
            return 1
    else:
        if args.path is None or not Path(args.path).exists():
            print(f"entasis replay: no such file or folder: {args.path}", file=sys.stderr)
            return 2
        if is_run(settings):
            prepare_run(settings)
        result = replay_into(settings, Path(args.path), speed=args.speed, progress=not args.quiet)
    print(result)
    if not args.digest:
        return 0
    if not result.last_trade_ids:
        print("entasis replay: the input holds no trades: nothing to digest", file=sys.stderr)
        return 1
    run = settings.clickhouse.database
    if not wait_until_stored(settings, result, timeout_s=args.timeout):
        print(
            f"entasis replay: the trades were not all stored within {args.timeout:.0f}s: is a worker of this "
            f"run running (`entasis worker --run-id {args.run_id}`)?",
            file=sys.stderr,
        )
        return 1
    deadline = time.monotonic() + args.timeout
    while not candles_caught_up(settings, result.last_trade_ids):
        if time.monotonic() > deadline:
            print(
                f"entasis replay: the candles agent of run {args.run_id} did not reach the last trades within "
                f"{args.timeout:.0f}s",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.2)
    digests = settled(lambda: read_digests(settings), quiet_s=args.quiet_s, timeout_s=args.timeout)
    if digests is None:
        print(f"entasis replay: the stored rows of {run} kept changing for {args.timeout:.0f}s", file=sys.stderr)
        return 1
    print(f"digest of run {args.run_id} (database {run}, topics {settings.topic_namespace}*):")
    print(render_report(digests))
    return 0


@dataclass(frozen=True)
class StoredRequest:
    database: str  # where the trades are read (the live database)
    venue: str
    symbols: tuple[str, ...]
    start_ns: int
    end_ns: int


_VENUE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_MAX_BATCH = 100  # trades per raw message, as the capture replay and the connectors publish
_MAX_SPAN_NS = 50_000_000  # and at most 50 ms of event time in one


def _stored_request(settings: Settings, args: Any) -> StoredRequest | None:
    """The checked arguments of `--from clickhouse`, or None after one line on stderr: nothing
    is read or published before all of them are right."""
    from schemas.symbols import InvalidSymbol, normalize_symbol

    def refuse(reason: str) -> StoredRequest | None:
        print(f"entasis replay --from clickhouse: {reason}", file=sys.stderr)
        return None

    if not is_run(settings):
        return refuse(
            "needs --run-id NAME: stored trades are republished into an isolated run, never onto the live topics"
        )
    missing = [
        flag
        for flag, value in (
            ("--venue", args.venue),
            ("--symbols", args.symbols),
            ("--start", args.start),
            ("--end", args.end),
        )
        if not value
    ]
    if missing:
        return refuse(f"missing {' '.join(missing)}")
    if args.path is not None:
        return refuse(f"takes no PATH (got {args.path!r}): the trades come from the database")
    if _VENUE.fullmatch(args.venue) is None:
        return refuse(f"{args.venue!r} is not a venue name (lower case, e.g. binance)")
    try:
        symbols = tuple(dict.fromkeys(normalize_symbol(s) for s in args.symbols.split(",") if s.strip()))
    except InvalidSymbol as exc:
        return refuse(f"{str(exc)!r} is not a symbol: BASE-QUOTE, e.g. BTC-USDT")
    try:
        start_ns, end_ns = parse_utc_ns(args.start), parse_utc_ns(args.end)
    except ValueError as exc:
        return refuse(str(exc))
    if not symbols or end_ns <= start_ns:
        return refuse("no symbols" if not symbols else f"--end {args.end} is not after --start {args.start}")
    live = getattr(args, "live_settings", None)
    database = args.source_database or (live.clickhouse.database if live is not None else "entasis")
    return StoredRequest(database, args.venue, symbols, start_ns, end_ns)


def parse_utc_ns(text: str) -> int:
    """ISO 8601 with a UTC offset (`2024-08-09T00:00:00Z`), or a date (`2024-08-09`, midnight
    UTC), as nanoseconds since the epoch; ValueError names the text."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time, e.g. 2024-08-09T00:00:00Z") from None
    if when.utcoffset() is None:
        if len(text) != 10:  # a bare date means its UTC midnight; a time needs its offset
            raise ValueError(f"{text!r} needs a UTC offset, e.g. a Z suffix")
        when = when.replace(tzinfo=UTC)
    return (int(when.timestamp()) * 10**6 + when.microsecond) * 1000


Row = tuple[str, str, Decimal, Decimal, str, int, int]  # symbol, trade_id, price, size, side, event, recv


def stored_trade_messages(rows: Iterable[Row], venue: str) -> Iterator[tuple[int, str, bytes]]:
    """(pacing time, symbol, trade_batch.v1 message) from stored trades in event-time order:
    each stream's trades in batches of at most 100 trades spanning at most 50 ms of event time,
    a batch published once a later trade (of any stream) is past its span, so the messages come
    in the order their batches opened. The pacing time is the batch's last trade: a paced replay
    publishes no trade before its time. Pure: the same rows give the same messages."""
    from schemas.codecs.trades import TradeRow, encode_rows

    open_batches: dict[str, list[TradeRow]] = {}
    for symbol, trade_id, price, size, side, event_ns, recv_ns in rows:
        for other in [s for s, b in open_batches.items() if event_ns - b[0].event_ts_ns > _MAX_SPAN_NS]:
            batch = open_batches.pop(other)
            yield batch[-1].event_ts_ns, other, encode_rows(venue, other, batch)
        batch = open_batches.setdefault(symbol, [])
        batch.append(TradeRow(trade_id, price, size, side, event_ns, recv_ns))
        if len(batch) == _MAX_BATCH:
            del open_batches[symbol]
            yield event_ns, symbol, encode_rows(venue, symbol, batch)
    for symbol, batch in sorted(open_batches.items(), key=lambda item: item[1][0].event_ts_ns):
        yield batch[-1].event_ts_ns, symbol, encode_rows(venue, symbol, batch)


STORED_TRADES_SQL = (
    "SELECT symbol, trade_id, price, size, toString(side), toUnixTimestamp64Nano(event_ts), "
    "toUnixTimestamp64Nano(recv_ts) FROM trades FINAL "
    "WHERE venue = {venue:String} AND symbol IN {symbols:Array(String)} "
    "AND event_ts >= fromUnixTimestamp64Nano({start:Int64}) AND event_ts < fromUnixTimestamp64Nano({end:Int64}) "
    "ORDER BY event_ts, symbol, trade_id"
)


def replay_stored_into(settings: Settings, request: StoredRequest, speed: float | None = None) -> FeedResult:
    """Republish the stored trades of `request` onto the raw trade topic of `settings` (a run)."""
    from infra.cli.feeds import _tracker
    from infra.store.clickhouse import make_client
    from streams.ingest.replay import Pacer

    tracker = _tracker(settings, None)
    pacer = Pacer(speed) if speed is not None else None
    topic = tracker.trades_topic
    client = make_client(settings, database=request.database)
    started = time.monotonic()
    try:
        params = {
            "venue": request.venue,
            "symbols": list(request.symbols),
            "start": request.start_ns,
            "end": request.end_ns,
        }
        with client.query_row_block_stream(STORED_TRADES_SQL, parameters=params) as blocks:
            rows = (row for block in blocks for row in block)
            for event_ns, symbol, value in stored_trade_messages(rows, request.venue):  # type: ignore[arg-type]
                if pacer is not None:
                    pacer.wait_for(event_ns)
                tracker.publish(topic, f"{request.venue}:{symbol}".encode(), value)
        tracker.result.detail = f"from {request.database}.trades"
    finally:
        client.close()
        tracker.close()
        tracker.result.elapsed_s = time.monotonic() - started
    return tracker.result


def add_arguments(replay: Any) -> None:
    replay.add_argument(
        "path",
        nargs="?",
        help="a capture file, a recording of `connect --record`, or a folder of them (not with --from clickhouse)",
    )
    replay.add_argument(
        "--from",
        dest="source",
        choices=("captures", "clickhouse"),
        default="captures",
        help="captures (PATH, default) or the trades stored in ClickHouse (needs --run-id)",
    )
    replay.add_argument("--venue", help="--from clickhouse: the venue, e.g. binance")
    replay.add_argument("--symbols", help="--from clickhouse: comma-separated BASE-QUOTE, e.g. BTC-USDT,ETH-USDT")
    replay.add_argument("--start", help="--from clickhouse: first event time, ISO 8601 UTC (inclusive)")
    replay.add_argument("--end", help="--from clickhouse: end of the range, ISO 8601 UTC (exclusive)")
    replay.add_argument(
        "--source-database",
        metavar="DB",
        help="--from clickhouse: read this database (default: the live one, ENTASIS_CLICKHOUSE_DATABASE)",
    )
    replay.add_argument("--speed", type=float, default=None, help="multiple of real time (default: full speed)")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.add_argument(
        "--digest",
        action="store_true",
        help="once the run has stored everything, print a sha256 of each derived table "
        "(needs --run-id and a worker of the run)",
    )
    replay.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="--digest: how long to wait for the run to store everything (default 300)",
    )
    replay.add_argument(
        "--quiet-s",
        type=float,
        default=3.0,
        metavar="S",
        help="--digest: the stored rows must stay unchanged this long (default 3)",
    )
    replay.set_defaults(func=cmd_replay)
