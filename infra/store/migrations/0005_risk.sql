-- Rolling risk estimates of the risk agent (streams/agents/risk.py), one row per stream,
-- candle interval, method and as-of time (the close time of the candle that completed it).
-- Idempotent: a re-delivered or replayed estimate has the same key and collapses into one
-- row (readers use FINAL); the agent's estimates are deterministic functions of the stored
-- candles, so a duplicate carries the same numbers. Amounts are in the quote currency for
-- one unit of the base asset; volatility is an annualised fraction.

CREATE TABLE IF NOT EXISTS risk_estimates
(
    venue              LowCardinality(String),
    symbol             LowCardinality(String),
    interval           LowCardinality(String),
    method             LowCardinality(String),
    as_of              DateTime64(9, 'UTC'),
    price              Decimal(38, 8),
    var_95             Decimal(38, 8),
    expected_shortfall Decimal(38, 8),
    volatility         Decimal(38, 8),
    window             UInt32,
    recv_ts            DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(as_of)
ORDER BY (venue, symbol, method, interval, as_of);
