"""Sink agents: raw and derived topics -> ClickHouse, in batches by size and by time.

Faust's `take` acknowledges a batch only after the loop body returns, i.e. after the
insert: a crash in between re-delivers the batch, which the idempotent tables absorb."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import orjson
import pyarrow as pa
from pydantic import BaseModel

from schemas.events import DeadLetter, QualityEvent
from schemas.wire import TradeRow, WireError, decode_trade_batch
from streams.agents.candles import DeadLetterEmitter, dead_letter_for
from streams.sinks.clickhouse import (
    ClickHouseSink,
    candles_table,
    dead_letters_table,
    quality_table,
    trades_table,
    trades_table_from_raw,
)
from streams.sinks.portfolio import portfolio_events_table

Agent = Callable[[Any], Coroutine[Any, Any, None]]
M = TypeVar("M", bound=BaseModel)


def make_trade_sink(sink: ClickHouseSink, batch: int, within: float) -> Agent:
    async def trade_sink(stream: Any) -> None:
        async for values in stream.take(batch, within=within):
            await sink.insert("trades", _trades(values))

    return trade_sink


def _trades(values: Sequence[bytes]) -> pa.Table:
    try:
        return trades_table_from_raw(values)
    except Exception:  # something malformed in the batch: the careful path keeps the rest
        batches: list[tuple[str, str, list[TradeRow]]] = []
        for raw in values:
            try:
                batches.append(decode_trade_batch(raw))
            except WireError:
                continue  # the candles agent dead-letters it; one report per message is enough
        return trades_table(batches)


def make_candle_sink(sink: ClickHouseSink, batch: int, within: float, dead_letter: DeadLetterEmitter,
                     source: str) -> Agent:
    async def candle_sink(stream: Any) -> None:
        async for values in stream.take(batch, within=within):
            candles = []
            for raw in values:
                try:
                    candles.append(orjson.loads(raw))
                except orjson.JSONDecodeError as exc:
                    await dead_letter(dead_letter_for(raw, source, exc))
            await sink.insert("candles", candles_table(candles))

    return candle_sink


def make_event_sink(sink: ClickHouseSink, batch: int, within: float, model: type[M], table: str,
                    to_arrow: Callable[[Sequence[M]], pa.Table]) -> Agent:
    """A sink for a derived topic of one event model (quality events, dead letters, ...)."""

    async def event_sink(stream: Any) -> None:
        async for values in stream.take(batch, within=within):
            events = []
            for raw in values:
                try:
                    events.append(model.model_validate_json(raw))
                except ValueError:
                    continue  # not ours to judge twice; the topic keeps the bytes
            await sink.insert(table, to_arrow(events))

    return event_sink


def make_portfolio_event_sink(sink: ClickHouseSink, batch: int, within: float) -> Agent:
    """pf.events.v1 -> `portfolio_events`: the projection that `entasis portfolio rebuild` refills."""

    async def portfolio_event_sink(stream: Any) -> None:
        async for values in stream.take(batch, within=within):
            await sink.insert("portfolio_events", portfolio_events_table(values))

    return portfolio_event_sink


def make_quality_sink(sink: ClickHouseSink, batch: int, within: float) -> Agent:
    return make_event_sink(sink, batch, within, QualityEvent, "quality_events", quality_table)


def make_dead_letter_sink(sink: ClickHouseSink, batch: int, within: float) -> Agent:
    return make_event_sink(sink, batch, within, DeadLetter, "dead_letters", dead_letters_table)
