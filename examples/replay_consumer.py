"""Example backtest-style consumer: every derived topic of one replay run (`entasis replay ...
--run-id NAME`), read from the beginning to its end, each value checked against the published JSON
Schema (schemas/jsonschema/<topic>.json), then a summary.

    .venv/bin/python examples/replay_consumer.py --run-id my-backtest
    .venv/bin/python examples/replay_consumer.py --run-id my-backtest --bootstrap HOST:PORT --json

A run's topics are the live ones under the prefix `run-NAME.`, hyphens in NAME written as
underscores (`--run-id a-b` reads `run-a_b.md.candles.1m.v1`; infra/config/run.py). Partitions
are assigned, not subscribed: no consumer group, nothing committed, so the same run reads the
same way every time, as a backtest should. Reading stops once every partition has been read to
the end it had when it was reached.

Needs only confluent-kafka and jsonschema-rs; it imports nothing from the engine. Prints one line
per topic (messages, how many satisfy the schema, streams, event-time range) and, from the final
1m candles, each stream's first open, last close and the return between them. A value that
breaks its schema is reported on stderr (the first few) and counted; the exit status is 1 when
there was one, 2 when the run has no topics or nothing in them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema_rs
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas" / "jsonschema"
# What the worker derives from a replay's trades and books (the raw md.trades.v1 and md.book.v1
# are the replay's input, not its results).
DERIVED = (
    "md.candles.1m.v1",
    "md.candles.5m.v1",
    "md.candles.1h.v1",
    "md.candles.1d.v1",
    "md.book.top.v1",
    "an.vwap.v1",
    "an.risk.v1",
    "an.predictions.v1",
    "md.quality.v1",
)
SHOWN_ERRORS = 5


def run_namespace(run_id: str) -> str:
    """The topic prefix of run `run_id` (infra/config/run.py: hyphens become underscores)."""
    return f"run-{run_id.replace('-', '_')}."


@dataclass
class TopicSummary:
    messages: int = 0
    valid: int = 0
    invalid: int = 0
    streams: set[str] = field(default_factory=set)
    first_event_ns: int | None = None
    last_event_ns: int | None = None

    def add(self, key: str, value: dict[str, Any]) -> None:
        self.valid += 1
        self.streams.add(key)
        at = value.get("event_ts_ns")
        if isinstance(at, int):
            self.first_event_ns = at if self.first_event_ns is None else min(self.first_event_ns, at)
            self.last_event_ns = at if self.last_event_ns is None else max(self.last_event_ns, at)


@dataclass
class Candles:
    """Final 1m candles per stream, by open time (a later revision of one replaces the earlier)."""

    by_stream: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def add(self, key: str, value: dict[str, Any]) -> None:
        if value.get("is_final"):
            self.by_stream.setdefault(key, {})[value["open_ts_ns"]] = value

    def returns(self) -> dict[str, dict[str, Any]]:
        out = {}
        for stream, candles in sorted(self.by_stream.items()):
            ordered = [candles[t] for t in sorted(candles)]
            first, last = Decimal(ordered[0]["open"]), Decimal(ordered[-1]["close"])
            out[stream] = {
                "candles": len(ordered),
                "first_open": str(first),
                "last_close": str(last),
                "return_pct": float((last - first) / first * 100),
            }
        return out


def load_validators(topics: list[str], schema_dir: Path = SCHEMAS) -> dict[str, Any]:
    return {t: jsonschema_rs.validator_for(json.loads((schema_dir / f"{t}.json").read_text())) for t in topics}


def read_run(
    bootstrap: str, namespace: str, topics: list[str], timeout_s: float = 120.0, err: Any = sys.stderr
) -> tuple[dict[str, TopicSummary], Candles]:
    validators = load_validators(topics)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"replay-reader-{uuid.uuid4().hex[:8]}",  # required by the client; never joined
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # The embedded broker answers a fetch at a partition's end only after this long-poll wait.
            "fetch.wait.max.ms": 50,
        }
    )
    summaries = {t: TopicSummary() for t in topics}
    candles = Candles()
    shown = 0
    try:
        metadata = consumer.list_topics(timeout=10)
        assigned = [
            TopicPartition(namespace + t, p, OFFSET_BEGINNING)
            for t in topics
            if namespace + t in metadata.topics
            for p in metadata.topics[namespace + t].partitions
        ]
        if not assigned:
            return {}, candles
        consumer.assign(assigned)
        pending = {(tp.topic, tp.partition) for tp in assigned}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} partitions not read to their end within {timeout_s:.0f}s")
            for message in consumer.consume(500, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard((message.topic(), message.partition()))
                    else:
                        print(f"kafka error: {error}", file=err)
                    continue
                topic = message.topic()[len(namespace) :]
                key = (message.key() or b"").decode()
                summary = summaries[topic]
                summary.messages += 1
                try:
                    value = json.loads(message.value())
                    problems = [e.message for e in validators[topic].iter_errors(value)]
                except ValueError as exc:
                    value, problems = None, [f"not JSON ({exc})"]
                if problems or not isinstance(value, dict):
                    summary.invalid += 1
                    if shown < SHOWN_ERRORS:
                        print(f"invalid {topic} {key} at offset {message.offset()}: {problems[0]}", file=err)
                        shown += 1
                    continue
                summary.add(key, value)
                if topic == "md.candles.1m.v1":
                    candles.add(key, value)
    finally:
        consumer.close()
    return summaries, candles


def _time(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(run_id: str, summaries: dict[str, TopicSummary], candles: Candles) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "topics": {
            t: {
                "messages": s.messages,
                "valid": s.valid,
                "invalid": s.invalid,
                "streams": sorted(s.streams),
                "first_event": _time(s.first_event_ns),
                "last_event": _time(s.last_event_ns),
            }
            for t, s in summaries.items()
        },
        "final_1m_candles": candles.returns(),
    }


def render(result: dict[str, Any]) -> str:
    lines = [f"run {result['run_id']}: every derived topic from the beginning, checked against its schema"]
    lines.append(f"{'topic':20} {'messages':>9} {'valid':>9} {'invalid':>8} {'streams':>8}  event time")
    for topic, s in result["topics"].items():
        lines.append(
            f"{topic:20} {s['messages']:>9,} {s['valid']:>9,} {s['invalid']:>8,} {len(s['streams']):>8}  "
            f"{s['first_event']} .. {s['last_event']}"
        )
    for stream, r in result["final_1m_candles"].items():
        lines.append(
            f"{stream}: {r['candles']} final 1m candles, open {r['first_open']} -> close {r['last_close']} "
            f"({r['return_pct']:+.3f} %)"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True, help="the run's name, as given to `entasis replay --run-id`")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--topics", nargs="+", default=list(DERIVED), help="derived topics to read (default: all)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to read everything in")
    parser.add_argument("--json", action="store_true", help="the summary as one JSON object")
    args = parser.parse_args()
    summaries, candles = read_run(args.bootstrap, run_namespace(args.run_id), args.topics, args.timeout)
    if not any(s.messages for s in summaries.values()):
        print(f"run {args.run_id}: no messages in topics {run_namespace(args.run_id)}*", file=sys.stderr)
        return 2
    result = report(args.run_id, summaries, candles)
    print(json.dumps(result) if args.json else render(result))
    return 1 if any(s.invalid for s in summaries.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
