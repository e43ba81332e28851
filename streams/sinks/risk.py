"""The risk agent's reads and writes in ClickHouse: stored final candles to rebuild a stream's
rolling state after a restart, and `risk_estimates` rows (infra/store/migrations/0005_risk.sql)."""

from __future__ import annotations

from decimal import Decimal

from streams.sinks.clickhouse import ClickHouseSink

# The last `limit` final candles before `before_ns`, newest first (reversed by the caller).
# FINAL: the latest revision of each candle; `is_final`: only candles no revision will change.
_LAST_FINAL_CLOSES = """
SELECT toUnixTimestamp64Nano(open_ts), close
FROM candles FINAL
WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String}
  AND is_final = 1 AND open_ts < fromUnixTimestamp64Nano({before_ns:Int64}, 'UTC')
ORDER BY open_ts DESC
LIMIT {limit:UInt32}
"""


class ClickHouseCandleLoader:
    """`loader(venue, symbol, interval, before_ns, limit)` -> [(open ns, close)], oldest first."""

    def __init__(self, sink: ClickHouseSink):
        self.sink = sink

    async def __call__(self, venue: str, symbol: str, interval: str, before_ns: int, limit: int
                       ) -> list[tuple[int, Decimal]]:
        rows = await self.sink.query(
            _LAST_FINAL_CLOSES,
            {"venue": venue, "symbol": symbol, "interval": interval, "before_ns": before_ns, "limit": limit},
        )
        return [(int(ts), Decimal(close)) for ts, close in reversed(rows)]


# the rows of `risk_estimates` are built by the topic's codec
