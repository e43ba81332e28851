"""Replay recorded Binance captures, and recordings of any live venue, onto the raw topics.

Files (`.gz` or plain; format: docs/architecture.md, "Recorded captures") are named `<market>_<symbol>_<YYYYMMDD>`
(`spot_ethusdt_20240808.gz`, `cm_ethusd_perp_20240809.gz`); the market and the symbol (which
the spot and USD-M REST snapshots do not name) come from that name. The files of one
market/symbol are chained in date order and the streams are merged by receive time, which
is non-decreasing in every file. Each line goes through the pure parser
(`streams.core.venues.binance`), then:
- trades are grouped per stream by `TradeBatcher` (rule in `streams.core.batching`; the
  batcher's clock is the line's receive time) into `trade_batch.v1` messages;
- each depth diff or snapshot is one `book_batch.v1` message, each ticker one
  `book_ticker_batch.v1` message (`schemas.codecs.book`), on the book topic;
- a malformed line becomes a `DeadLetter` on the dead-letter topic and the replay goes on.
All keys are `venue:symbol`, except dead letters (keyed by their source file).

Recordings of the live connectors (`entasis connect --record DIR`; format and names in
`streams.core.recording`: `<venue>_<symbol>_<YYYYMMDD>.gz`) are read the same way: the files
of one venue/symbol chained by date, all merged by receive time. Each frame goes through its
venue's parser: Binance frames through `streams.core.venues.binance` (trades, depth diffs,
tickers), Coinbase and Kraken frames through `recorded_trades` of their venue modules (trades
only: their books are ccxt's whole books, rebuilt from snapshot and updates, which a replay
does not redo). A trade id seen before on the same stream (Coinbase re-sends its latest trades
on every subscription) is dropped, as the connector drops it. A frame of the venue file
(acks, heartbeats) that is no market data is skipped, not dead-lettered.

The messages published do not depend on `speed`: pacing only sleeps between them.
"""

from __future__ import annotations

import heapq
import itertools
import re
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Final, NamedTuple, cast

import orjson
from tqdm import tqdm

from schemas.book_ticker import BookTicker
from schemas.codecs import book, dead_letters, trades
from schemas.events import DeadLetter, Trade
from schemas.limits import MAX_TIME_NS
from schemas.symbols import InvalidSymbol, stream_key
from schemas.topics import BOOK, DEAD_LETTER, TRADES
from streams.core.batching import TradeBatch, TradeBatcher
from streams.core.candle_stream import RecentIds
from streams.core.recording import RECORDING_NAME, parse_file_name
from streams.core.venues import coinbase, kraken
from streams.core.venues.binance import (
    VENUES as BINANCE_VENUES,
)
from streams.core.venues.binance import (
    BinanceEvent,
    Market,
    ParseError,
    from_binance,
    parse_message,
    venue_of,
)
from streams.core.venues.ccxt_events import CcxtParseError
from streams.ingest.publisher import Publisher

Clock = Callable[[], float]
Sleep = Callable[[float], None]

CHANNELS: Final[frozenset[str]] = frozenset({"trade", "depth", "bookTicker"})

# venues whose recorded frames are read by a parser of their own (trades only); Binance's
# recordings go through the capture parser
RECORDED_TRADES: Final[dict[str, Callable[[object, int], list[Trade]]]] = {
    "coinbase": coinbase.recorded_trades,
    "kraken": kraken.recorded_trades,
}
_BINANCE_MARKETS: Final[dict[str, Market]] = {BINANCE_VENUES[m]: m for m in ("spot", "usdm", "cm")}
_RECENT_IDS = 20_000  # as many as a connector remembers per stream

# `<market>_<symbol>_<YYYYMMDD>[.gz]`; the symbol may itself hold underscores (ethusd_perp).
_CAPTURE_NAME = re.compile(r"^(?P<market>spot|usdm|cm)_(?P<symbol>[a-z0-9]+(?:_[a-z0-9]+)*?)_(?P<date>\d{8})(?:\.gz)?$")
_GZIP_MAGIC = b"\x1f\x8b"
# A dead letter must fit in one Kafka message (1 MB by default) once hex-encoded.
_DEAD_LETTER_MAX_RAW = 400_000
_PROGRESS_EVERY = 4096
_READ_BLOCK = 1 << 20
_HEAD_LIMIT = 64  # how far into a line its stream name may start


