"""The one way every process gets a ClickHouse client.

We use clickhouse-connect everywhere: it speaks HTTP to a ClickHouse server (production)
and to the embedded owner process (infra/dev/chdb_server.py), and can open chdb in-process
(`chdb:///path`). clickhouse-driver's native protocol cannot talk to chdb at all.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from infra.config.settings import Settings


def make_client(settings: Settings, database: str | None = None, **kwargs: Any) -> Client:
    """A new client (clients are not thread-safe: one per thread)."""
    return client_for_url(
        settings.clickhouse.url,
        database=database if database is not None else settings.clickhouse.database,
        user=settings.clickhouse.user,
        password=settings.clickhouse.password,
        **kwargs,
    )


def client_for_url(
    url: str, database: str = "default", user: str = "default", password: str = "", **kwargs: Any
) -> Client:
    if url.startswith("chdb:"):
        client = clickhouse_connect.get_client(dsn=url, **kwargs)
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        client.database = database
        return client
    parsed = urlparse(url)
    secure = parsed.scheme == "https"
    return clickhouse_connect.get_client(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or (8443 if secure else 8123),
        secure=secure,
        username=user,
        password=password,
        database=database,
        **kwargs,
    )


def ensure_database(settings: Settings) -> None:
    client = make_client(settings, database="default")
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {settings.clickhouse.database}")
    finally:
        client.close()
