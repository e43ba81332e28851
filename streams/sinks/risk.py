"""The risk agent's reads and writes in ClickHouse: stored final candles to rebuild a stream's
rolling state after a restart, and `risk_estimates` rows (infra/store/migrations/0005_risk.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import pyarrow as pa

from schemas.risk import RiskEstimate
from streams.sinks.clickhouse import DEC, TS, ClickHouseSink

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


_QUANT = Decimal("0.00000001")


def _decimals(values: Sequence[Decimal]) -> pa.Array:
    return pa.array([v.quantize(_QUANT) for v in values], type=DEC)


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


def risk_table(estimates: Sequence[RiskEstimate]) -> pa.Table:
    return pa.table(
        {
            "venue": pa.array([e.venue for e in estimates], pa.string()),
            "symbol": pa.array([e.symbol for e in estimates], pa.string()),
            "interval": pa.array([e.interval.value for e in estimates], pa.string()),
            "method": pa.array([e.method.value for e in estimates], pa.string()),
            "as_of": pa.array([e.event_ts_ns for e in estimates], TS),
            "price": _decimals([e.price for e in estimates]),
            "var_95": _decimals([e.var_95 for e in estimates]),
            "expected_shortfall": _decimals([e.expected_shortfall for e in estimates]),
            "volatility": _decimals([e.volatility for e in estimates]),
            "window": pa.array([e.window for e in estimates], pa.uint32()),
            "recv_ts": pa.array([e.recv_ts_ns for e in estimates], TS),
        }
    )
