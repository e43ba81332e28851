"""Steps the integration tests share: prepare a namespace and database, run a worker, wait."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from infra.cli.topics import create_topics
from infra.config.settings import Settings
from infra.store.clickhouse import ensure_database, make_client
from infra.store.migrate import apply_migrations
from schemas.topics import TopicSpec
from tests.integration.topic_read import read_all


def prepare(settings: Settings) -> None:
    ensure_database(settings)
    client = make_client(settings)
    try:
        apply_migrations(client)
    finally:
        client.close()
    create_topics(settings.kafka_bootstrap, settings.topic_namespace)


def scalar(settings: Settings, sql: str, parameters: dict[str, object] | None = None) -> object:
    client = make_client(settings)
    try:
        return client.query(sql, parameters=parameters or {}).result_rows[0][0]
    finally:
        client.close()


def command(settings: Settings, sql: str) -> None:
    client = make_client(settings)
    try:
        client.command(sql)
    finally:
        client.close()


def rows(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    client = make_client(settings)
    try:
        return [tuple(r) for r in client.query(sql).result_rows]
    finally:
        client.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def topic_ends(settings: Settings, *specs: TopicSpec) -> dict[tuple[str, int], int]:
    """Each non-empty partition's end (last offset + 1), from the records themselves: the
    embedded broker's reported end can fall short of it (see topic_read)."""
    ends: dict[tuple[str, int], int] = {}
    for spec in specs:
        name = spec.full_name(settings.topic_namespace)
        for partition, offset, _ in read_all(settings.kafka_bootstrap, name):
            ends[(name, partition)] = max(ends.get((name, partition), 0), offset + 1)
    return ends


def committed(settings: Settings) -> dict[tuple[str, int], int]:
    """The worker's consumer group's committed offsets."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(settings.worker.id)],
                                                request_timeout=10)
    offsets = next(iter(futures.values())).result().topic_partitions or []
    return {(tp.topic, tp.partition): tp.offset for tp in offsets}


def drained(settings: Settings, *specs: TopicSpec) -> Callable[[], bool]:
    """True once the worker's group has committed every record of these topics. The worker
    acknowledges a record only after every agent reading it is done with it (a sink: after the
    insert of its batch, streams/runtime/batch_sink.py; the candles agent: after the broker has
    the candles it emitted, streams/runtime/emit.py), and commits only acknowledged offsets. So
    from then on nothing read from these topics is still on its way to the store, however slow
    the machine, and a count read then is final. Unlike a quiet period, a stall cannot end this
    early; and it holds across a worker restart (the group's offsets outlive the process).

    The offsets are read before the ends: with trades and candles together, trades committed at
    that moment mean every candle they made was on the broker already, so in the ends read next."""

    def check() -> bool:
        done = committed(settings)
        return all(done.get(tp, -1) >= end for tp, end in topic_ends(settings, *specs).items())

    return check


def wait_drained(settings: Settings, *specs: TopicSpec, timeout_s: float = 120.0) -> None:
    names = ", ".join(spec.name for spec in specs)
    wait_for(drained(settings, *specs), timeout_s, f"the worker's group to commit every record of {names}",
             interval_s=1.0)


def wait_stable(read: Callable[[], object], quiet_s: float, timeout_s: float, what: str) -> object:
    """Wait until `read()` stops changing for `quiet_s`. A stall longer than `quiet_s` ends it
    early: only for counts with no known final value and no topic to drain (`wait_drained`)."""
    deadline = time.monotonic() + timeout_s
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"{what} kept changing for {timeout_s:.0f}s")