@dataclass(frozen=True)
class CaptureFile:
    """One recorded file. `symbol` is the Binance spelling (`ETHUSDT`, `ETHUSD_PERP`) in a
    Binance capture, ours (`BTC-USD`, "" for the venue file) in a connector's recording, whose
    `recorded_venue` names the venue (a recording of a Binance market also has its `market`);
    `date` orders the files of one market/symbol."""

    path: Path
    market: Market
    symbol: str
    date: str = ""
    recorded_venue: str | None = None

    @property
    def venue(self) -> str:
        return self.recorded_venue or venue_of(self.market)

    @property
    def stream(self) -> tuple[str, str]:
        return (self.recorded_venue or self.market, self.symbol)

    @property
    def our_symbol(self) -> str | None:
        if self.recorded_venue is not None:
            return self.symbol or None
        return _symbol_or_none(self.symbol)


@dataclass
class ReplaySummary:
    lines: int = 0  # lines handled (published or dead-lettered); read = lines + skipped
    trades: int = 0
    book_updates: int = 0  # depth diffs and snapshots
    tickers: int = 0
    skipped: int = 0  # lines of channels not asked for
    dead_letters: int = 0
    messages: int = 0  # published, dead letters included
    last_trade_ids: dict[str, str] = field(default_factory=dict)  # by `venue:symbol`
    elapsed_s: float = 0.0

    @property
    def trades_per_s(self) -> float:
        return self.trades / self.elapsed_s if self.elapsed_s > 0 else 0.0


def capture_from_path(path: str | Path) -> CaptureFile:
    """A capture file whose name follows `<market>_<symbol>_<YYYYMMDD>[.gz]`, or a recording
    named `<venue>_<symbol>_<YYYYMMDD>.gz` of a venue the replay can parse."""
    path = Path(path)
    match = _CAPTURE_NAME.match(path.name)
    if match is None:
        recorded = parse_file_name(path.name)
        if recorded is not None and (recorded.venue in RECORDED_TRADES or recorded.venue in _BINANCE_MARKETS):
            market: Market = _BINANCE_MARKETS.get(recorded.venue, "spot")
            return CaptureFile(path, market, recorded.symbol or "", recorded.date, recorded.venue)
        raise ValueError(
            f"{path}: not a capture name (<spot|usdm|cm>_<symbol>_<YYYYMMDD>[.gz]) nor a recording's "
            f"(<venue>_<symbol>_<YYYYMMDD>.gz of {', '.join(sorted([*_BINANCE_MARKETS, *RECORDED_TRADES]))}); "
            "pass a CaptureFile to name it"
        )
    market = cast(Market, match["market"])
    return CaptureFile(path, market, match["symbol"].upper(), match["date"])


def discover_captures(paths: Iterable[str | Path | CaptureFile]) -> list[CaptureFile]:
    """Expand directories into the capture files they hold (other files, such as the candle
    CSV, are skipped); a file named explicitly must be a capture. Duplicates are dropped."""
    found: dict[Path, CaptureFile] = {}
    for item in paths:
        for capture in _expand(item):
            found.setdefault(capture.path.resolve(), capture)
    return sorted(found.values(), key=lambda c: (c.recorded_venue or "", c.market, c.symbol, c.date, c.path.name))


def _replayable(name: str) -> bool:
    if _CAPTURE_NAME.match(name):
        return True
    recorded = parse_file_name(name) if RECORDING_NAME.match(name) else None
    return recorded is not None and (recorded.venue in RECORDED_TRADES or recorded.venue in _BINANCE_MARKETS)


def _expand(item: str | Path | CaptureFile) -> list[CaptureFile]:
    if isinstance(item, CaptureFile):
        return [item]
    path = Path(item)
    if path.is_dir():
        return [capture_from_path(p) for p in sorted(path.iterdir()) if p.is_file() and _replayable(p.name)]
    if not path.is_file():
        raise FileNotFoundError(f"no such capture file or directory: {path}")
    return [capture_from_path(path)]


class CaptureLine(NamedTuple):
    """One line of a capture, as the merge sees it."""

    recv_ns: int  # the merge key; for a line without a valid prefix, the previous line's
    prefix_ok: bool
    line: bytes  # the whole line, without its newline
    capture: CaptureFile


