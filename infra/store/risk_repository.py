"""All SQL the risk endpoints run: the latest stored estimate of a method, and the stored
final candles a backtest rolls over.

`RiskRepository` is a `MarketRepository` (same per-thread clients, same symbol cache), so one
object serves the market and the risk routes: build it where the app builds its repository.
Every user value is a server-side parameter (`{name:Type}`); times cross as integer ns.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

from infra.store.repository import MarketRepository


class RiskRow(NamedTuple):
    as_of_ns: int
    price: Decimal
    var_95: Decimal
    expected_shortfall: Decimal
    volatility: Decimal
    window: int


_LATEST_RISK_SQL = """
SELECT toUnixTimestamp64Nano(as_of), price, var_95, expected_shortfall, volatility, window
FROM risk_estimates FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String}
  AND method = {method:String} AND interval = {interval:String}
ORDER BY as_of DESC
LIMIT 1
"""

_FINAL_CLOSES_SQL = """
SELECT toUnixTimestamp64Nano(open_ts), close
FROM candles FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
  AND is_final = 1
  AND open_ts >= fromUnixTimestamp64Nano({start_ns:Int64}, 'UTC')
  AND open_ts < fromUnixTimestamp64Nano({end_ns:Int64}, 'UTC')
ORDER BY open_ts
"""

_LAST_FINAL_OPEN_SQL = """
SELECT toUnixTimestamp64Nano(max(open_ts)), count()
FROM candles FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String} AND is_final = 1
"""


class RiskRepository(MarketRepository):
    def latest_risk(self, symbol: str, venue: str, method: str, interval: str) -> RiskRow | None:
        rows = self._rows(_LATEST_RISK_SQL, {"symbol": symbol, "venue": venue, "method": method, "interval": interval})
        if not rows:
            return None
        as_of, price, var, es, vol, window = rows[0]
        return RiskRow(int(as_of), price, var, es, vol, int(window))

    def final_closes(self, symbol: str, venue: str, interval: str, start_ns: int, end_ns: int
                     ) -> list[tuple[int, Decimal]]:
        """(open ns, close) of the final candles opening in [start_ns, end_ns), oldest first."""
        rows = self._rows(
            _FINAL_CLOSES_SQL,
            {"symbol": symbol, "venue": venue, "interval": interval, "start_ns": start_ns, "end_ns": end_ns},
        )
        return [(int(ts), close) for ts, close in rows]

    def last_final_open(self, symbol: str, venue: str, interval: str) -> int | None:
        """Open time of the newest final candle of the series, None when there is none."""
        rows = self._rows(_LAST_FINAL_OPEN_SQL, {"symbol": symbol, "venue": venue, "interval": interval})
        if not rows or int(rows[0][1]) == 0:
            return None
        return int(rows[0][0])
