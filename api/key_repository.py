"""All SQL about API keys (table `api_keys`, migration 0004), and nothing else.

Rows are versioned (ReplacingMergeTree(version), read with FINAL): a revocation inserts the key's
row again with `revoked_at` set and a higher version, so it is an append that any number of API
processes see, never an in-place update. `version` is wall-clock nanoseconds, bumped past the
stored one, so a revocation always wins even against a clock that stepped back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from ipaddress import ip_network
from typing import Any

from api.keys import ApiKeyRecord
from infra.store.repository import ClickHouseRepository

_COLUMNS = (
    "key_id",
    "account",
    "key_hash",
    "scopes",
    "allowed_cidrs",
    "label",
    "created_at",
    "revoked_at",
    "version",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM api_keys FINAL"

_BY_ID_SQL = _SELECT + " WHERE key_id = {key_id:String} LIMIT 1"
_LIST_SQL = (
    _SELECT
    + " WHERE ({account:String} = '' OR account = {account:String})"
    + " AND ({include_revoked:UInt8} = 1 OR revoked_at IS NULL)"
    + " ORDER BY account, created_at, key_id"
)


def _now_ms() -> datetime:
    """Now at the column's precision (DateTime64(3)), so what we return is what is stored."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record(row: Sequence[Any]) -> tuple[ApiKeyRecord, int]:
    key_id, account, key_hash, scopes, cidrs, label, created_at, revoked_at, version = row
    record = ApiKeyRecord(
        key_id=key_id,
        account=account,
        key_hash=key_hash,
        scopes=tuple(scopes),
        allowed_networks=tuple(ip_network(c, strict=False) for c in cidrs),
        label=label,
        created_at=_utc(created_at),
        revoked_at=_utc(revoked_at),
    )
    return record, int(version)


class ApiKeyRepository(ClickHouseRepository):
    def get(self, key_id: str) -> ApiKeyRecord | None:
        rows = self._rows(_BY_ID_SQL, {"key_id": key_id})
        return _record(rows[0])[0] if rows else None

    def list_keys(self, account: str | None = None, include_revoked: bool = False) -> list[ApiKeyRecord]:
        rows = self._rows(_LIST_SQL, {"account": account or "", "include_revoked": int(include_revoked)})
        return [_record(row)[0] for row in rows]

    def _write(self, record: ApiKeyRecord, version: int) -> None:
        client = self._client()
        with self._translate_errors():
            client.insert(
                "api_keys",
                [
                    [
                        record.key_id,
                        record.account,
                        record.key_hash,
                        list(record.scopes),
                        [str(n) for n in record.allowed_networks],
                        record.label,
                        record.created_at or _now_ms(),
                        record.revoked_at,
                        version,
                    ]
                ],
                column_names=list(_COLUMNS),
            )

    def insert(self, record: ApiKeyRecord) -> None:
        if self.get(record.key_id) is not None:
            # 64 random bits make this practically impossible; refusing keeps a key from being replaced.
            raise ValueError(f"key id {record.key_id} exists already")
        self._write(record, time.time_ns())

    def revoke(self, key_id: str, at: datetime | None = None) -> ApiKeyRecord | None:
        """The key's row after revocation (unchanged if it was revoked already); None if unknown."""
        rows = self._rows(_BY_ID_SQL, {"key_id": key_id})
        if not rows:
            return None
        record, version = _record(rows[0])
        if record.revoked:
            return record
        revoked = ApiKeyRecord(
            key_id=record.key_id,
            account=record.account,
            key_hash=record.key_hash,
            scopes=record.scopes,
            allowed_networks=record.allowed_networks,
            label=record.label,
            created_at=record.created_at,
            revoked_at=at or _now_ms(),
        )
        self._write(revoked, max(time.time_ns(), version + 1))
        return revoked
