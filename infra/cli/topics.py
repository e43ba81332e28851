"""`entasis topics create`: create every declared topic before anything runs."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.topics import ALL_TOPICS, TopicSpec


def create_topics(bootstrap: str, namespace: str = "", specs: tuple[TopicSpec, ...] = ALL_TOPICS,
                  with_config: bool = True, replication: int = 1, security: dict[str, Any] | None = None) -> list[str]:
    """Create what is missing; returns the names created now. Existing topics are left as they are.

    `with_config=False` skips topic configs for brokers that reject them (Tansu's memory
    storage has no retention or compaction to configure). `security`: librdkafka's SASL
    properties (infra/config/kafka.py `librdkafka_options`)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(security or {})})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(spec.full_name(namespace), num_partitions=spec.partitions, replication_factor=replication,
                 config=spec.config() if with_config else {})
        for spec in specs
        if spec.full_name(namespace) not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != "TOPIC_ALREADY_EXISTS" and "already exists" not in str(exc).lower():
                raise
    return created