class ChannelFilter:
    """Keeps the lines of some channels, judged before any JSON decode, and counts the rest.
    A line it cannot classify is kept (the parser then decides)."""

    def __init__(self, channels: Collection[str]) -> None:
        unknown = set(channels) - CHANNELS
        if unknown:
            raise ValueError(f"unknown channels {sorted(unknown)}; expected some of {sorted(CHANNELS)}")
        self.channels = frozenset(channels)
        self.skipped = 0

    def __call__(self, line: bytes) -> bool:
        channel = line_channel(line)
        if channel is None or channel in self.channels:
            return True
        self.skipped += 1
        return False


def read_capture(capture: CaptureFile, keep: Callable[[bytes], bool] | None = None) -> Iterator[CaptureLine]:
    """The non-blank lines of one file, gzip or plain (recognised by content, not name),
    less those `keep` refuses."""
    last_recv = 0
    for raw in _lines(_blocks(capture.path)):
        line = raw.rstrip(b"\r")
        if not line or (keep is not None and not keep(line)):
            continue
        head, sep, _ = line.partition(b" ")
        # at most 19 digits: int64 nanoseconds (and Python refuses to read a 4300-digit number)
        if sep and head.isdigit() and len(head) <= 19 and int(head) <= MAX_TIME_NS:
            last_recv = int(head)
            yield CaptureLine(last_recv, True, line, capture)
        else:
            yield CaptureLine(last_recv, False, line, capture)


class _Truncated:
    """Marks the end of a gzip file cut short (a recorder killed before it closed the file)."""


_TRUNCATED: Final = _Truncated()


def _lines(blocks: Iterator[bytes | _Truncated]) -> Iterator[bytes]:
    # Splitting big blocks is ~3x faster than GzipFile's per-line readline.
    tail = b""
    for block in blocks:
        if isinstance(block, _Truncated):
            return  # the last line of a cut file may be cut too: it is dropped
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


def _blocks(path: Path) -> Iterator[bytes | _Truncated]:
    """The file's bytes, gunzipped if it is gzip: every member of a multi-member file (a
    recording appended to by a restarted connector), and, of a file cut short, what was
    written before the cut (the recorder flushes every second) followed by `_TRUNCATED`:
    `gzip.open` would raise EOFError and lose the whole last block."""
    with path.open("rb") as handle:
        first = handle.read(_READ_BLOCK)
        if not first.startswith(_GZIP_MAGIC):
            block = first
            while block:
                yield block
                block = handle.read(_READ_BLOCK)
            return
        inflate = zlib.decompressobj(wbits=31)
        started = False  # whether the current member has begun
        pending = first
        while pending:
            started = True
            try:
                out = inflate.decompress(pending)
            except zlib.error:  # corrupted from here on: what came before is kept, as for a cut file
                yield _TRUNCATED
                return
            if out:
                yield out
            pending = b""
            if inflate.eof:  # the end of one member: another may follow
                pending, inflate, started = inflate.unused_data, zlib.decompressobj(wbits=31), False
                if pending and not pending.startswith(_GZIP_MAGIC):
                    return  # bytes after the last member that are no gzip: ignored, as gzip.open does
            if not pending:
                pending = handle.read(_READ_BLOCK)
        if started:
            yield _TRUNCATED


def merged_lines(captures: Sequence[CaptureFile], keep: Callable[[bytes], bool] | None = None) -> Iterator[CaptureLine]:
    """Lines of all captures by receive time; the files of one market/symbol are chained in
    date order (heapq.merge is stable, so equal times keep file order)."""
    by_stream: dict[tuple[str, str], list[CaptureFile]] = {}
    for capture in sorted(captures, key=lambda c: (c.date, c.path.name)):
        by_stream.setdefault(capture.stream, []).append(capture)
    chains = [itertools.chain.from_iterable(read_capture(f, keep) for f in files) for files in by_stream.values()]
    return heapq.merge(*chains, key=attrgetter("recv_ns"))


def line_channel(line: bytes) -> str | None:
    """The channel of a recorded line without decoding it (`trade`, `depth`, `bookTicker`),
    or None when it cannot tell; lets a replay skip channels it was not asked for cheaply."""
    # Searches in place (no slicing): this runs on every line of a filtered replay.
    start = line.find(b'{"stream":"', 0, _HEAD_LIMIT)
    if start < 0:
        return "depth" if line.find(b'{"lastUpdateId"', 0, _HEAD_LIMIT) >= 0 else None
    at = line.find(b"@", start + 11, start + 11 + _HEAD_LIMIT)
    if at < 0:
        return None
    if line.startswith(b'trade"', at + 1):
        return "trade"
    if line.startswith(b'bookTicker"', at + 1):
        return "bookTicker"
    if line.startswith(b'depth"', at + 1) or line.startswith(b"depth@", at + 1):
        return "depth"
    return None


