"""Pure logic, no Kafka and no I/O: candles, order books, venue parsers."""
