"""The VWAP agent in Faust's test context: recorded 1m candles in, the VWAP that numpy computes
over the same rows out, garbage counted and passed over, and the rows its sink stores."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import faust

from infra.config.settings import Settings
from schemas.codecs.vwap import table as vwap_table
from schemas.vwap import Vwap
from schemas.wire import encode_event
from streams.agents.vwap import register_vwap_agent
from streams.sinks.clickhouse import ClickHouseSink
from tests.unit.test_vwap import WINDOW, numpy_vwap, recorded_rows, to_candle


def _no_client() -> Any:
    raise AssertionError("no database in this test")


async def test_agent_publishes_the_numpy_vwap_of_each_stream_and_its_rows() -> None:
    app = faust.App("t-vwap", broker="kafka://127.0.0.1:1", value_serializer="raw", key_serializer="raw",
                    store="memory://")
    published: list[Vwap] = []

    async def emit(e: Vwap) -> None:
        published.append(e)

    agents, streams = register_vwap_agent(app, Settings(vwap_window_minutes=WINDOW),
                                          candle_topic=app.topic("t.candles.1m"), vwap_topic=app.topic("t.vwap"),
                                          sink=ClickHouseSink(_no_client), emit=emit)
    rows = recorded_rows(200)
    messages = [encode_event(to_candle(r)) for r in rows]
    messages = [*messages[:50], b"{not json", messages[20], *messages[50:]]  # garbage and a re-delivery
    async with agents["vwap"].test_context() as agent:
        for raw in messages:
            await agent.put(raw, key=b"binanceus:BTC-USDT", wait=False)
        for _ in range(1000):
            if streams.counts["messages"] == len(messages):
                break
            await asyncio.sleep(0.01)
    assert streams.counts["messages"] == len(messages) and streams.counts["malformed"] == 1

    expected = numpy_vwap(rows)
    assert [e.event_ts_ns for e in published] == [ts for ts, _, _, _ in expected]
    assert all(abs(float(e.vwap) - x) <= 1e-9 * x for e, (_, x, _, _) in zip(published, expected, strict=True))
    assert streams.counts["published"] == len(expected)

    table = vwap_table(published[:3])
    assert table.column("vwap").to_pylist() == [e.vwap for e in published[:3]]
    assert table.column("as_of").cast("int64").to_pylist() == [e.event_ts_ns for e in published[:3]]
    assert table.column("volume").to_pylist()[0] == Decimal(rows[0]["volume"])
