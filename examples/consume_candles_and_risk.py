"""Example consumer: final 1-minute candles and risk estimates from Kafka, each value checked
against the published JSON Schema (schemas/jsonschema/<topic>.json) before it is used.

    .venv/bin/python examples/consume_candles_and_risk.py                       # the embedded default
    .venv/bin/python examples/consume_candles_and_risk.py --bootstrap HOST:PORT --max-messages 10

Needs only confluent-kafka and jsonschema-rs (any JSON Schema draft-07 validator would do); it
imports nothing from the engine, as a consumer in another repository would not. One JSON line
per message on stdout; a value that does not satisfy its schema goes to stderr and is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema_rs
from confluent_kafka import Consumer, KafkaError

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas" / "jsonschema"
CANDLES_1M = "md.candles.1m.v1"
RISK = "an.risk.v1"


def load_validators(topics: list[str], schema_dir: Path = SCHEMAS) -> dict[str, Any]:
    return {
        topic: jsonschema_rs.validator_for(json.loads((schema_dir / f"{topic}.json").read_text())) for topic in topics
    }


def summary(topic: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
    """What this consumer keeps of a value (a backtest would keep more)."""
    if value["schema_version"] == "candle.v1":
        return {
            "topic": topic,
            "key": key,
            "open_ts_ns": value["open_ts_ns"],
            "close": value["close"],
            "volume": value["volume"],
            "trades": value["trades"],
        }
    return {
        "topic": topic,
        "key": key,
        "method": value["method"],
        "interval": value["interval"],
        "var_95": value["var_95"],
        "expected_shortfall": value["expected_shortfall"],
    }


def consume(
    bootstrap: str,
    namespace: str = "",
    group: str = "example-consumer",
    max_messages: int | None = None,
    idle_timeout_s: float = 30.0,
    out: Any = sys.stdout,
    err: Any = sys.stderr,
) -> int:
    """Print each final 1m candle and each risk estimate; return how many were printed. Stops after
    `max_messages`, or when nothing arrived for `idle_timeout_s`."""
    names = {namespace + CANDLES_1M: CANDLES_1M, namespace + RISK: RISK}
    validators = load_validators(list(names.values()))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            # The embedded broker (Tansu) holds a group join for half the session timeout: the
            # default 45 s would keep a new consumer idle for 22 s. 6 s is Kafka's own minimum.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )
    consumer.subscribe(list(names))
    printed = 0
    last = time.monotonic()
    try:
        while max_messages is None or printed < max_messages:
            message = consumer.poll(0.5)
            if message is None:
                if time.monotonic() - last > idle_timeout_s:
                    break
                continue
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    print(f"kafka error: {message.error()}", file=err)
                continue
            last = time.monotonic()
            topic = names[message.topic()]
            key = (message.key() or b"").decode()
            try:
                value = json.loads(message.value())
            except ValueError as exc:
                print(f"skipped {topic} {key}: not JSON ({exc})", file=err)
                continue
            errors = [e.message for e in validators[topic].iter_errors(value)]
            if errors:
                print(f"skipped {topic} {key}: {errors[0]}", file=err)
                continue
            if topic == CANDLES_1M and not value["is_final"]:
                continue  # a later revision of this candle will come
            print(json.dumps(summary(topic, key, value)), file=out, flush=True)
            printed += 1
    finally:
        consumer.close()
    return printed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--namespace", default="", help="topic prefix, e.g. a replay run's `run-NAME.`")
    parser.add_argument("--group", default="example-consumer")
    parser.add_argument("--max-messages", type=int, default=None)
    parser.add_argument("--idle-timeout", type=float, default=30.0, help="stop after this many quiet seconds")
    args = parser.parse_args()
    consume(args.bootstrap, args.namespace, args.group, args.max_messages, args.idle_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
