"""The stored records a client pages through: which series exist (`symbols`), their trades and
their data-quality events. Keyset paging: a page ends at a (event time, id) key and the next one
starts strictly after it, in the tables' own sort order, so pages never skip or repeat a row
however many rows arrive meanwhile (a row stored later with an older key than the cursor is not
seen by a client already past it; it is there for the next read of that range).

Also the reads of the market history's options: candles with the trades stored in their buckets
(`?fields=trades,vwap`) and, for a bulk export that pages through a long range, where the next
candle after a stretch without any is.

Like `PredictionRepository`, it owns no database clients: it runs its queries through the app's
market repository, whose per-thread clients it shares."""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

# The store's candle query, wrapped unchanged (so a history with `fields` has exactly its candles).
from infra.store.repository import _CANDLES_SQL, FEED_STATE_KINDS, CandleRow, MarketRepository
from schemas.events import INTERVAL_NS, Interval

_SERIES_SQL = """
SELECT venue, symbol, toUnixTimestamp64Nano(min(event_ts)), toUnixTimestamp64Nano(max(event_ts)), count()
FROM trades
GROUP BY venue, symbol
ORDER BY symbol, venue
"""

_FEED_STATES_SQL = """
SELECT venue, symbol, argMax(kind, event_ts), toUnixTimestamp64Nano(max(event_ts))
FROM quality_events
WHERE kind IN {kinds:Array(String)}
GROUP BY venue, symbol
"""

_TRADES_PAGE_SQL = """
SELECT toUnixTimestamp64Nano(event_ts), trade_id, price, size, toString(side)
FROM trades FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String}
  AND event_ts >= fromUnixTimestamp64Nano({start_ns:Int64}, 'UTC')
  AND event_ts < fromUnixTimestamp64Nano({end_ns:Int64}, 'UTC')
  AND (event_ts, trade_id) > (fromUnixTimestamp64Nano({after_ns:Int64}, 'UTC'), {after_id:String})
ORDER BY event_ts, trade_id
LIMIT {limit:UInt32}
"""

_QUALITY_PAGE_SQL = """
SELECT toUnixTimestamp64Nano(event_ts), event_id, venue, kind, detail
FROM quality_events FINAL
WHERE symbol = {symbol:String} AND (empty({venues:Array(String)}) OR has({venues:Array(String)}, venue))
  AND (empty({kinds:Array(String)}) OR has({kinds:Array(String)}, kind))
  AND event_ts >= fromUnixTimestamp64Nano({start_ns:Int64}, 'UTC')
  AND event_ts < fromUnixTimestamp64Nano({end_ns:Int64}, 'UTC')
  AND (event_ts, event_id) > (fromUnixTimestamp64Nano({after_ns:Int64}, 'UTC'), {after_id:String})
ORDER BY event_ts, event_id
LIMIT {limit:UInt32}
"""

# The store's candles (`MarketRepository.candles`, its one query, wrapped as it is), each with the
# trades stored in its bucket: their count, size sum and price x size sum. One query, so the
# candles built from trades (the open one) and their sums read the same trades. A bucket without
# stored trades joins zeros (ClickHouse's LEFT JOIN default). Decimal(38, 8) x Decimal(38, 8) is
# Decimal(38, 16) in ClickHouse, exact; an overflow raises rather than wraps.
_CANDLES_WITH_TRADES_SQL = (
    """
SELECT c.ts, c.open, c.high, c.low, c.close, c.volume, s.n, s.size_sum, s.quote
FROM
("""
    + _CANDLES_SQL
    + """) AS c
LEFT JOIN
(
    SELECT intDiv(toUnixTimestamp64Nano(event_ts), {step_ns:Int64}) * {step_ns:Int64} AS ts,
           count() AS n, sum(size) AS size_sum, sum(price * size) AS quote
    FROM trades FINAL
    WHERE venue = {venue:String} AND symbol = {symbol:String}
      AND event_ts >= fromUnixTimestamp64Nano({first_bucket_ns:Int64}, 'UTC')
      AND event_ts < fromUnixTimestamp64Nano({end_bucket_ns:Int64}, 'UTC')
    GROUP BY ts
) AS s ON c.ts = s.ts
ORDER BY c.ts
"""
)

# Where the next candle is that the store's candle query would give at or after `from_ns` and
# before `end_ns`: the first stored candle, and the first bucket of trades after the series' last
# stored candle (NULL: none). Both read the tables' sort key.
_NEXT_CANDLE_SQL = """
SELECT
    (SELECT minOrNull(toUnixTimestamp64Nano(open_ts)) FROM candles FINAL
     WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
       AND open_ts >= fromUnixTimestamp64Nano({from_ns:Int64}, 'UTC')
       AND open_ts < fromUnixTimestamp64Nano({end_ns:Int64}, 'UTC')),
    (SELECT minOrNull(toUnixTimestamp64Nano(event_ts)) FROM trades FINAL
     WHERE venue = {venue:String} AND symbol = {symbol:String}
       AND event_ts >= fromUnixTimestamp64Nano(greatest({from_ns:Int64}, (
             SELECT toUnixTimestamp64Nano(max(open_ts)) + {step_ns:Int64}
             FROM candles FINAL
             WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
           )), 'UTC')
       AND event_ts < fromUnixTimestamp64Nano({end_bucket_ns:Int64}, 'UTC'))
"""

