"""Where ingest puts its messages: a Kafka producer, or a list in tests.

Every feed (replay, simulated, live) publishes through the `Publisher` protocol, so tests
capture exactly the bytes Kafka would get without running a broker.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, Message, Producer

from infra.config.kafka import librdkafka_options

if TYPE_CHECKING:
    from infra.config.settings import Settings

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, topic: str, key: bytes, value: bytes) -> None: ...

    def flush(self) -> None: ...


class PublishError(RuntimeError):
    """Messages could not be delivered (delivery reports, timeouts, a full queue that stays full)."""


class Published(NamedTuple):
    topic: str
    key: bytes
    value: bytes


class ListPublisher:
    """Keeps every message in memory, in publish order."""

    def __init__(self) -> None:
        self.messages: list[Published] = []
        self.flushes = 0

    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        self.messages.append(Published(topic, key, value))

    def flush(self) -> None:
        self.flushes += 1

    def on_topic(self, topic: str) -> list[Published]:
        return [m for m in self.messages if m.topic == topic]


# Producer defaults. Raw messages are already batches of ~100 events (a few KB), so a short
# linger is enough to fill librdkafka's batches without adding visible latency.
DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 200_000,
    "acks": "all",
    # Tansu, the embedded broker, has no idempotent producer (docs/architecture.md, "Deployments"); replays and the
    # idempotent sink make duplicates from retries harmless instead.
    "enable.idempotence": False,
    # Only failures produce a report, so the Python callback costs nothing on success.
    "delivery.report.only.error": True,
}


def producer_config(bootstrap: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The full producer configuration: defaults, then `overrides`.

    Keys are librdkafka's own names, verbatim (`linger.ms`, but `log_level`): no spelling is
    translated, because librdkafka itself mixes dots and underscores."""
    return {**DEFAULT_PRODUCER_CONFIG, "bootstrap.servers": bootstrap, **overrides}


class KafkaPublisher:
    """confluent-kafka producer behind the `Publisher` protocol.

    `conf` overrides `DEFAULT_PRODUCER_CONFIG` with librdkafka property names, which hold
    dots: `KafkaPublisher(bootstrap, **{"linger.ms": 1, "compression.type": "lz4"})`.

    Delivery failures are counted as they are reported and raised by the next `flush()`.
    A full local queue (BufferError) is drained by polling, up to `queue_full_timeout_s`."""

    @classmethod
    def for_settings(cls, settings: Settings, **conf: Any) -> KafkaPublisher:
        """A publisher to the settings' broker, authenticated as they say (infra/config/kafka.py)."""
        return cls(settings.kafka_bootstrap, **{**librdkafka_options(settings), **conf})

    def __init__(self, bootstrap: str, *, queue_full_timeout_s: float = 30.0, **conf: Any) -> None:
        config = producer_config(bootstrap, conf)
        config["on_delivery"] = self._on_delivery
        self._producer = Producer(config)
        self._queue_full_timeout_s = queue_full_timeout_s
        self.published = 0
        self.delivery_errors = 0
        self._unraised_errors = 0
        self._first_error: str | None = None

    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        try:
            self._producer.produce(topic, value, key)
        except BufferError:
            self._produce_when_room(topic, key, value)
        self.published += 1
        # Serves delivery reports (only failures, see DEFAULT_PRODUCER_CONFIG) as we go.
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self._producer.flush(timeout_s)
        self._raise_delivery_errors()
        if remaining:
            raise PublishError(f"{remaining} messages still undelivered after {timeout_s} s")

    def close(self, timeout_s: float = 60.0) -> None:
        self.flush(timeout_s)
        # The producer holds our delivery callback, a reference cycle: drop it now, so its
        # threads stop with the feed instead of reconnecting until some later GC pass.
        del self._producer

    def __enter__(self) -> KafkaPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _produce_when_room(self, topic: str, key: bytes, value: bytes) -> None:
        deadline = time.monotonic() + self._queue_full_timeout_s
        while True:
            # Sending what is queued frees room; poll also serves delivery reports.
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise PublishError(
                        f"producer queue still full after {self._queue_full_timeout_s} s; is the broker reachable?"
                    ) from None

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        self.delivery_errors += 1
        self._unraised_errors += 1
        if self._first_error is None:
            # One line per flush period: a dead broker fails every queued message at once.
            self._first_error = f"{err.str()} (topic {msg.topic()})"
            log.warning("delivery failed: %s", self._first_error)

    def _raise_delivery_errors(self) -> None:
        if not self._unraised_errors:
            return
        count, first = self._unraised_errors, self._first_error
        self._unraised_errors, self._first_error = 0, None
        raise PublishError(f"{count} messages failed delivery; first: {first}")
