"""The stored records a client pages through: which series exist (`symbols`), their trades and
their data-quality events. Keyset paging: a page ends at a (event time, id) key and the next one
starts strictly after it, in the tables' own sort order, so pages never skip or repeat a row
however many rows arrive meanwhile (a row stored later with an older key than the cursor is not
seen by a client already past it; it is there for the next read of that range).

Like `PredictionRepository`, it owns no database clients: it runs its queries through the app's
market repository, whose per-thread clients it shares."""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

from infra.store.repository import FEED_STATE_KINDS, MarketRepository

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
    side: str


class QualityRecord(NamedTuple):
    event_ns: int
    event_id: str
    venue: str
    kind: str
    detail: str  # the JSON object the quality agent stored


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
