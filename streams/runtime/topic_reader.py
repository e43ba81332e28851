"""A whole topic read from the broker, outside any consumer group (event-sourced state)."""

from __future__ import annotations


async def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every message value on `topic` up to its end offsets at the time of the call."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # metadata, so the topic's partitions are known
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        values: list[bytes] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            batches = await consumer.getmany(*tps, timeout_ms=500)
            for records in batches.values():
                values.extend(r.value for r in records
                              if r.value is not None and r.offset < end[TopicPartition(r.topic, r.partition)])
        return values
    finally:
        await consumer.stop()
