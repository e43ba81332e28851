"""A whole topic read from the broker, outside any consumer group (event-sourced state)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TopicRecord:
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    # as the broker gave them (aiokafka: (name, bytes) pairs); readers of a signed topic check them
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class TopicHistory:
    """Records read, in partition order, and each partition's end offset when the read began."""

    records: list[TopicRecord] = field(default_factory=list)
    end: dict[int, int] = field(default_factory=dict)


async def read_topic(bootstrap: str, topic: str, **options: Any) -> list[bytes]:
    """Every message value on `topic` up to its end offsets at the time of the call. `options`:
    the client's authentication (infra/config/kafka.py `aiokafka_options`)."""
    return [record.value for record in (await read_topic_records(bootstrap, topic, **options)).records]


async def read_topic_records(bootstrap: str, topic: str, start: Mapping[int, int] | None = None,
                             **options: Any) -> TopicHistory:
    """Every message of `topic` from `start` (partition -> first offset to read; partitions not
    named: from the beginning) up to the end offsets at the time of the call. A start at or past a
    partition's end reads nothing there (past it: the caller compares with `end`)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    start = dict(start or {})
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **options)
    await consumer.start()
    try:
        await consumer.topics()  # metadata, so the topic's partitions are known
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return TopicHistory()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        history = TopicHistory(end={tp.partition: end[tp] for tp in tps})
        reading = []
        for tp in tps:
            first = start.get(tp.partition, 0)
            if first >= end[tp]:
                continue  # nothing to read there (or a start past the end: the caller decides)
            if first > 0:
                consumer.seek(tp, first)
            reading.append(tp)

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in reading])

        by_partition: dict[int, list[TopicRecord]] = {tp.partition: [] for tp in reading}
        while reading and await behind():
            batches = await consumer.getmany(*reading, timeout_ms=500)
            for tp, records in batches.items():
                # Everything fetched is kept, also past the reported end: the embedded broker
                # reports a partition's end as its last batch's first offset + 1, and a fetch
                # returns that whole batch (README, "The embedded infrastructure"). Keeping only
                # offsets below the end dropped the rest of each partition's last batch.
                by_partition[tp.partition].extend(
                    TopicRecord(r.partition, r.offset, r.value, r.key, tuple(r.headers or ()))
                    for r in records if r.value is not None)
        for tp in reading:  # the end is where reading stopped (never short of the reported one)
            history.end[tp.partition] = max(end[tp], await consumer.position(tp))
        history.records = [record for p in sorted(by_partition) for record in by_partition[p]]
        return history
    finally:
        await consumer.stop()