# Before every stored key: event times are non-negative and ids compare above "".
START_KEY: tuple[int, str] = (-1, "")


class SeriesRow(NamedTuple):
    venue: str
    symbol: str
    first_trade_ns: int
    last_trade_ns: int
    trades: int
    feed_state: str | None
    feed_state_ns: int | None


class TradeRecord(NamedTuple):
    event_ns: int
    trade_id: str
    price: Decimal
    size: Decimal
    side: str = "unknown"  # `buy`, `sell` (the taker's) or `unknown`, as the table's Enum8 spells it


class QualityRecord(NamedTuple):
    event_ns: int
    event_id: str
    venue: str
    kind: str
    detail: str  # the JSON object the quality agent stored


class BucketTrades(NamedTuple):
    """The trades stored in a candle's bucket (`trades FINAL`): how many, and their sums."""

    trades: int
    size: Decimal  # sum of sizes
    quote: Decimal  # sum of price x size, exact


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step


class RecordsRepository:
    def __init__(self, market: MarketRepository) -> None:
        self.market = market

    def series(self) -> list[SeriesRow]:
        """Every (venue, symbol) with a stored trade, with its latest feed state, by symbol then venue."""
        states = {
            (str(venue), str(symbol)): (str(kind), int(ns))
            for venue, symbol, kind, ns in self.market._rows(_FEED_STATES_SQL, {"kinds": list(FEED_STATE_KINDS)})
        }
        out = []
        for venue, symbol, first_ns, last_ns, count in self.market._rows(_SERIES_SQL, {}):
            state = states.get((str(venue), str(symbol)))
            out.append(
                SeriesRow(
                    str(venue), str(symbol), int(first_ns), int(last_ns), int(count),
                    state[0] if state else None, state[1] if state else None,
                )
            )  # fmt: skip
        return out

    def trades(
        self, symbol: str, venue: str, start_ns: int, end_ns: int, after: tuple[int, str], limit: int
    ) -> list[TradeRecord]:
        """Up to `limit` trades with start <= event time < end and (event time, trade id) > `after`,
        in that order (the store's `trades FINAL`: a re-delivered trade is one row)."""
        params = {"symbol": symbol, "venue": venue, "start_ns": start_ns, "end_ns": end_ns,
                  "after_ns": after[0], "after_id": after[1], "limit": limit}  # fmt: skip
        return [
            TradeRecord(int(ns), str(tid), price, size, str(side))
            for ns, tid, price, size, side in self.market._rows(_TRADES_PAGE_SQL, params)
        ]

    def quality(
        self,
        symbol: str,
        venues: list[str],
        kinds: list[str],
        start_ns: int,
        end_ns: int,
        after: tuple[int, str],
        limit: int,
    ) -> list[QualityRecord]:
        """Up to `limit` quality events of `symbol` (on `venues`, of `kinds`; empty means all) with
        start <= event time < end and (event time, event id) > `after`, in that order."""
        params = {"symbol": symbol, "venues": venues, "kinds": kinds, "start_ns": start_ns, "end_ns": end_ns,
                  "after_ns": after[0], "after_id": after[1], "limit": limit}  # fmt: skip
        return [
            QualityRecord(int(ns), str(eid), str(venue), str(kind), str(detail))
            for ns, eid, venue, kind, detail in self.market._rows(_QUALITY_PAGE_SQL, params)
        ]

    def candles_with_trades(
        self, symbol: str, venue: str, interval: Interval | str, start_ns: int, end_ns: int
    ) -> list[tuple[CandleRow, BucketTrades]]:
        """`MarketRepository.candles` of [start_ns, end_ns) on `venue`, each with the trades stored
        in its bucket (count 0 and zero sums when none are)."""
        interval = Interval(interval)
        step = INTERVAL_NS[interval.value]
        params = {"symbol": symbol, "venue": venue, "interval": interval.value, "step_ns": step,
                  "start_ns": start_ns, "end_ns": end_ns,
                  "first_bucket_ns": _ceil_to(start_ns, step), "end_bucket_ns": _ceil_to(end_ns, step)}  # fmt: skip
        return [
            (CandleRow(int(ts), o, h, lo, c, v), BucketTrades(int(n or 0), Decimal(size or 0), Decimal(quote or 0)))
            for ts, o, h, lo, c, v, n, size, quote in self.market._rows(_CANDLES_WITH_TRADES_SQL, params)
        ]

    def next_candle(self, symbol: str, venue: str, interval: Interval | str, from_ns: int, end_ns: int) -> int | None:
        """The open time of the first candle `MarketRepository.candles` would give in [from_ns,
        end_ns) (`from_ns` on a bucket boundary), or None when there is none: lets an export skip a
        long stretch without candles in one query instead of a page per stretch."""
        interval = Interval(interval)
        step = INTERVAL_NS[interval.value]
        params = {"symbol": symbol, "venue": venue, "interval": interval.value, "step_ns": step,
                  "from_ns": from_ns, "end_ns": end_ns, "end_bucket_ns": _ceil_to(end_ns, step)}  # fmt: skip
        rows = self.market._rows(_NEXT_CANDLE_SQL, params)
        if not rows:
            return None
        stored, traded = rows[0]
        found = [int(stored)] if stored is not None else []
        if traded is not None:
            found.append(int(traded) // step * step)
        return min(found) if found else None
