"""The risk agent in Faust's test context, fed recorded Bitstamp BTC/USD hourly candles as the
candle agent publishes them: estimates equal the core's, only final candles of the configured
interval count, re-deliveries change nothing, and a restarted worker that rebuilds from the
stored candles publishes byte-identical estimates."""

from __future__ import annotations

import asyncio
import csv
import itertools
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import faust
import pyarrow as pa
import pytest

from infra.config.settings import Settings
from schemas.codecs.risk import table as risk_table
from schemas.events import Candle, Interval
from schemas.risk import RiskEstimate, RiskMethod
from schemas.wire import encode_event
from streams.agents.risk import (
    RiskAgentConfig,
    RiskWiring,
    decode_candle,
    register_risk_agents,
)
from streams.core.risk import RollingRisk
from streams.sinks.clickhouse import ClickHouseSink
from tests.shared_data import DATA

HOUR = 3600 * 10**9
KEY = b"bitstamp:BTC-USD"
_app_ids = itertools.count()


def hourly_candles(count: int, start: int = 0) -> list[Candle]:
    with (DATA / "history" / "bitstamp_btcusd_1h.csv").open() as f:
        rows = list(itertools.islice(csv.DictReader(f), start, start + count))
    out = []
    for r in rows:
        open_ns = int(datetime.fromisoformat(r["timestamp_utc_iso"].replace("Z", "+00:00")).timestamp()) * 10**9
        out.append(Candle(
            venue="bitstamp", symbol="BTC-USD", interval=Interval.H1, open_ts_ns=open_ns,
            open=Decimal(r["open"]), high=Decimal(r["high"]), low=Decimal(r["low"]), close=Decimal(r["close"]),
            volume=Decimal(r["volume"]), trades=1, first_trade_id="f", last_trade_id="l", revision=0, is_final=True,
            event_ts_ns=open_ns + HOUR - 1, recv_ts_ns=open_ns + HOUR + 5_000_000,
        ))
    return out


def _no_client() -> Any:
    raise AssertionError("no database in this test")


class Harness:
    """One worker: the risk agent with captured estimates and an in-memory candle store."""

    def __init__(self, settings: dict[str, Any], stored: Sequence[Candle] = (), away: int = 0) -> None:
        """`away`: the store's first loads fail (the database is away)."""
        self.published: list[RiskEstimate] = []
        self.away = away
        self.loads: list[tuple[str, str, str, int, int]] = []
        app = faust.App(f"t-risk-{next(_app_ids)}", broker="kafka://127.0.0.1:1", value_serializer="raw",
                        key_serializer="raw", store="memory://")

        async def emit(e: RiskEstimate) -> None:
            self.published.append(e)

        async def loader(venue: str, symbol: str, interval: str, before_ns: int, limit: int
                         ) -> list[tuple[int, Decimal]]:
            if self.away > 0:
                self.away -= 1
                raise ConnectionError("database down")
            self.loads.append((venue, symbol, interval, before_ns, limit))
            rows = [(c.open_ts_ns, c.close) for c in stored
                    if (c.venue, c.symbol, c.interval.value) == (venue, symbol, interval) and c.is_final
                    and c.open_ts_ns < before_ns]
            return rows[-limit:]

        self.wiring: RiskWiring = register_risk_agents(
            app, Settings(**settings), candle_topic=app.topic("t.candles"), risk_topic=app.topic("t.risk"),
            sink=ClickHouseSink(_no_client), emit_risk=emit, loader=loader)

    async def run(self, messages: Sequence[bytes]) -> None:
        state = self.wiring.state

        def outcomes() -> int:
            # A message is counted as read before its fold (streams/runtime/decoded.py), and the
            # fold runs in a thread: waiting on `messages` could close the agent before the last
            # candle's estimates were emitted. An outcome is counted once the fold has returned,
            # and this test's emit appends without yielding, so every counted one is published.
            return state.folded + state.skipped + state.malformed + state.redelivered

        start, done = state.messages, outcomes()
        async with self.wiring.agents["risk"].test_context() as agent:
            for raw in messages:
                await agent.put(raw, key=KEY, wait=False)
            for _ in range(3000):
                if outcomes() - done == len(messages):
                    break
                await asyncio.sleep(0.01)
        assert state.messages - start == len(messages)
        assert outcomes() - done == len(messages)


SMALL: dict[str, Any] = {
    "risk_window_days": 3, "risk_min_days": 1, "risk_methods": "historical,parametric,parametric_t,ewma",
}


