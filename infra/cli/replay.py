"""`entasis replay PATH [--speed X] [--run-id NAME] [--digest]`: recorded captures, or the
recordings of `entasis connect --record DIR` (streams/core/recording.py), onto the raw topics,
optionally into an isolated run (infra/config/run.py), and a digest of what the run stored once
all of it is stored (infra/store/digest.py).

`entasis replay --from clickhouse --venue V --symbols S,... --start T --end T --run-id NAME`:
the trades and book snapshots the live database stored, republished in time order onto the raw
trade and book topics of an isolated run (`replay_stored_into`). The trades are read as Arrow
columns, a window of whole hours per query, and cut into raw batches and rendered by Arrow's
string kernels (`TradeColumns`, `StoredTradeBatcher`): no Python object per trade. The books are
what is stored: the top levels every 10 s of event time, each republished as a
`book_snapshot.v1` that the book agent takes as the book; the diffs between them are not stored,
so the run's book moves from snapshot to snapshot (see the README, "Replay what the system
stored").

`--digest` needs a worker of the same run (`entasis worker --run-id NAME`): the replay only
publishes. Once the last published trade of every stream is stored, the digests are read until
they stop changing (the derived tables follow the trades through the candle, risk and
prediction agents and their sinks), then printed.
"""

from __future__ import annotations

import bisect
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from infra.config.run import is_run
from infra.config.settings import Settings
from infra.store.digest import TableDigest, render_report, table_digests
from schemas.codecs.envelope import VERSION_KEY
from schemas.codecs.trades import TRADE_BATCH

if TYPE_CHECKING:
    from infra.cli.feeds import FeedResult
    from streams.ingest.publisher import Publisher


def prepare_run(settings: Settings) -> None:
    """The run's database, tables and topics (idempotent): a run starts from nothing."""
    from infra.cli.topics import create_topics
    from infra.config.kafka import librdkafka_options
    from infra.store.clickhouse import ensure_database, make_client
    from infra.store.migrate import apply_migrations

    ensure_database(settings)
    client = make_client(settings)
    try:
        apply_migrations(client)
    finally:
        client.close()
    create_topics(settings.kafka_bootstrap, settings.topic_namespace, replication=settings.topic_replication,
                  security=librdkafka_options(settings))


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


