-- Projection of pf.events.v1, the portfolio's source of truth: one row per event, keyed by the
-- account's event number, so a re-delivered or replayed event is the same row. Dropping this
-- table loses nothing: `entasis portfolio rebuild` replays the topic into it.
CREATE TABLE IF NOT EXISTS portfolio_events
(
    account     String,
    seq         UInt64,
    kind        LowCardinality(String),
    command_id  String,
    body        String,
    event_ts    DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (account, seq);
