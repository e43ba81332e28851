"""Stream processing: pure core logic, Faust agents, ingest sources and sinks."""
