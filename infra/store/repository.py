"""All SQL the market endpoints run, and the per-thread client plumbing every repository shares.

Concurrency: routes are plain `def`, so FastAPI runs them in its worker threadpool, and
clickhouse-connect clients are not thread-safe. Each worker thread therefore gets its own
client from the factory (`threading.local`), created on first use and kept for the life of
the repository: no lock around queries, no client handed between threads, and the event
loop never blocks on the database. (An async client is not an option: chdb has none.)

Every user value reaches the database as a server-side query parameter (`{name:Type}`),
never through string formatting. Times cross the boundary as integer nanoseconds since the
epoch (`toUnixTimestamp64Nano` / `fromUnixTimestamp64Nano`), so no timezone conversion by
the driver can move them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, NamedTuple

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from schemas.events import INTERVAL_NS, Interval

DAY_NS = 86_400 * 10**9

# Quality kinds that say whether a feed is up; the latest one for a (venue, symbol) wins.
FEED_DOWN_KINDS = ("stale_feed", "feed_disconnected", "feed_stale")
FEED_STATE_KINDS = (*FEED_DOWN_KINDS, "feed_connected")


class StoreUnavailable(Exception):
    """The database could not be reached (as opposed to a query that failed)."""


class LastTrade(NamedTuple):
    price: Decimal
    event_ns: int
    venue: str


class FeedState(NamedTuple):
    kind: str
    event_ns: int


class CandleRow(NamedTuple):
    open_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


_KNOWN_SYMBOLS_SQL = "SELECT DISTINCT symbol FROM trades"

# Ties on event time go to the alphabetically first venue, then the highest trade id, so
# the default venue and the last price are deterministic.
_LAST_TRADE_SQL = """
SELECT price, toUnixTimestamp64Nano(event_ts), venue
FROM trades FINAL
WHERE symbol = {symbol:String}
ORDER BY event_ts DESC, venue ASC, trade_id DESC
LIMIT 1
"""

_LAST_TRADE_AT_VENUE_SQL = """
SELECT price, toUnixTimestamp64Nano(event_ts), venue
FROM trades FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String}
ORDER BY event_ts DESC, trade_id DESC
LIMIT 1
"""

# (until - 24 h, until]: exactly 24 hours, including the trade at `until`.
_VOLUME_SQL = """
SELECT sum(size)
FROM trades FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String}
  AND event_ts > fromUnixTimestamp64Nano({from_ns:Int64}, 'UTC')
  AND event_ts <= fromUnixTimestamp64Nano({until_ns:Int64}, 'UTC')
"""

_FEED_STATE_SQL = """
SELECT kind, toUnixTimestamp64Nano(event_ts)
FROM quality_events FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String} AND kind IN {kinds:Array(String)}
ORDER BY event_ts DESC
LIMIT 1
"""

# Stored (closed) candles in range, plus buckets aggregated from trades for every bucket
# after the last stored candle of this series: the still-open candle and any the candle
# agent has not written yet. Trades inside stored buckets are never re-aggregated, so a
# stored revision is never shadowed or double counted. An empty series has max(open_ts) =
# the epoch, so then every bucket in range comes from trades.
_CANDLES_SQL = """
SELECT ts, open, high, low, close, volume
FROM
(
    SELECT toUnixTimestamp64Nano(open_ts) AS ts, open, high, low, close, volume
    FROM candles FINAL
    WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
      AND open_ts >= fromUnixTimestamp64Nano({start_ns:Int64}, 'UTC')
      AND open_ts < fromUnixTimestamp64Nano({end_ns:Int64}, 'UTC')

    UNION ALL

    SELECT intDiv(toUnixTimestamp64Nano(event_ts), {step_ns:Int64}) * {step_ns:Int64} AS ts,
           argMin(price, (event_ts, trade_id)) AS open,
           max(price) AS high,
           min(price) AS low,
           argMax(price, (event_ts, trade_id)) AS close,
           sum(size) AS volume
    FROM trades FINAL
    WHERE venue = {venue:String} AND symbol = {symbol:String}
      AND event_ts >= fromUnixTimestamp64Nano(greatest({first_bucket_ns:Int64}, (
            SELECT toUnixTimestamp64Nano(max(open_ts)) + {step_ns:Int64}
            FROM candles FINAL
            WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
          )), 'UTC')
      AND event_ts < fromUnixTimestamp64Nano({end_bucket_ns:Int64}, 'UTC')
    GROUP BY ts
)
ORDER BY ts
"""


# What the API's read model loads once when it starts following a series (api/market_memory.py).
_LAST_TRADE_BY_VENUE_SQL = """
SELECT venue, price, toUnixTimestamp64Nano(event_ts)
FROM trades FINAL
WHERE symbol = {symbol:String}
ORDER BY event_ts DESC, trade_id DESC
LIMIT 1 BY venue
"""

_TRADES_BETWEEN_SQL = """
SELECT toUnixTimestamp64Nano(event_ts), trade_id, price, size, toString(side)
FROM trades FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String}
  AND event_ts > fromUnixTimestamp64Nano({after_ns:Int64}, 'UTC')
  AND event_ts < fromUnixTimestamp64Nano({before_ns:Int64}, 'UTC')
