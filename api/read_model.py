"""The API's read model: what the market endpoints need, kept in memory from the topics the API
process consumes (docs/architecture.md, "the API is a read model"). Pure state, no I/O: the Kafka
consumer (api/ws/feed.py) calls `apply_*`, the store fills the past in once (`warm`), and
api/market_memory.py answers requests from it when it covers them.

Per venue and symbol (a series) it holds:
- every trade of the last 24 h (event time, trade id, price, size, side), deduplicated by (event
  time, trade id) as the store's `trades FINAL` is, with their running size sum: the last price,
  the 24 h volume, the candles not yet closed and the recent pages of `/market/trades` all come
  from it;
- the recent candles of every interval, the latest revision of each (as `candles FINAL`);
- the latest feed-state quality event.

"Covers" is explicit: a series answers from memory only once it is warm (the store filled in the
24 h before the first consumed trade) and, for candles, only for open times from `candles_from`
on. Everything older goes to the store, as before.

Readers run in the threadpool (plain `def` routes) while the consumer writes on the event loop,
hence one lock; every read holds it for a few dict and list operations."""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from api.models import candle_json
from infra.store.records_repository import TradeRecord
from infra.store.repository import DAY_NS, FEED_STATE_KINDS, CandleRow, FeedState, LastTrade
from schemas.events import INTERVAL_NS

# How many candles of each interval memory keeps (a day and more of 1m; the 500 a default
# history request asks for, at every interval).
RETAIN_CANDLES: dict[str, int] = {"1m": 3000, "5m": 1000, "1h": 600, "1d": 600}


# A trade as memory holds it: the store's page row itself, so a page of `/market/trades` from
# memory needs no conversion (api/records_service.py renders either alike).
MemTrade = TradeRecord


class VersionedCandle(NamedTuple):
    version: int  # revision * 2 + is_final, as the store's ReplacingMergeTree(version)
    row: CandleRow


def candle_version(revision: int, is_final: bool) -> int:
    return revision * 2 + int(is_final)


def _order_key(trade: MemTrade) -> tuple[int, str]:
    # The store's "latest": ORDER BY event_ts DESC, trade_id DESC.
    return trade.event_ns, trade.trade_id


