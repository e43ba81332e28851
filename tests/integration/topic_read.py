"""Read a whole topic back in a test, whatever the broker says its end is.

The embedded broker (Tansu, memory storage) reports a partition's end offset (high watermark)
as the base offset of its last record batch plus one, not the last record's offset plus one: 11
messages produced in one batch read back as offsets 0..10 while the end is reported as 1. A
reader that keeps only records below the reported end loses the rest of the last batch. Fetches
return whole batches, so reading until every partition's position has reached the reported
end, keeping everything fetched, gets every record; nothing else is produced while the tests
read, so nothing later is mixed in."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_all_async(bootstrap: str, topic: str) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every record of `topic`, in partition then offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[tuple[int, int, bytes]] = []
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            for records in (await consumer.getmany(*tps, timeout_ms=500)).values():
                out.extend((r.partition, r.offset, r.value) for r in records if r.value is not None)
        return sorted(out, key=lambda r: (r[0], r[1]))
    finally:
        await consumer.stop()


def read_all(bootstrap: str, topic: str) -> list[tuple[int, int, bytes]]:
    return asyncio.run(read_all_async(bootstrap, topic))

