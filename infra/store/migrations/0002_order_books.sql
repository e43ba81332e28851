-- Periodic order-book snapshots stored by the book agent (streams/agents/book.py): the top
-- `depth` levels per side of a valid book, best first, at `last_update_id` (the venue's id
-- of the last diff in the book) and `event_ts` (exchange time of that state). Parallel
-- arrays rather than Array(Tuple(...)): `bid_prices[1]` is the best bid, and Arrow's
-- list<decimal> maps to them directly.
-- Idempotent: a snapshot written again (a replay, a re-delivered message) has the same key
-- (venue, symbol, event_ts, last_update_id) and collapses into one row; readers use FINAL.

CREATE TABLE IF NOT EXISTS book_snapshots
(
    venue          LowCardinality(String),
    symbol         LowCardinality(String),
    event_ts       DateTime64(9, 'UTC'),
    recv_ts        DateTime64(9, 'UTC'),
    last_update_id UInt64,
    depth          UInt16,
    bid_prices     Array(Decimal(38, 8)),
    bid_sizes      Array(Decimal(38, 8)),
    ask_prices     Array(Decimal(38, 8)),
    ask_sizes      Array(Decimal(38, 8))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_ts)
ORDER BY (venue, symbol, event_ts, last_update_id);