@dataclass
class Series:
    """One venue's symbol. `trades[head:]` is sorted by (event time, trade id); it holds every
    trade in (latest - 24 h, latest] once `warm`, and from `first_trade_ns` on before. Expired
    trades stay below `head` until they are half the list: a list indexes in constant time
    anywhere, which a deque does not in its middle (a page of an hour twelve hours back cost
    ~170 us of deque walks)."""

    venue: str
    symbol: str
    first_trade_ns: int | None = None  # event time of the first trade consumed from the topic
    trades: list[MemTrade] = field(default_factory=list)
    head: int = 0  # trades[:head] have expired
    keys: set[tuple[int, str]] = field(default_factory=set)
    volume: Decimal = Decimal(0)  # sum of sizes in `trades`
    candles: dict[str, dict[int, VersionedCandle]] = field(default_factory=lambda: {i: {} for i in INTERVAL_NS})
    candles_from: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(INTERVAL_NS))
    first_candle_ns: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(INTERVAL_NS))
    feed_state: FeedState | None = None
    warm: bool = False
    # open time -> the held candle's JSON (`candle_json`), dropped whenever that candle changes
    rendered: dict[str, dict[int, bytes]] = field(default_factory=lambda: {i: {} for i in INTERVAL_NS})

    @property
    def last(self) -> MemTrade | None:
        return self.trades[-1] if len(self.trades) > self.head else None

    def add_trade(self, trade: MemTrade) -> None:
        key = (trade.event_ns, trade.trade_id)
        if key in self.keys:  # re-sent: the store keeps one row per (event time, trade id)
            return
        last = self.last
        if last is not None and trade.event_ns <= last.event_ns - DAY_NS:
            return  # older than any 24 h window memory answers for
        self.keys.add(key)
        self.volume += trade.size
        if last is None or _order_key(trade) > _order_key(last):
            self.trades.append(trade)
            self._expire()
        else:  # out of order within the stream: rare, so a linear insert is fine
            insort(self.trades, trade, lo=self.head, key=_order_key)

    def merge_trades(self, trades: Iterable[MemTrade]) -> None:
        """Add many trades at once (the store's past): one sort instead of an insert each."""
        merged = {(t.event_ns, t.trade_id): t for t in trades}
        merged.update(((t.event_ns, t.trade_id), t) for t in self.trades[self.head :])
        self.trades, self.head = sorted(merged.values(), key=_order_key), 0
        self.keys = set(merged)
        self.volume = sum((t.size for t in self.trades), Decimal(0))
        if self.trades:
            self._expire()

    def _expire(self) -> None:
        trades = self.trades
        horizon = trades[-1].event_ns - DAY_NS
        head = self.head
        while trades[head].event_ns <= horizon:  # the last trade is never past the horizon
            old = trades[head]
            self.keys.discard((old.event_ns, old.trade_id))
            self.volume -= old.size
            head += 1
        if head > 1024 and head * 2 > len(trades):  # compact: amortised O(1) a trade
            del trades[:head]
            head = 0
        self.head = head

    def put_candle(self, interval: str, candle: VersionedCandle) -> None:
        held = self.candles[interval]
        current = held.get(candle.row.open_ns)
        if current is None or candle.version >= current.version:
            held[candle.row.open_ns] = candle
            self.rendered[interval].pop(candle.row.open_ns, None)
        self.trim(interval)

    def trim(self, interval: str) -> None:
        """Keep RETAIN_CANDLES of the interval: memory then covers from the oldest kept on."""
        held = self.candles[interval]
        while len(held) > RETAIN_CANDLES[interval]:
            oldest = min(held)
            del held[oldest]
            self.rendered[interval].pop(oldest, None)
            self.candles_from[interval] = oldest + INTERVAL_NS[interval]

    def trades_since(self, from_ns: int, until_ns: int) -> list[MemTrade]:
        """Trades with from_ns <= event time < until_ns, in (event time, trade id) order."""
        return self.trades_after((from_ns, ""), until_ns, len(self.trades))

    def trades_after(self, after: tuple[int, str], until_ns: int, limit: int) -> list[MemTrade]:
        """Up to `limit` trades with (event time, trade id) >= `after` and event time < until_ns,
        in that order."""
        trades = self.trades
        first = bisect_left(trades, after, lo=self.head, key=_order_key)
        page = trades[first : first + limit]
        if page and page[-1].event_ns >= until_ns:  # cut at `until_ns`
            page = page[: bisect_left(page, until_ns, key=lambda t: t.event_ns)]
        return page


def aggregate_buckets(trades: Iterable[MemTrade], step: int) -> list[CandleRow]:
    """Candles of trades in (event time, trade id) order, bucket = event time floored to `step`:
    open/close the first/last trade, high/low max/min price, volume the sum of sizes (the
    store's trade aggregation in infra/store/repository.py, done in memory)."""
    rows: list[CandleRow] = []
    bucket: int | None = None
    o = h = lo = c = v = Decimal(0)
    for trade in trades:
        b = trade.event_ns // step * step
        if b != bucket:
            if bucket is not None:
                rows.append(CandleRow(bucket, o, h, lo, c, v))
            bucket, o, h, lo, v = b, trade.price, trade.price, trade.price, Decimal(0)
        h = max(h, trade.price)
        lo = min(lo, trade.price)
        c = trade.price
        v += trade.size
    if bucket is not None:
        rows.append(CandleRow(bucket, o, h, lo, c, v))
    return rows


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step


class NotCovered(Exception):
    """Memory does not hold what the request needs: ask the store."""


