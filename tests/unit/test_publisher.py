"""Publishers: the in-memory one, the producer configuration, and KafkaPublisher's failure
paths against an address where no broker listens (a real broker is an integration test)."""

from __future__ import annotations

import pytest

from streams.ingest.publisher import (
    DEFAULT_PRODUCER_CONFIG,
    KafkaPublisher,
    ListPublisher,
    Published,
    Publisher,
    PublishError,
    producer_config,
)

NO_BROKER = "127.0.0.1:1"  # connection refused at once
QUIET = {"log_level": 2}  # librdkafka would log every refused connection to stderr


def test_list_publisher_keeps_messages_in_order() -> None:
    publisher: Publisher = ListPublisher()
    publisher.publish("a", b"k1", b"v1")
    publisher.publish("b", b"k2", b"v2")
    publisher.flush()
    assert isinstance(publisher, ListPublisher)
    assert publisher.messages == [Published("a", b"k1", b"v1"), Published("b", b"k2", b"v2")]
    assert publisher.on_topic("b") == [Published("b", b"k2", b"v2")]
    assert publisher.flushes == 1


def test_producer_config_defaults_and_overrides() -> None:
    config = producer_config(
        "host:9092", {"linger.ms": 1, "compression.type": "lz4", "log_level": 2, "error_cb": print}
    )
    assert config["bootstrap.servers"] == "host:9092"
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is False  # Tansu has no idempotent producer
    assert config["linger.ms"] == 1
    assert config["compression.type"] == "lz4"
    assert config["log_level"] == 2  # names pass verbatim: librdkafka mixes dots and underscores
    assert config["error_cb"] is print
    assert DEFAULT_PRODUCER_CONFIG["linger.ms"] == 5


def test_undelivered_messages_raise_on_flush() -> None:
    publisher = KafkaPublisher(NO_BROKER, **{"message.timeout.ms": 300, **QUIET})
    publisher.publish("md.trades.v1", b"k", b"v")
    with pytest.raises(PublishError, match="1 messages failed delivery"):
        publisher.flush(timeout_s=10)
    assert publisher.delivery_errors == 1
    publisher.flush(timeout_s=1)  # reported once; nothing left


def test_a_full_queue_is_drained_by_polling() -> None:
    publisher = KafkaPublisher(NO_BROKER, **{"message.timeout.ms": 200, "queue.buffering.max.messages": 1, **QUIET})
    for i in range(2):  # the second waits for the previous one to time out and leave the queue
        publisher.publish("md.trades.v1", b"k", str(i).encode())
    assert publisher.published == 2
    with pytest.raises(PublishError, match="failed delivery"):
        publisher.flush(timeout_s=10)
    assert publisher.delivery_errors == 2


def test_a_queue_that_stays_full_raises() -> None:
    publisher = KafkaPublisher(
        NO_BROKER, queue_full_timeout_s=0.2, **{"message.timeout.ms": 1500, "queue.buffering.max.messages": 1, **QUIET}
    )
    publisher.publish("md.trades.v1", b"k", b"first")
    with pytest.raises(PublishError, match="queue still full"):
        publisher.publish("md.trades.v1", b"k", b"second")
    with pytest.raises(PublishError):
        publisher.close(timeout_s=10)
