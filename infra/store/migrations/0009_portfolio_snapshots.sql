-- Worker state store: per-account snapshots of the portfolio fold (streams/core/portfolio_snapshot.py),
-- each with the offset in `pf.events.v1` of the account's last event folded into it, and per
-- partition a mark row (account '') up to which every account of the partition is covered. A restart
-- loads the newest row of each (FINAL: the highest offset wins) and reads each partition after its
-- mark only. A row written twice is the same row.
CREATE TABLE IF NOT EXISTS portfolio_snapshots
(
    topic      String,
    partition  UInt32,
    account    String,
    offset     Int64,
    state      String,
    saved_at   DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(offset)
ORDER BY (topic, partition, account);
