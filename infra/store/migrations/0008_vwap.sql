-- Rolling VWAP of the vwap agent (streams/agents/vwap.py), one row per stream, window and
-- as-of time (the close time of the 1m candle that completed it). Idempotent: a re-delivered
-- candle gives the same key and collapses into one row (readers use FINAL).

CREATE TABLE IF NOT EXISTS vwap
(
    venue          LowCardinality(String),
    symbol         LowCardinality(String),
    window_minutes UInt32,
    as_of          DateTime64(9, 'UTC'),
    vwap           Decimal(38, 8),
    volume         Decimal(38, 8),
    candles        UInt32,
    recv_ts        DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(as_of)
ORDER BY (venue, symbol, window_minutes, as_of);
