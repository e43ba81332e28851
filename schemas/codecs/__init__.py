"""One codec per topic: the only place a topic's value format is spelled, encoded and decoded.

Each module owns the formats of one topic (`trades` for `md.trades.v1`, `book` for `md.book.v1`,
...): the format name constants, `encode`, a validating `decode`, and, where the topic is stored
in ClickHouse, the Arrow table of its rows. `schemas.codecs.registry` maps a topic to its codec.

Every value names its format under one key, `schema_version` (`envelope.VERSION_KEY`). Raw batches
written before that key was unified name it under `schema`; their decoders still accept it (see
`envelope.version_of`).
"""