class Pacer:
    """Sleeps so that exchange event time advances `speed` times as fast as `clock`.

    Event time is not monotonic across streams (usdm lines reach 46 ms below the running
    max), so it paces on the running max: an event behind it never waits."""

    def __init__(self, speed: float, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = speed
        self._clock = clock
        self._sleep = sleep
        self._origin: tuple[int, float] | None = None  # (event ns, clock) of the first event
        self._max_event_ns = 0
        self.slept_s = 0.0

    def wait_for(self, event_ns: int) -> None:
        if self._origin is None:
            self._origin = (event_ns, self._clock())
            self._max_event_ns = event_ns
            return
        if event_ns <= self._max_event_ns:
            return
        self._max_event_ns = event_ns
        first_event_ns, first_clock = self._origin
        due = first_clock + (event_ns - first_event_ns) / 1e9 / self.speed
        delay = due - self._clock()
        if delay > 0:
            self._sleep(delay)
            self.slept_s += delay


def pacing_time(events: Sequence[BinanceEvent]) -> int | None:
    """The exchange time a line's events are due at, or None if none carries one: spot
    tickers and snapshots only have our receive time (1.27 s behind the exchange clock)."""
    times = [e.event_ts_ns for e in events if e.event_ts_ns != e.recv_ts_ns]
    return max(times) if times else None


class Replayer:
    """One replay run: parse, batch, publish, count. See the module docstring."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        namespace: str = "",
        speed: float | None = None,
        max_batch: int = 100,
        max_span_ms: float = 50.0,
        channels: Collection[str] = CHANNELS,
        progress: bool = True,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self._filter = ChannelFilter(channels)
        self._publisher = publisher
        self._trades_topic = TRADES.full_name(namespace)
        self._book_topic = BOOK.full_name(namespace)
        self._dead_topic = DEAD_LETTER.full_name(namespace)
        self._batcher = TradeBatcher(max_batch, max_span_ms)
        self._pacer = Pacer(speed, clock, sleep) if speed is not None else None
        self._filtering = self._filter.channels != CHANNELS
        self._progress = progress
        self._clock = clock
        self._keys: dict[tuple[str, str], bytes] = {}
        self._recent: dict[tuple[str, str], RecentIds] = {}  # per recorded stream: ids published
        self.summary = ReplaySummary()

    def run(self, captures: Sequence[CaptureFile]) -> ReplaySummary:
        started = self._clock()
        n = 0
        with tqdm(unit=" lines", disable=not self._progress, mininterval=0.5, desc="replay") as bar:
            # Filtered lines are dropped before the merge, the costliest step per line.
            lines = merged_lines(captures, self._filter if self._filtering else None)
            for n, item in enumerate(lines, 1):
                if n % _PROGRESS_EVERY == 0:
                    bar.update(_PROGRESS_EVERY)  # per line, tqdm would cost more than parsing
                self._handle(item)
            bar.update(n % _PROGRESS_EVERY)
        self.summary.skipped += self._filter.skipped
        self._publish_trade_batches(self._batcher.flush())
        self._publisher.flush()
        self.summary.elapsed_s = self._clock() - started
        return self.summary

    def _handle(self, item: CaptureLine) -> None:
        self.summary.lines += 1
        if not item.prefix_ok:
            self._dead_letter(item, "a recorded line starts with '<recv_ns> '")
            return
        recv_ns, capture = item.recv_ns, item.capture
        try:
            events = self._parse(item)
        except (ParseError, CcxtParseError, orjson.JSONDecodeError) as exc:
            if capture.recorded_venue is not None and not capture.symbol:
                self.summary.skipped += 1  # the venue file: acks and heartbeats are no market data
                return
            self._dead_letter(item, str(exc))
            return
        if self._filtering and not self._filter.channels.issuperset(_channel_of(e) for e in events):
            self.summary.skipped += 1  # a line `line_channel` could not classify
            return
        # The line's receive time is the batcher's clock: batches it closes are complete.
        self._publish_trade_batches(self._batcher.expire(recv_ns))
        if self._pacer is not None:
            due = pacing_time(events)
            if due is not None:
                self._pacer.wait_for(due)
        for event in events:
            self._publish_event(event, recv_ns)

    def _parse(self, item: CaptureLine) -> list[BinanceEvent]:
        capture, body = item.capture, item.line.partition(b" ")[2]
        parser = RECORDED_TRADES.get(capture.recorded_venue or "")
        if parser is None:
            return parse_message(body, capture.market, item.recv_ns, capture.symbol or None)
        fresh: list[BinanceEvent] = []
        for trade in parser(orjson.loads(body), item.recv_ns):
            recent = self._recent.setdefault((trade.venue, trade.symbol), RecentIds(_RECENT_IDS))
            if recent.add(trade.trade_id):
                fresh.append(trade)
        return fresh

    def _publish_event(self, event: BinanceEvent, recv_ns: int) -> None:
        if isinstance(event, Trade):
            self.summary.trades += 1
            self.summary.last_trade_ids[stream_key(event.venue, event.symbol)] = event.trade_id
            self._publish_trade_batches(self._batcher.add(event, recv_ns))
            return
        key = self._key(event.venue, event.symbol)
        if isinstance(event, BookTicker):
            self.summary.tickers += 1
            value = book.encode_ticker_batch(event.venue, event.symbol, [event])
        else:
            self.summary.book_updates += 1
            value = book.encode_book_batch(event.venue, event.symbol, [event])
        self._send(self._book_topic, key, value)

    def _publish_trade_batches(self, batches: list[TradeBatch]) -> None:
        for batch in batches:
            value = trades.encode(batch.venue, batch.symbol, batch.trades)
            self._send(self._trades_topic, self._key(batch.venue, batch.symbol), value)

    def _dead_letter(self, item: CaptureLine, error: str) -> None:
        capture = item.capture
        raw = item.line
        if len(raw) > _DEAD_LETTER_MAX_RAW:
            error = f"{error} (raw bytes truncated to {_DEAD_LETTER_MAX_RAW} of {len(raw)})"
            raw = raw[:_DEAD_LETTER_MAX_RAW]
        letter = DeadLetter(
            venue=capture.venue,
            symbol=capture.our_symbol,
            source=str(capture.path),
            error=error,
            raw_hex=raw.hex(),
            recv_ts_ns=item.recv_ns,
        )
        self.summary.dead_letters += 1
        self._send(self._dead_topic, letter.source.encode(), dead_letters.encode(letter))

    def _send(self, topic: str, key: bytes, value: bytes) -> None:
        self._publisher.publish(topic, key, value)
        self.summary.messages += 1

    def _key(self, venue: str, symbol: str) -> bytes:
        key = self._keys.get((venue, symbol))
        if key is None:
            key = self._keys[(venue, symbol)] = stream_key(venue, symbol).encode()
        return key


def replay(
    paths: Iterable[str | Path | CaptureFile],
    publisher: Publisher,
    *,
    namespace: str = "",
    speed: float | None = None,
    max_batch: int = 100,
    max_span_ms: float = 50.0,
    channels: Collection[str] = CHANNELS,
    progress: bool = True,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> ReplaySummary:
    """Replay capture files or directories onto the raw topics of `namespace`.

    `speed=None` publishes as fast as possible; `speed=2.0` plays twice real time, by
    exchange event time. `channels` limits what is published (`trade`, `depth`, `bookTicker`)."""
    captures = discover_captures(paths)
    if not captures:
        raise FileNotFoundError(
            "no capture files (<spot|usdm|cm>_<symbol>_<YYYYMMDD>[.gz]) "
            "nor recordings (<venue>_<symbol>_<YYYYMMDD>.gz) found"
        )
    replayer = Replayer(
        publisher,
        namespace=namespace,
        speed=speed,
        max_batch=max_batch,
        max_span_ms=max_span_ms,
        channels=channels,
        progress=progress,
        clock=clock,
        sleep=sleep,
    )
    return replayer.run(captures)


def _channel_of(event: BinanceEvent) -> str:
    if isinstance(event, Trade):
        return "trade"
    if isinstance(event, BookTicker):
        return "bookTicker"
    return "depth"


def _symbol_or_none(binance_symbol: str) -> str | None:
    try:
        return from_binance(binance_symbol)
    except InvalidSymbol:
        return None
