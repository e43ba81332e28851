"""The worker's small stream runtime: what every agent needs around its decisions.

- `keyed`: state per stream key, created on first use, forgotten when Faust revokes the partition;
- `emit`: events to a topic, keyed by stream, awaited on the broker;
- `batch_sink`: a topic's values written in batches, acknowledged only after the write;
- `checkpointed`: per-stream state restored from a checkpoint, whose inputs are acknowledged
  only once a checkpoint covering them is stored.

Decisions live in `streams.core` (pure processors); an agent is decode -> handle -> deliver.
"""
