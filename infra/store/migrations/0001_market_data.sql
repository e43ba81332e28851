-- Market data projections of the md.* topics. Every table is idempotent by key:
-- ReplacingMergeTree collapses a re-delivered row (same key) into one, and readers use
-- FINAL (or an explicit latest-version pick), so a crashed and restarted sink never shows
-- a duplicate. Prices and sizes are Decimal(38, 8): 8 places is the finest any venue we
-- serve prints, and keeps the exchange's strings exact.

CREATE TABLE IF NOT EXISTS trades
(
    venue      LowCardinality(String),
    symbol     LowCardinality(String),
    trade_id   String,
    price      Decimal(38, 8),
    size       Decimal(38, 8),
    side       Enum8('unknown' = 0, 'buy' = 1, 'sell' = 2),
    event_ts   DateTime64(9, 'UTC'),
    recv_ts    DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_ts)
ORDER BY (venue, symbol, event_ts, trade_id);

-- One row per candle; a later revision replaces an earlier one (version = revision * 2 + is_final).
CREATE TABLE IF NOT EXISTS candles
(
    venue          LowCardinality(String),
    symbol         LowCardinality(String),
    interval       LowCardinality(String),
    open_ts        DateTime64(9, 'UTC'),
    open           Decimal(38, 8),
    high           Decimal(38, 8),
    low            Decimal(38, 8),
    close          Decimal(38, 8),
    volume         Decimal(38, 8),
    trades         UInt32,
    first_trade_id String,
    last_trade_id  String,
    revision       UInt32,
    is_final       UInt8,
    event_ts       DateTime64(9, 'UTC'),
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY (interval, toYYYYMM(open_ts))
ORDER BY (venue, symbol, interval, open_ts);

CREATE TABLE IF NOT EXISTS quality_events
(
    event_id   String,
    venue      LowCardinality(String),
    symbol     LowCardinality(String),
    kind       LowCardinality(String),
    detail     String,
    event_ts   DateTime64(9, 'UTC'),
    recv_ts    DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (venue, symbol, kind, event_ts, event_id);

CREATE TABLE IF NOT EXISTS dead_letters
(
    event_id   String,
    venue      LowCardinality(String),
    source     String,
    error      String,
    raw        String,
    recv_ts    DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (source, recv_ts, event_id);