ORDER BY event_ts, trade_id
"""

_CANDLES_SINCE_SQL = """
SELECT toUnixTimestamp64Nano(open_ts), open, high, low, close, volume, version
FROM candles FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
  AND open_ts >= fromUnixTimestamp64Nano({from_ns:Int64}, 'UTC')
ORDER BY open_ts
"""

_LAST_CANDLE_OPEN_SQL = """
SELECT toUnixTimestamp64Nano(max(open_ts)), count()
FROM candles
WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
"""


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step


class ClickHouseRepository:
    """Per-thread clients from a factory (see the module docstring), shared by every repository."""

    def __init__(self, client_factory: Callable[[], Client]) -> None:
        self._client_factory = client_factory
        self._local = threading.local()
        self._clients: list[Client] = []
        self._clients_lock = threading.Lock()

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            with self._translate_errors():
                client = self._client_factory()
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    @staticmethod
    @contextmanager
    def _translate_errors() -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def _rows(self, sql: str, parameters: dict[str, Any]) -> list[Sequence[Any]]:
        client = self._client()
        with self._translate_errors():
            return list(client.query(sql, parameters=parameters).result_rows)

    def close(self) -> None:
        """Close every client this repository opened (in any thread)."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()


class MarketRepository(ClickHouseRepository):
    """Read side of the market tables (`trades`, `candles`, `quality_events`), all with FINAL."""

    def __init__(
        self,
        client_factory: Callable[[], Client],
        *,
        symbols_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(client_factory)
        self._symbols_ttl_s = symbols_ttl_s
        self._clock = clock
        self._symbols: frozenset[str] = frozenset()
        self._symbols_at: float | None = None
        self._symbols_lock = threading.Lock()
        # A memory-first reader in front of this store, attached by the served API
        # (api/market_memory.py); the market endpoints prefer it when set.
        self.memory: Any = None

    # --- queries -----------------------------------------------------------------------

    def known_symbols(self) -> frozenset[str]:
        """Symbols with at least one stored trade, on any venue; reused for `symbols_ttl_s`."""
        with self._symbols_lock:
            now = self._clock()
            if self._symbols_at is None or now - self._symbols_at >= self._symbols_ttl_s:
                self._symbols = frozenset(row[0] for row in self._rows(_KNOWN_SYMBOLS_SQL, {}))
                self._symbols_at = now
            return self._symbols

    def knows(self, symbol: str) -> bool:
        return symbol in self.known_symbols()

    def last_price(self, symbol: str, venue: str | None = None) -> LastTrade | None:
        """The latest trade by event time: on `venue`, or when None on whichever venue traded
        last (that venue is the default for the symbol). None when there is no trade."""
        if venue is None:
            rows = self._rows(_LAST_TRADE_SQL, {"symbol": symbol})
        else:
            rows = self._rows(_LAST_TRADE_AT_VENUE_SQL, {"symbol": symbol, "venue": venue})
        if not rows:
            return None
        price, event_ns, found_venue = rows[0]
        return LastTrade(price, int(event_ns), found_venue)

    def volume_24h(self, symbol: str, venue: str, until_ns: int) -> Decimal:
        """Base volume in (until - 24 h, until]. The window ends at the caller's `until_ns`
        (the latest trade's event time), not at the wall clock, so a replay of old data
        reports its real 24 h volume instead of zero."""
        rows = self._rows(
            _VOLUME_SQL, {"symbol": symbol, "venue": venue, "from_ns": until_ns - DAY_NS, "until_ns": until_ns}
        )
        return Decimal(rows[0][0]) if rows and rows[0][0] is not None else Decimal(0)

    def feed_state(self, symbol: str, venue: str) -> FeedState | None:
        """The latest feed-state quality event (stale, disconnected, connected) of the series."""
        rows = self._rows(_FEED_STATE_SQL, {"symbol": symbol, "venue": venue, "kinds": list(FEED_STATE_KINDS)})
        if not rows:
            return None
        kind, event_ns = rows[0]
        return FeedState(str(kind), int(event_ns))

    def candles(
        self, symbol: str, interval: Interval | str, start_ns: int, end_ns: int, venue: str | None = None
    ) -> list[CandleRow]:
        """Candles whose open time is in [start_ns, end_ns), ordered by open time.

        Closed candles come from `candles FINAL` (the latest revision); buckets after the last
        stored candle of the series (the open one included) are aggregated from `trades FINAL`
        with bucket = event time floored to the interval in UTC: open/close = first/last trade
        by (event_ts, trade_id), high/low = max/min price, volume = sum of sizes. `venue`
        None means the symbol's default venue (the one that traded last)."""
        if venue is None:
            last = self.last_price(symbol)
            if last is None:
                return []
            venue = last.venue
        interval = Interval(interval)
        step = INTERVAL_NS[interval.value]
        rows = self._rows(
            _CANDLES_SQL,
            {
                "symbol": symbol,
                "venue": venue,
                "interval": interval.value,
                "step_ns": step,
                "start_ns": start_ns,
                "end_ns": end_ns,
                # Buckets that open in [start, end) hold exactly the trades in [these two).
                "first_bucket_ns": _ceil_to(start_ns, step),
                "end_bucket_ns": _ceil_to(end_ns, step),
            },
        )
        return [CandleRow(int(ts), o, h, lo, c, v) for ts, o, h, lo, c, v in rows]

    # --- loads of the API's read model (once per series, see api/market_memory.py) ------------

    def last_trades_by_venue(self, symbol: str) -> dict[str, LastTrade]:
        rows = self._rows(_LAST_TRADE_BY_VENUE_SQL, {"symbol": symbol})
        return {str(venue): LastTrade(price, int(ns), str(venue)) for venue, price, ns in rows}

    def trades_between(self, symbol: str, venue: str, after_ns: int, before_ns: int) -> list[tuple[Any, ...]]:
        """(event_ns, trade_id, price, size, side) with after < event time < before, in order."""
        params = {"symbol": symbol, "venue": venue, "after_ns": after_ns, "before_ns": before_ns}
        return [
            (int(ns), str(tid), price, size, str(side))
            for ns, tid, price, size, side in self._rows(_TRADES_BETWEEN_SQL, params)
        ]

    def candles_since(self, symbol: str, venue: str, interval: str, from_ns: int) -> list[tuple[CandleRow, int]]:
        """Stored candles (latest revision, with its version) opening at or after `from_ns`."""
        params = {"symbol": symbol, "venue": venue, "interval": interval, "from_ns": from_ns}
        return [
            (CandleRow(int(ts), o, h, lo, c, v), int(version))
            for ts, o, h, lo, c, v, version in self._rows(_CANDLES_SINCE_SQL, params)
        ]

    def last_candle_open(self, symbol: str, venue: str, interval: str) -> int | None:
        rows = self._rows(_LAST_CANDLE_OPEN_SQL, {"symbol": symbol, "venue": venue, "interval": interval})
        if not rows or not rows[0][1]:
            return None
        return int(rows[0][0])