class ReadModel:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], Series] = {}
        self._venues: dict[str, set[str]] = {}  # symbol -> venues with a consumed trade

    # --- writes (the consumer) ----------------------------------------------------------

    def _get(self, venue: str, symbol: str) -> Series:
        series = self._series.get((venue, symbol))
        if series is None:
            series = self._series[(venue, symbol)] = Series(venue, symbol)
            self._venues.setdefault(symbol, set()).add(venue)
        return series

    def apply_trades(self, venue: str, symbol: str, trades: Sequence[MemTrade]) -> None:
        if not trades:
            return
        with self._lock:
            series = self._get(venue, symbol)
            if series.first_trade_ns is None:
                series.first_trade_ns = min(t.event_ns for t in trades)
            for trade in trades:
                series.add_trade(trade)

    def apply_candle(self, venue: str, symbol: str, interval: str, candle: VersionedCandle) -> None:
        with self._lock:
            series = self._get(venue, symbol)
            if series.first_candle_ns[interval] is None:
                series.first_candle_ns[interval] = candle.row.open_ns
            series.put_candle(interval, candle)

    def apply_quality(self, venue: str, symbol: str, kind: str, event_ns: int) -> None:
        if kind not in FEED_STATE_KINDS:
            return
        with self._lock:
            series = self._get(venue, symbol)
            if series.feed_state is None or event_ns >= series.feed_state.event_ns:
                series.feed_state = FeedState(kind, event_ns)

    # --- warming (the store fills in the past once) ----------------------------------------

    def cold_series(self, symbol: str) -> list[tuple[str, int]]:
        """(venue, first consumed trade's event time) of the symbol's series not yet warm."""
        with self._lock:
            out = []
            for venue in sorted(self._venues.get(symbol, ())):
                series = self._series[(venue, symbol)]
                if not series.warm and series.first_trade_ns is not None:
                    out.append((venue, series.first_trade_ns))
            return out

    def warm(
        self,
        venue: str,
        symbol: str,
        trades: Iterable[MemTrade],
        candles: dict[str, tuple[int, list[VersionedCandle]]],
        feed_state: FeedState | None,
    ) -> None:
        """Fill in what the store held before the first consumed trade: the trades before it,
        the stored candles of each interval from a bound on (`candles[interval] = (from_ns,
        rows)`), and the latest stored feed state. Memory's own newer values win."""
        with self._lock:
            series = self._get(venue, symbol)
            series.merge_trades(trades)
            for interval, (from_ns, rows) in candles.items():
                held = series.candles[interval]
                for candle in rows:
                    current = held.get(candle.row.open_ns)
                    if current is None or candle.version > current.version:
                        held[candle.row.open_ns] = candle
                        series.rendered[interval].pop(candle.row.open_ns, None)
                series.candles_from[interval] = from_ns
                series.trim(interval)
            held_state = series.feed_state
            if feed_state is not None and (held_state is None or feed_state.event_ns > held_state.event_ns):
                series.feed_state = feed_state
            series.warm = True

    # --- reads -----------------------------------------------------------------------------

    def _warm_series(self, symbol: str, venue: str) -> Series:
        series = self._series.get((venue, symbol))
        if series is None or not series.warm or series.last is None:
            raise NotCovered(f"{venue}:{symbol} not in memory")
        return series

    def first_candle_open(self, venue: str, symbol: str, interval: str) -> int | None:
        with self._lock:
            series = self._series.get((venue, symbol))
            return None if series is None else series.first_candle_ns[interval]

    def has_symbol(self, symbol: str) -> bool:
        """Whether a warm series trades `symbol` (then the store holds it too)."""
        with self._lock:
            return any(self._series[(v, symbol)].warm for v in self._venues.get(symbol, ()))

    def last_trade(self, symbol: str, venue: str | None) -> LastTrade:
        """As the store's: on `venue`, or the venue that traded last (ties: the alphabetically
        first venue, then the highest trade id). Memory covers the default venue only when
        every venue of the symbol is warm (the store may know one memory has not seen: then
        `venues_in_store` says so through NotCovered from the caller)."""
        with self._lock:
            if venue is not None:
                last = self._warm_series(symbol, venue).last
                assert last is not None
                return LastTrade(last.price, last.event_ns, venue)
            best: tuple[int, str, str, Decimal] | None = None
            for name in self._venues.get(symbol, ()):
                last = self._warm_series(symbol, name).last
                assert last is not None
                if best is None or (last.event_ns, _desc(name), last.trade_id) > (best[0], _desc(best[1]), best[2]):
                    best = (last.event_ns, name, last.trade_id, last.price)
            if best is None:
                raise NotCovered(f"{symbol} not in memory")
            return LastTrade(best[3], best[0], best[1])

    def venues(self, symbol: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._venues.get(symbol, ()))

    def volume_24h(self, symbol: str, venue: str, until_ns: int) -> Decimal:
        with self._lock:
            series = self._warm_series(symbol, venue)
            last = series.last
            assert last is not None
            if until_ns != last.event_ns:
                raise NotCovered("a 24 h window not ending at the latest trade")
            return series.volume

    def feed_state(self, symbol: str, venue: str) -> FeedState | None:
        with self._lock:
            return self._warm_series(symbol, venue).feed_state

    def _select(
        self, symbol: str, interval: str, start_ns: int, end_ns: int, venue: str
    ) -> tuple[Series, list[VersionedCandle], list[MemTrade]]:
        """Under the lock: the held candles in [start, end) by open time, and the trades of the
        buckets after the last held candle. NotCovered when memory lacks any part of the range."""
        step = INTERVAL_NS[interval]
        series = self._warm_series(symbol, venue)
        held = series.candles[interval]
        covered_from = series.candles_from[interval]
        if covered_from is None or start_ns < covered_from:
            raise NotCovered(f"{interval} candles before memory's first")
        stored = sorted((c for o, c in held.items() if start_ns <= o < end_ns), key=lambda c: c.row.open_ns)
        after_stored = (max(held) + step) if held else 0
        first_bucket = max(_ceil_to(start_ns, step), after_stored)
        end_bucket = _ceil_to(end_ns, step)
        if first_bucket >= end_bucket:
            return series, stored, []
        # memory holds every trade in (latest - 24 h, latest]
        if first_bucket <= series.trades[-1].event_ns - DAY_NS:
            raise NotCovered("open buckets older than the trades memory holds")
        return series, stored, series.trades_since(first_bucket, end_bucket)

    def trades_page(
        self, symbol: str, venue: str, start_ns: int, end_ns: int, after: tuple[int, str], limit: int
    ) -> list[MemTrade]:
        """The store's `trades` page (infra/store/records_repository.py) from memory: up to `limit`
        trades with start <= event time < end and (event time, trade id) > `after`, in that order.
        NotCovered when the page could start at or before the oldest trade memory holds."""
        with self._lock:
            series = self._warm_series(symbol, venue)
            if max(start_ns, after[0]) <= series.trades[-1].event_ns - DAY_NS:
                raise NotCovered("trades older than the 24 h memory holds")
            # strictly after `after`: the smallest key above it is (after time, after id + "\0")
            first = max((start_ns, ""), (after[0], after[1] + "\0"))
            return series.trades_after(first, end_ns, limit)

    def candles(self, symbol: str, interval: str, start_ns: int, end_ns: int, venue: str) -> list[CandleRow]:
        """The store's answer (infra/store/repository.py `candles`) from memory: held candles in
        [start, end), then buckets aggregated from trades after the last held candle."""
        with self._lock:
            _, stored, trades = self._select(symbol, interval, start_ns, end_ns, venue)
        return [c.row for c in stored] + aggregate_buckets(trades, INTERVAL_NS[interval])

    def candle_fragments(self, symbol: str, interval: str, start_ns: int, end_ns: int, venue: str) -> list[bytes]:
        """`candles`, each rendered as its JSON object by `candle_json`. A held candle is rendered
        once per revision and kept beside it, so a history request joins bytes instead of
        formatting decimals (the buckets still open are rendered each time)."""
        with self._lock:
            series, stored, trades = self._select(symbol, interval, start_ns, end_ns, venue)
            rendered = series.rendered[interval]
            fragments = []
            for candle in stored:
                fragment = rendered.get(candle.row.open_ns)
                if fragment is None:
                    fragment = rendered[candle.row.open_ns] = candle_json(candle.row)
                fragments.append(fragment)
        fragments.extend(candle_json(row) for row in aggregate_buckets(trades, INTERVAL_NS[interval]))
        return fragments


def _desc(venue: str) -> tuple[int, ...]:
    """Sorts venues in reverse, so a max() picks the alphabetically first on a tie."""
    return (*(-ord(ch) for ch in venue), 1)
