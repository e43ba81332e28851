"""Batched, idempotent writes of stream events into ClickHouse.

Idempotency: every table is a ReplacingMergeTree keyed by the event's identity (trade id,
candle open time with a revision version), so a batch written twice (a crash between the
insert and the offset commit, a replayed topic) collapses to one row per key; readers use
FINAL. Inserts go through Arrow (the fastest path clickhouse-connect has: ~1.2M rows/s, see
docs/architecture.md) on one dedicated thread, so the event loop never blocks and the client
is only ever used from the thread that made it.

The Arrow rows of each table are built by the codec of the topic that feeds it
(`schemas.codecs`), next to the format they decode; the names below are those builders, kept
where the sink agents import them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from schemas.codecs import book_top, candles, dead_letters, quality, trades
from schemas.codecs.envelope import DEC, DEC_LIST, TS, event_id

__all__ = [
    "DEC", "DEC_LIST", "TS", "ClickHouseSink", "book_snapshots_table", "candles_table", "dead_letters_table",
    "event_id", "quality_table", "trades_table", "trades_table_from_raw",
]

trades_table = trades.table  # from decoded batches: the careful path
trades_table_from_raw = trades.table_from_raw  # straight from trade_batch.v1 bytes: the fast path
candles_table = candles.table
quality_table = quality.table
dead_letters_table = dead_letters.table
book_snapshots_table = book_top.table


class ClickHouseSink:
    """Owns one client on one thread; `await sink.insert(table_name, arrow_table)`."""

    def __init__(self, client_factory: Callable[[], Client]):
        self._factory = client_factory
        self._client: Client | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-sink")
        self.rows_written: dict[str, int] = {}
        self.failed_inserts: dict[str, int] = {}

    def _insert_sync(self, table: str, data: pa.Table) -> int:
        if self._client is None:
            self._client = self._factory()
        self._client.insert_arrow(table, data)
        return data.num_rows

    async def insert(self, table: str, data: pa.Table) -> int:
        if data.num_rows == 0:
            return 0
        loop = asyncio.get_running_loop()
        try:
            n = await loop.run_in_executor(self._pool, self._insert_sync, table, data)
        except Exception:
            self.note_failure(table)
            raise
        self.rows_written[table] = self.rows_written.get(table, 0) + n
        return n

    def note_insert(self, table: str, rows: int, seconds: float) -> None:
        """Count rows another process stored into `table` for this sink (the trade store's)."""
        self.rows_written[table] = self.rows_written.get(table, 0) + rows

    def note_failure(self, table: str) -> None:
        """Count an insert into `table` that failed (here, or in the trade store's process); the
        sink agents try it again (`streams.runtime.retrying.until_done`)."""
        self.failed_inserts[table] = self.failed_inserts.get(table, 0) + 1

    def _query_sync(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        if self._client is None:
            self._client = self._factory()
        return [tuple(r) for r in self._client.query(sql, parameters=parameters).result_rows]

    async def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Reads on the sink's own thread and client (workers keep a little state here)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._query_sync, sql, parameters)

    def close(self) -> None:
        def _close() -> None:
            if self._client is not None:
                self._client.close()

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)
