"""The one way every process gets a ClickHouse client.

We use clickhouse-connect everywhere: it speaks HTTP to a ClickHouse server (production)
and to the embedded owner process (infra/dev/chdb_server.py), and can open chdb in-process
(`chdb:///path`). clickhouse-driver's native protocol cannot talk to chdb at all.

Credentials: `settings.clickhouse.user/password`, or a URL's own (`http://user:password@host:port`).
The embedded owner draws a new password on every start and writes it to `<its data path>/http-password`
(mode 0600); when the URL is a loopback one and no password is configured, `make_client` reads it from
`<data_dir>/chdb/http-password`, the path `entasis db` and `entasis up` give the owner. So the processes
of the machine user who started the owner get in, with nothing to configure, and nobody else does.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from infra.config.settings import Settings

OWNER_USER = "default"
OWNER_PASSWORD_FILE = "http-password"


def owner_password_path(settings: Settings) -> Path:
    """Where the embedded owner started by `entasis db`/`entasis up` writes its password."""
    return settings.data_dir / "chdb" / OWNER_PASSWORD_FILE


def make_client(settings: Settings, database: str | None = None, **kwargs: Any) -> Client:
    """A new client (clients are not thread-safe: one per thread)."""
    return client_for_url(
        settings.clickhouse.url,
        database=database if database is not None else settings.clickhouse.database,
        user=settings.clickhouse.user,
        password=settings.clickhouse.password.get_secret_value() or _embedded_owner_password(settings),
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
    if parsed.username is not None and user == "default" and not password:  # the URL's own credentials
        user, password = unquote(parsed.username), unquote(parsed.password or "")
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


def _embedded_owner_password(settings: Settings) -> str:
    """The embedded owner's password when the URL is a loopback one and the file is there, else ""."""
    parsed = urlparse(settings.clickhouse.url)
    if parsed.scheme != "http" or parsed.password is not None or not _is_loopback(parsed.hostname):
        return ""
    try:
        return owner_password_path(settings).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _is_loopback(host: str | None) -> bool:
    if host is None or host.lower() == "localhost":
        return host is not None
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
