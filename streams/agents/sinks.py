"""Sink agents: raw and derived topics -> ClickHouse, in batches by size and by time, each
batch acknowledged only after its insert (`streams.runtime.batch_sink`)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from schemas.codecs import candles, dead_letters, portfolio, quality, trades
from schemas.codecs.envelope import WireError
from schemas.codecs.trades import TradeRow
from streams.agents.candles import DeadLetterEmitter, dead_letter_for
from streams.runtime.batch_sink import Agent, BatchSink, Observe, TableSink, batch_agent, model_rows
from streams.sinks.clickhouse import ClickHouseSink


def _trades(values: Sequence[bytes]) -> pa.Table:
    try:
        return trades.table_from_raw(values)
    except Exception:  # something malformed in the batch: the careful path keeps the rest
        batches: list[tuple[str, str, list[TradeRow]]] = []
        for raw in values:
            try:
                batches.append(trades.decode(raw))
            except WireError:
                continue  # the candles agent dead-letters it; one report per message is enough
        return trades.table(batches)


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
        await self.sink.insert("candles", candles.table(rows))


# `observe`: the worker's metrics hook, told each batch's size and write time (None: no metrics).


def make_trade_sink(sink: ClickHouseSink, batch: int, within: float, observe: Observe | None = None) -> Agent:
    return batch_agent(TableSink(sink, lambda values: [("trades", _trades(values))]), batch, within, observe)


def make_candle_sink(sink: ClickHouseSink, batch: int, within: float, dead_letter: DeadLetterEmitter,
                     source: str, observe: Observe | None = None) -> Agent:
    return batch_agent(CandleSink(sink, dead_letter, source), batch, within, observe)


def make_portfolio_event_sink(sink: ClickHouseSink, batch: int, within: float,
                              observe: Observe | None = None) -> Agent:
    """pf.events.v1 -> `portfolio_events`: the projection that `entasis portfolio rebuild` refills."""
    return batch_agent(TableSink(sink, lambda values: [("portfolio_events", portfolio.events_table(values))]),
                       batch, within, observe)


def make_quality_sink(sink: ClickHouseSink, batch: int, within: float, observe: Observe | None = None) -> Agent:
    return batch_agent(TableSink(sink, model_rows(quality.CODEC, "quality_events", quality.table)), batch, within,
                       observe)


def make_dead_letter_sink(sink: ClickHouseSink, batch: int, within: float, observe: Observe | None = None) -> Agent:
    rows = model_rows(dead_letters.CODEC, "dead_letters", dead_letters.table)
    return batch_agent(TableSink(sink, rows), batch, within, observe)
