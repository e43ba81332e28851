"""Sink agents: raw and derived topics -> ClickHouse, in batches by size and by time, each
batch acknowledged only after its insert (`streams.runtime.batch_sink`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from schemas.codecs import candles, dead_letters, portfolio, quality, trades
from schemas.codecs.envelope import WireError
from streams.agents.candles import DeadLetterEmitter, dead_letter_for
from streams.core.portfolio import event_signed
from streams.runtime.batch_sink import (
    Agent,
    BatchSink,
    Observe,
    TableSink,
    batch_agent,
    insert_until_stored,
    model_rows,
)
from streams.runtime.retrying import until_done
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.trade_store import TradeStoreProcess

log = logging.getLogger(__name__)


class CandleSink(BatchSink):
    """Candles -> `candles`; a value that is not a valid candle.v1 is dead-lettered (one bad
    candle must not fail the insert of the batch around it)."""

    def __init__(self, sink: ClickHouseSink, dead_letter: DeadLetterEmitter, source: str) -> None:
        self.sink, self.dead_letter, self.source = sink, dead_letter, source

    async def write(self, values: Sequence[bytes]) -> None:
        rows = []
        for raw in values:
            try:
                rows.append(candles.decode(raw).model_dump(mode="json"))
            except WireError as exc:
                await self.dead_letter(dead_letter_for(raw, self.source, exc))
        await insert_until_stored(self.sink, "candles", candles.table(rows))


# `observe`: the worker's metrics hook, told each batch's size and write time (None: no metrics).


class ProcessTradeSink(BatchSink):
    """md.trades.v1 -> `trades`, the rows built and inserted by the trade store's process
    (`streams.sinks.trade_store`); the batch is acknowledged once that process has stored it, as
    in process. `sink` only counts what was stored (rows and insert time, for the metrics)."""

    def __init__(self, trade_store: TradeStoreProcess, sink: ClickHouseSink) -> None:
        self.trade_store, self.sink = trade_store, sink

    async def write(self, values: Sequence[bytes]) -> None:
        started = time.perf_counter()
        rows = await until_done(lambda: self.trade_store.store(values), f"storing {len(values)} trade messages",
                                lambda: self.sink.note_failure("trades"))
        self.sink.note_insert("trades", rows, time.perf_counter() - started)


def make_trade_sink(sink: ClickHouseSink, batch: int, within: float, observe: Observe | None = None,
                    store: TradeStoreProcess | None = None) -> Agent:
    """`store`: build and insert the rows in that process (the worker's default with its own
    database); None: here, on the sink's thread (tests, a client factory of the caller's)."""
    if store is not None:
        return batch_agent(ProcessTradeSink(store, sink), batch, within, observe)
    return batch_agent(TableSink(sink, lambda values: [("trades", trades.table_for_sink(values))]), batch, within,
                       observe)


def make_candle_sink(sink: ClickHouseSink, batch: int, within: float, dead_letter: DeadLetterEmitter,
                     source: str, observe: Observe | None = None) -> Agent:
    return batch_agent(CandleSink(sink, dead_letter, source), batch, within, observe)


class PortfolioEventSink(BatchSink):
    """pf.events.v1 -> `portfolio_events`, only what the portfolio agent signed: the broker takes
    any local producer's message, and a stored forged event would show balances and positions no
    agent decided. An unsigned or wrongly signed one is counted (`forged`), logged and, with a
    `dead_letter` emitter, dead-lettered with its raw bytes (once per delivery: the sink's consumer
    group reads each message once, where the agent's rebuilds would report it at every restart)."""

    def __init__(self, sink: ClickHouseSink, signing_key: bytes, dead_letter: DeadLetterEmitter | None = None,
                 source: str = "pf.events") -> None:
        self.sink, self.signing_key, self.dead_letter, self.source = sink, signing_key, dead_letter, source
        self.forged = 0

    async def write(self, events: Sequence[Any]) -> None:
        """Store one batch of Faust events (value, key and headers of each message)."""
        values = []
        for event in events:
            raw = event.value
            if event_signed(self.signing_key, event.key, raw, event.headers):
                values.append(raw)
                continue
            self.forged += 1
            log.warning("portfolio event on %s without the agent's signature: not stored", self.source)
            if self.dead_letter is not None:
                await self.dead_letter(dead_letter_for(raw, self.source, "portfolio event without a valid signature"))
        await insert_until_stored(self.sink, "portfolio_events", portfolio.events_table(values))


def make_portfolio_event_sink(sink: ClickHouseSink, batch: int, within: float,
                              observe: Observe | None = None, *, signing_key: bytes | None = None,
                              dead_letter: DeadLetterEmitter | None = None, source: str = "pf.events") -> Agent:
    """pf.events.v1 -> `portfolio_events`: the projection that `entasis portfolio rebuild` refills.
    `signing_key`: the portfolio agent's (None: the process settings', `portfolio_signing_key`)."""
    if signing_key is None:
        from infra.config.settings import get_settings, portfolio_signing_key

        signing_key = portfolio_signing_key(get_settings())
    return portfolio_event_sink_agent(PortfolioEventSink(sink, signing_key, dead_letter, source), batch, within,
                                      observe)


def portfolio_event_sink_agent(writer: PortfolioEventSink, batch: int, within: float,
                               observe: Observe | None = None) -> Agent:
    """The agent body feeding `writer` (whose `forged` count the worker's metrics read) events, not
    values: the signature travels in the headers."""
    return batch_agent(writer, batch, within, observe, events=True)


def make_quality_sink(sink: ClickHouseSink, batch: int, within: float, observe: Observe | None = None) -> Agent:
    return batch_agent(TableSink(sink, model_rows(quality.CODEC, "quality_events", quality.table)), batch, within,
                       observe)


def make_dead_letter_sink(sink: ClickHouseSink, batch: int, within: float, observe: Observe | None = None) -> Agent:
    rows = model_rows(dead_letters.CODEC, "dead_letters", dead_letters.table)
    return batch_agent(TableSink(sink, rows), batch, within, observe)
