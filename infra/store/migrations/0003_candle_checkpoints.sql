-- Worker state store: the candles agent's per-stream state, with the offset of the last raw
-- message folded into it (see streams/agents/candles.py). The newest checkpoint of a stream
-- replaces older ones; a checkpoint written twice is the same row.
CREATE TABLE IF NOT EXISTS candle_checkpoints
(
    topic      String,
    stream     String,
    partition  UInt32,
    offset     Int64,
    state      String,
    saved_at   DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(offset)
ORDER BY (topic, stream);