@dataclass
class TradeColumns:
    """Stored trades of one venue as columns, in event-time order (the query's ORDER BY): each
    trade's wire row already rendered as JSON text (`["id","price","size","side",event,recv]`, by
    Arrow's string kernels, never a Python object per field), its symbol as a code into `names`,
    its id, its event time, and its position in the whole input (`pos`: ties between streams)."""

    names: list[str]
    codes: np.ndarray
    rows: Any  # pyarrow StringArray: the wire row of each trade, as JSON text
    trade_id: Any  # pyarrow StringArray
    event_ns: np.ndarray
    pos: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)

    @classmethod
    def from_rows(cls, rows: Iterable[Row], start: int = 0) -> TradeColumns:
        """From row tuples (symbol, id, price, size, side, event ns, recv ns); Decimals become
        their exact decimal text. For tests and small inputs: the same path as the store's."""
        import pyarrow as pa

        listed = list(rows)

        def text(v: Any) -> str:
            return format(v, "f") if isinstance(v, Decimal) else str(v)

        table = pa.table({
            "symbol": pa.array([r[0] for r in listed], type=pa.string()),
            "trade_id": pa.array([str(r[1]) for r in listed], type=pa.string()),
            "price": pa.array([text(r[2]) for r in listed], type=pa.string()),
            "size": pa.array([text(r[3]) for r in listed], type=pa.string()),
            "side": pa.array([_SIDE_CODES[str(r[4])] for r in listed], type=pa.int8()),
            "event_ns": pa.array([r[5] for r in listed], type=pa.int64()),
            "recv_ns": pa.array([r[6] for r in listed], type=pa.int64()),
        })
        return cls.from_arrow(table, start)

    @classmethod
    def from_arrow(cls, table: Any, start: int) -> TradeColumns:
        """From an Arrow table of the `STORED_TRADES_SQL` columns; rows numbered from `start`."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = table.combine_chunks()
        symbols = table.column("symbol").chunk(0) if table.num_rows else pa.array([], type=pa.string())
        if not pa.types.is_dictionary(symbols.type):
            symbols = pc.dictionary_encode(symbols)
        names = [str(n) for n in symbols.dictionary.to_pylist()]
        codes = symbols.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        ids = table.column("trade_id").combine_chunks().cast(pa.string())
        text = [table.column(c).combine_chunks().cast(pa.string()) for c in ("price", "size")]
        side = pa.array(_SIDE_JSON).take(table.column("side").combine_chunks().cast(pa.int8()))
        times = [table.column(c).combine_chunks().cast(pa.int64()) for c in ("event_ns", "recv_ns")]
        if pc.any(pc.match_substring_regex(ids, r'["\\\x00-\x1f]')).as_py():
            quoted = pa.array([orjson.dumps(i).decode() for i in ids.to_pylist()], type=pa.string())
        else:  # nothing to escape: quotes around the text
            quoted = pc.binary_join_element_wise('"', ids, '"', "")
        rows = pc.binary_join_element_wise(
            "[", quoted, ',"', text[0], '","', text[1], '",', side, ",", times[0].cast(pa.string()), ",",
            times[1].cast(pa.string()), "]", "")
        return cls(names, codes, rows, ids, times[0].to_numpy().astype(np.int64, copy=False),
                   np.arange(start, start + table.num_rows, dtype=np.int64))

    def take(self, rows: np.ndarray) -> TradeColumns:
        import pyarrow as pa

        index = pa.array(rows, type=pa.int64())
        return TradeColumns(self.names, self.codes[rows], self.rows.take(index), self.trade_id.take(index),
                            self.event_ns[rows], self.pos[rows])

    def then(self, later: TradeColumns) -> TradeColumns:
        """These rows, then `later`'s, with `later`'s symbols mapped onto these names."""
        import pyarrow as pa

        index = {n: i for i, n in enumerate(self.names)}
        remap = np.array([index.setdefault(n, len(index)) for n in later.names], dtype=np.int64)
        later_codes = remap[later.codes] if len(later.codes) else later.codes.astype(np.int64)
        return TradeColumns(list(index), np.concatenate((self.codes, later_codes)),
                            pa.concat_arrays([self.rows, later.rows]),
                            pa.concat_arrays([self.trade_id, later.trade_id]),
                            np.concatenate((self.event_ns, later.event_ns)), np.concatenate((self.pos, later.pos)))


_SIDE_CODES = {"unknown": 0, "buy": 1, "sell": 2}  # `trades.side`: Enum8('unknown' = 0, 'buy' = 1, 'sell' = 2)
_SIDE_JSON = ['"unknown"', '"buy"', '"sell"']

# (last trade's event ns, first trade's input position): the order messages are published in
Key = tuple[int, int]
# (pacing ns, symbol, value, last trade id or None for a book snapshot, trades in it)
Message = tuple[int, str, bytes, str | None, int]


class StoredTradeBatcher:
    """Stored trades -> `trade_batch.v1` messages, as the connectors and the capture replay cut
    them: per stream, batches of at most 100 trades spanning at most 50 ms of event time, each
    stream's trades in event-time order. Messages come out in the order of their last trade's
    event time (ties: the batch that opened first), which is also their pacing time: a paced
    replay publishes a batch when its last trade happened. Pure and chunk-proof: the input may
    come in pieces of any size (`add`), the messages are the same.

    Columnar: a batch's message is its rows' JSON text joined by Arrow (`binary_join` over list
    offsets), the bytes orjson would write for the same message, never a Python object per trade."""

    def __init__(self, venue: str) -> None:
        self.venue = venue
        self._rest: TradeColumns | None = None  # rows of batches not closed yet
        self._held: list[tuple[Key, str, bytes, str, int]] = []  # closed, waiting for earlier ones

    def add(self, columns: TradeColumns, *, last: bool = False) -> list[Message]:
        """The messages (pacing ns, symbol, value, last trade id, trades) that `columns` (the
        next rows) complete, in publishing order; with `last`, every message left."""
        rows = columns if self._rest is None else self._rest.then(columns)
        self._rest = None
        if not len(rows):
            return self._release(_NEVER if last else None)
        closed, rest_rows, open_from = self._cut(rows, last)
        self._held.extend(closed)
        self._held.sort(key=lambda item: item[0])
        self._rest = rows.take(rest_rows) if len(rest_rows) else None
        return self._release(_NEVER if last else open_from)

    def _release(self, before: Key | None) -> list[Message]:
        if before is None:
            return []
        cut = bisect.bisect_left(self._held, before, key=lambda item: item[0])
        out, self._held = self._held[:cut], self._held[cut:]
        return [(key[0], symbol, value, last_id, n) for key, symbol, value, last_id, n in out]

    def _cut(self, rows: TradeColumns, last: bool) -> tuple[list[tuple[Key, str, bytes, str, int]], np.ndarray, Key]:
        """The closed batches of `rows`, the rows of the open ones, and the smallest key an open
        batch can still get (closed batches from that key on wait for the next piece)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ets = rows.event_ns
        newest = int(ets[-1])
        out: list[tuple[Key, str, bytes, str, int]] = []
        keep: list[np.ndarray] = []
        open_from: Key = _NEVER
        order = np.argsort(rows.codes, kind="stable")
        bounds = np.flatnonzero(np.diff(rows.codes[order])) + 1
        for idx in np.split(order, bounds):
            if not len(idx):
                continue
            symbol = rows.names[int(rows.codes[idx[0]])]
            t = ets[idx]
            span_ends = np.searchsorted(t, t + _MAX_SPAN_NS, side="right")
            n, i = len(idx), 0
            starts: list[int] = []
            while i < n:  # one step per batch
                j = min(i + _MAX_BATCH, int(span_ends[i]))
                if j - i < _MAX_BATCH and j == n and not last and newest <= int(t[i]) + _MAX_SPAN_NS:
                    # a later piece may still add to it (a trade within its span), or close it
                    open_from = min(open_from, (int(t[i]), int(rows.pos[idx[i]])))
                    keep.append(idx[i:])
                    break
                starts.append(i)
                i = j
            if not starts:
                continue
            offsets = np.array([*starts, i], dtype=np.int32)
            mine = pa.array(idx[:i], type=pa.int64())
            lists = pa.ListArray.from_arrays(pa.array(offsets), rows.rows.take(mine))
            head = orjson.dumps({VERSION_KEY: TRADE_BATCH, "venue": self.venue, "symbol": symbol,
                                 "trades": []})[:-2].decode()  # ...,"trades":[
            values = pc.binary_join_element_wise(head, pc.binary_join(lists, ","), "]}", "").cast(pa.binary())
            ends = offsets[1:]
            last_ids = rows.trade_id.take(pa.array(idx[ends - 1], type=pa.int64())).to_pylist()
            lasts, firsts = t[ends - 1].tolist(), rows.pos[idx[offsets[:-1]]].tolist()
            counts = np.diff(offsets).tolist()
            out.extend(((lt, fp), symbol, value, last_id, k)
                       for lt, fp, value, last_id, k in zip(lasts, firsts, values.to_pylist(), last_ids, counts,
                                                            strict=True))
        rest = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
        return out, rest, open_from