async def test_estimates_equal_the_core_and_only_final_candles_of_the_interval_count() -> None:
    candles = hourly_candles(24 * 5)
    h = Harness(SMALL)
    minute = candles[0].model_copy(update={"interval": Interval.M1})
    revision = candles[30].model_copy(update={"close": Decimal("1"), "is_final": False})
    messages = [encode_event(c) for c in candles[:30]]
    messages += [b"{not json", encode_event(minute), encode_event(revision)]
    messages += [encode_event(c) for c in candles[30:]]
    messages += [encode_event(candles[50]), encode_event(candles[-1])]  # re-deliveries
    await h.run(messages)
    state = h.wiring.state
    assert (state.folded, state.skipped, state.malformed, state.redelivered) == (len(candles), 2, 1, 2)

    core = RollingRisk(RiskAgentConfig(window_days=3, min_days=1).core("1h"))
    methods = [RiskMethod(m) for m in SMALL["risk_methods"].split(",")]
    expected = []
    for c in candles:
        core.update(c.open_ts_ns, float(c.close))
        for m in methods:
            est = core.estimate(m)
            if est is not None:
                expected.append((c.open_ts_ns + HOUR, m, est.var, est.es, est.volatility))
    got = [(e.event_ts_ns, e.method, float(e.var_95), float(e.expected_shortfall), float(e.volatility))
           for e in h.published]
    # from 30 returns on (the minimum), historical from 20 overlapping one-day returns (43 returns)
    assert len(got) == len(expected) == 3 * (len(candles) - 30) + (len(candles) - 43)
    for g, x in zip(got, expected, strict=True):
        assert g[:2] == x[:2] and g[2:] == pytest.approx(x[2:], abs=1.5e-8)
    last = h.published[-1]
    assert last.price == candles[-1].close and last.recv_ts_ns == candles[-1].recv_ts_ns
    assert last.window == 72 and last.interval is Interval.H1
    assert all(e.expected_shortfall >= e.var_95 > 0 for e in h.published)


@pytest.mark.parametrize("away", [0, 3])
async def test_a_restarted_worker_rebuilds_from_stored_candles_and_publishes_the_same_bytes(
        away: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker 1 runs through everything. Worker 2 crashes after `cut` candles; worker 3 is a new
    process: the broker re-delivers from a few candles before the cut (the uncommitted tail),
    the store holds the candles up to the cut. Worker 3's estimates are worker 1's, byte for
    byte, GARCH included (refitted at the same midnight on the same returns). `away`: worker 3's
    first reads of the store fail, and its rebuild waits for the database."""
    from streams.runtime import retrying

    monkeypatch.setattr(retrying, "RETRY_FIRST_S", 0.001)
    settings: dict[str, Any] = {"risk_window_days": 12, "risk_min_days": 2, "risk_garch_min_returns": 200}
    candles = hourly_candles(24 * 16 + 9, start=5000)
    messages = [encode_event(c) for c in candles]

    whole = Harness(settings)
    await whole.run(messages)
    reference = {(e.event_ts_ns, e.method): encode_event(e) for e in whole.published}
    assert {e.method for e in whole.published} == set(RiskMethod)

    cut = len(candles) - 30
    crashed = Harness(settings)
    await crashed.run(messages[:cut])
    restarted = Harness(settings, stored=candles[:cut], away=away)
    await restarted.run(messages[cut - 5 :])
    state = restarted.wiring.state
    assert state.rebuilt == 1 and state.redelivered == 0 and restarted.away == 0
    assert restarted.loads == [("bitstamp", "BTC-USD", "1h", candles[cut - 5].open_ts_ns,
                                RiskAgentConfig(window_days=12).core("1h").rebuild_bars)]
    again = {(e.event_ts_ns, e.method): encode_event(e) for e in restarted.published}
    assert {m for _, m in again} == set(RiskMethod)
    assert len(again) == 35 * len(RiskMethod)
    assert again == {k: v for k, v in reference.items() if k in again}


def test_config_from_settings_and_the_candle_decoder() -> None:
    cfg = RiskAgentConfig.from_settings(Settings(risk_intervals="1h, 1d", risk_window_days=30,
                                                 risk_methods=["ewma"]))
    assert cfg.intervals == ("1h", "1d") and cfg.window_days == 30 and cfg.methods == (RiskMethod.EWMA,)
    assert RiskAgentConfig.from_settings(Settings()) == RiskAgentConfig()
    with pytest.raises(ValueError):
        RiskAgentConfig(intervals=("2h",))
    c = hourly_candles(1)[0]
    view = decode_candle(encode_event(c))
    assert (view.venue, view.symbol, view.interval, view.open_ts_ns, view.close) == (
        "bitstamp", "BTC-USD", "1h", c.open_ts_ns, c.close)
    with pytest.raises(ValueError):
        decode_candle(b'{"schema_version": "trade.v1"}')


def test_risk_rows_for_the_table() -> None:
    e = RiskEstimate(venue="binance", symbol="BTC-USDT", interval=Interval.H1, method=RiskMethod.EWMA,
                     event_ts_ns=HOUR, recv_ts_ns=HOUR + 1, price=Decimal("65000.5"), var_95=Decimal("1234.5"),
                     expected_shortfall=Decimal("1500.25"), volatility=Decimal("0.55"), window=2160)
    table = risk_table([e])
    assert table.column_names == ["venue", "symbol", "interval", "method", "as_of", "price", "var_95",
                                  "expected_shortfall", "volatility", "window", "recv_ts"]
    row = table.to_pylist()[0]
    assert row["var_95"] == Decimal("1234.50000000") and row["method"] == "ewma" and row["window"] == 2160
    assert table.schema.field("as_of").type == pa.timestamp("ns", tz="UTC")
