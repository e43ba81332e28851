"""Steps the integration tests share: prepare a namespace and database, run a worker, wait."""

from __future__ import annotations

import time
from collections.abc import Callable

from infra.cli.topics import create_topics
from infra.config.settings import Settings
from infra.store.clickhouse import ensure_database, make_client
from infra.store.migrate import apply_migrations


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


def wait_stable(read: Callable[[], object], quiet_s: float, timeout_s: float, what: str) -> object:
    """Wait until `read()` stops changing for `quiet_s` (the pipeline has nothing in flight)."""
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