_NEVER: Key = (2**63, 2**63)


def stored_trade_messages(rows: Iterable[Row], venue: str) -> Iterator[tuple[int, str, bytes]]:
    """(pacing ns, symbol, trade_batch.v1 message) of stored trades given as rows, in
    publishing order (`StoredTradeBatcher`). Pure: the same rows give the same messages."""
    for pace, symbol, value, _, _ in StoredTradeBatcher(venue).add(TradeColumns.from_rows(rows), last=True):
        yield pace, symbol, value


STORED_TRADES_SQL = (
    "SELECT symbol, trade_id, toString(price) AS price, toString(size) AS size, CAST(side, 'Int8') AS side, "
    "toUnixTimestamp64Nano(event_ts) AS event_ns, toUnixTimestamp64Nano(recv_ts) AS recv_ns FROM trades FINAL "
    "WHERE venue = {venue:String} AND symbol IN {symbols:Array(String)} "
    "AND event_ts >= fromUnixTimestamp64Nano({start:Int64}) AND event_ts < fromUnixTimestamp64Nano({end:Int64}) "
    "ORDER BY event_ts, symbol, trade_id"
)
STORED_BOOKS_SQL = (
    "SELECT symbol, toUnixTimestamp64Nano(event_ts), toUnixTimestamp64Nano(recv_ts), last_update_id, "
    "bid_prices, bid_sizes, ask_prices, ask_sizes FROM book_snapshots FINAL "
    "WHERE venue = {venue:String} AND symbol IN {symbols:Array(String)} "
    "AND event_ts >= fromUnixTimestamp64Nano({start:Int64}) AND event_ts < fromUnixTimestamp64Nano({end:Int64}) "
    "ORDER BY event_ts, symbol, last_update_id"
)
_PIECE_ROWS = 500_000  # rows per query at most (a busier hour alone is one query): bounds what is held
_HOURS_SQL = (
    "SELECT toInt64(toUnixTimestamp(toStartOfHour(event_ts))) * 1000000000 AS h, count() FROM trades "
    "WHERE venue = {venue:String} AND symbol IN {symbols:Array(String)} "
    "AND event_ts >= fromUnixTimestamp64Nano({start:Int64}) AND event_ts < fromUnixTimestamp64Nano({end:Int64}) "
    "GROUP BY h ORDER BY h"
)
_HOUR_NS = 3600 * 10**9


def stored_windows(hours: Sequence[tuple[int, int]], start_ns: int, end_ns: int,
                   budget: int = _PIECE_ROWS) -> list[tuple[int, int]]:
    """[from, to) windows covering [start_ns, end_ns) made of whole hours (the first and last cut
    to the range), each holding at most `budget` rows by the hourly `(hour ns, rows)` counts
    unless one hour alone holds more: one query per window bounds the rows a query returns."""
    windows: list[tuple[int, int]] = []
    first, rows = start_ns, 0
    for hour, count in hours:
        if rows and rows + count > budget:
            windows.append((first, max(first, hour)))
            first, rows = max(first, hour), 0
        rows += count
    if rows or not windows:
        windows.append((first, end_ns))
    else:
        windows[-1] = (windows[-1][0], end_ns)
    return windows


def stored_trade_pieces(client: Any, params: dict[str, Any]) -> Iterator[TradeColumns]:
    """The stored trades of the query as column pieces, one query (Arrow over HTTP, never row
    tuples) per window of at most `_PIECE_ROWS` rows (`stored_windows`)."""
    hours = [(int(h), int(n)) for h, n in client.query(_HOURS_SQL, parameters=params).result_rows]
    start = 0
    for a, b in stored_windows(hours, params["start"], params["end"]):
        table = client.query_arrow(STORED_TRADES_SQL, parameters={**params, "start": a, "end": b})
        if table.num_rows:
            yield TradeColumns.from_arrow(table, start)
            start += table.num_rows


def stored_trade_message_stream(client: Any, params: dict[str, Any], venue: str) -> Iterator[Message]:
    """The messages of the stored trades of the query, in publishing order (`StoredTradeBatcher`)."""
    batcher = StoredTradeBatcher(venue)
    for piece in stored_trade_pieces(client, params):
        yield from batcher.add(piece)
    yield from batcher.add(TradeColumns.from_rows([]), last=True)


def stored_book_messages(rows: Iterable[Sequence[Any]], venue: str) -> Iterator[tuple[int, str, bytes]]:
    """(event ns, symbol, book_batch.v1 message of one `book_snapshot.v1`) of stored book
    snapshots (the top levels the book agent stores every 10 s of event time), in the rows' order.
    The book agent takes each as the book: what it stores from them is what it stored before."""
    from schemas.codecs.book import encode_book_batch
    from schemas.events import BookSnapshot

    for symbol, event_ns, recv_ns, last_id, bid_p, bid_s, ask_p, ask_s in rows:
        snapshot = BookSnapshot(venue=venue, symbol=symbol, event_ts_ns=event_ns, recv_ts_ns=recv_ns,
                                last_update_id=last_id, bids=tuple(zip(bid_p, bid_s, strict=True)),
                                asks=tuple(zip(ask_p, ask_s, strict=True)))
        yield event_ns, symbol, encode_book_batch(venue, symbol, [snapshot])


def replay_stored_into(settings: Settings, request: StoredRequest, speed: float | None = None,
                       publisher: Publisher | None = None) -> FeedResult:
    """Republish the stored trades and book snapshots of `request` onto the raw trade and book
    topics of `settings` (a run), merged in time order (trades by their batch's last trade,
    snapshots by their event time), paced at `speed` times real time when given."""
    import heapq

    from infra.cli.feeds import FeedResult
    from infra.store.clickhouse import make_client
    from schemas import topics
    from streams.ingest.publisher import KafkaPublisher
    from streams.ingest.replay import Pacer

    out = publisher if publisher is not None else KafkaPublisher.for_settings(settings)
    pacer = Pacer(speed) if speed is not None else None
    trades_topic = topics.TRADES.full_name(settings.topic_namespace)
    book_topic = topics.BOOK.full_name(settings.topic_namespace)
    result = FeedResult()
    client = make_client(settings, database=request.database)
    # the books' rows stream while the trades' windows are queried: a client (a session) of their own
    book_client = make_client(settings, database=request.database)
    books = 0
    started = time.monotonic()
    params = {"venue": request.venue, "symbols": list(request.symbols), "start": request.start_ns,
              "end": request.end_ns}
    prefix = f"{request.venue}:"
    try:
        trades = stored_trade_message_stream(client, params, request.venue)
        with book_client.query_row_block_stream(STORED_BOOKS_SQL, parameters=params) as blocks:
            book_rows = (row for block in blocks for row in block)
            snapshots = ((t, s, v, None, 0) for t, s, v in stored_book_messages(book_rows, request.venue))
            merged = heapq.merge(trades, snapshots, key=lambda m: m[0])
            publish = out.publish
            last_ids = result.last_trade_ids
            published = 0
            for pace, symbol, value, last_id, n in merged:
                if pacer is not None:
                    pacer.wait_for(pace)
                key = prefix + symbol
                if last_id is None:
                    publish(book_topic, key.encode(), value)
                    books += 1
                else:
                    publish(trades_topic, key.encode(), value)
                    last_ids[key] = last_id
                    published += n
        result.trades_published = published
        out.flush()
        result.detail = f"from {request.database}.trades, and {books} book snapshots from book_snapshots"
    finally:
        client.close()
        book_client.close()
        if publisher is None:
            out.close()  # type: ignore[attr-defined]
        result.elapsed_s = time.monotonic() - started
    return result


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
