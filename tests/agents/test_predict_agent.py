"""The prediction agent: candle.v1 messages in (through Faust's test context), forecasts and
outcomes out; checkpoints, restarts that replay the stored candles they missed, unusable
checkpoints, and the book-imbalance feed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import faust
import pytest

from infra.config.settings import Settings
from schemas.events import INTERVAL_NS, Candle, Interval
from schemas.prediction import ModelStatus, Prediction, PredictionOutcome
from schemas.wire import encode_event
from streams.agents.predict import (
    MemoryModelStore,
    PredictAgentConfig,
    PredictAgentState,
    PredictionEvent,
    decode_candle,
    register_predict_agent,
)
from streams.app import faust_settings
from streams.core.predict.features import Bar
from streams.sinks.clickhouse import ClickHouseSink
from tests.unit.test_predict_engine import ar1_bars

HOUR = 3600 * 10**9
T0 = 1_700_000_000 // 3600 * 3600 * 10**9
KEY = b"binance:BTC-USDT"
CONFIG = PredictAgentConfig(models=("ensemble",), horizons=("1h", "4h"), min_scored=5, min_independent=1,
                            retry_delay_s=0.0, checkpoint_every_s=3600)  # every 1h candle (the default: a day)


def bars(n: int, seed: int = 1) -> list[Bar]:
    """As the candle store would give them back: through the candle.v1 message's decimals."""
    return [decode_candle(candle(b)).bar for b in ar1_bars(0.3, n, seed=seed, start=T0)]


def candle(bar: Bar, *, interval: str = "1h", final: bool = True) -> bytes:
    """The candle agent's message for a bar; received at its close, as a replay from the store sees it."""
    step = INTERVAL_NS[interval]
    return encode_event(Candle(
        venue="binance", symbol="BTC-USDT", event_ts_ns=bar.open_ns + step - 1, recv_ts_ns=bar.open_ns + step,
        interval=Interval(interval), open_ts_ns=bar.open_ns, open=Decimal(repr(bar.open)),
        high=Decimal(repr(bar.high)), low=Decimal(repr(bar.low)), close=bar.close_exact,
        volume=Decimal(repr(bar.volume)).quantize(Decimal("0.00000001")), trades=1, first_trade_id="1",
        last_trade_id="1", revision=0, is_final=final,
    ))


class ListLoader:
    """Stored final candles: those of `bars` strictly between the two times, newest `limit`."""

    def __init__(self, stored: Sequence[Bar]) -> None:
        self.stored = list(stored)
        self.calls: list[tuple[int | None, int, int]] = []

    async def __call__(self, venue: str, symbol: str, interval: str, after_ns: int | None, before_ns: int,
                       limit: int) -> list[Bar]:
        self.calls.append((after_ns, before_ns, limit))
        found = [b for b in self.stored if (after_ns is None or b.open_ns > after_ns) and b.open_ns < before_ns]
        return found[-limit:]


async def fold_all(state: PredictAgentState, messages: Sequence[bytes]) -> list[PredictionEvent]:
    out: list[PredictionEvent] = []
    for raw in messages:
        view = decode_candle(raw)
        events = await state.fold(view)
        out += events
        if events:
            await state.checkpoint_if_due(view.venue, view.symbol)
    return out


def comparable(events: Sequence[PredictionEvent]) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for e in events]


def _no_client() -> Any:
    raise AssertionError("no database in this test")


async def test_agent_in_faust_test_context_publishes_forecasts_and_outcomes() -> None:
    app = faust.App("test-predict", **faust_settings(Settings(worker_id="test-predict", kafka_bootstrap="127.0.0.1:1")))
    published: list[PredictionEvent] = []

    async def emit(event: PredictionEvent) -> None:
        published.append(event)

    store = MemoryModelStore()
    wiring = register_predict_agent(
        app, Settings(), candle_topic=app.topic("md.candles.1h.v1"), prediction_topic=app.topic("an.predictions.v1"),
        sink=ClickHouseSink(_no_client), emit=emit, store=store, loader=ListLoader([]), config=CONFIG,
    )
    series = bars(60)
    messages = [b"{not json", candle(series[0], final=False), candle(series[0], interval="1m"),
                *(candle(b) for b in series)]
    async with wiring.agents["predict"].test_context() as agent:
        for raw in messages:
            await agent.put(raw, key=KEY, wait=False)
        # The message count moves when a message arrives, before its fold; a checkpoint is written
        # after its fold (in a thread). Both counts can agree while the last candle is still being
        # folded, so wait for every candle's fold and its checkpoint. The first prediction builds
        # the models (torch's import, seconds of CPU on a loaded machine): the wait is generous
        # and ends as soon as the work is done.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (wiring.state.messages == len(messages) and wiring.state.folded == len(series)
                    and wiring.state.checkpoints == wiring.state.folded):
                break
            await asyncio.sleep(0.01)
    state = wiring.state
    assert (state.messages, state.malformed, state.skipped, state.folded) == (63, 1, 2, 60)
    predictions = [e for e in published if isinstance(e, Prediction)]
    outcomes = [e for e in published if isinstance(e, PredictionOutcome)]
    assert len(predictions) == 60 * 2  # every candle, every horizon: a forecast or a warming-up row
    assert [p.event_ts_ns for p in predictions[::2]] == [b.open_ns + HOUR for b in series]
    assert all(p.recv_ts_ns == p.event_ts_ns for p in predictions)  # the candle's receive time, not the clock
    warm = [p for p in predictions if p.log_return is not None]
    assert len(outcomes) == sum(1 for p in warm if p.target_ts_ns <= series[-1].open_ns + HOUR)
    statuses = [p.status for p in predictions if p.horizon.value == "1h"]
    assert statuses[0] == ModelStatus.WARMING_UP and statuses[-1] == ModelStatus.READY
    ready = next(p for p in predictions if p.status == ModelStatus.READY)
    assert ready.prediction is not None and ready.confidence is not None and ready.scores.scored >= 5
    assert store.saves == 60 and state.checkpoints == 60  # an hour of event time: every 1h candle


async def test_restart_resumes_from_the_checkpoint_and_replays_the_candles_it_missed() -> None:
    series = bars(50)
    uninterrupted = PredictAgentState(CONFIG, MemoryModelStore(), ListLoader([]))
    expected = await fold_all(uninterrupted, [candle(b) for b in series])

    store = MemoryModelStore()
    before = PredictAgentState(CONFIG, store, ListLoader([]))
    first = await fold_all(before, [candle(b) for b in series[:40]])
    # The worker dies; candles 40..44 closed while it was down (the candle sink stored them).
    loader = ListLoader(series[:45])
    after = PredictAgentState(CONFIG, store, loader)
    assert await after.fold(decode_candle(candle(series[39]))) == []  # re-delivered: already in the checkpoint
    rest = await fold_all(after, [candle(b) for b in series[45:]])
    assert loader.calls == [(series[39].open_ns, series[45].open_ns, CONFIG.bootstrap_bars)]
    assert comparable(first + rest) == comparable(expected)
    assert after.replayed == 5 and after.load_failures == 0


async def test_the_database_away_for_a_checkpoint_and_a_replay_changes_no_forecast(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Both raised out of the agent before: Faust restarted it on the next candle, this one unhandled.
    from streams.runtime import retrying

    monkeypatch.setattr(retrying, "RETRY_FIRST_S", 0.001)
    series = bars(50)
    expected = await fold_all(PredictAgentState(CONFIG, MemoryModelStore(), ListLoader([])),
                              [candle(b) for b in series])

    class AwaySaves(MemoryModelStore):
        def __init__(self, away: int) -> None:
            super().__init__()
            self.away = away

        async def save(self, venue: str, symbol: str, interval: str, last_open_ns: int, blob: bytes) -> None:
            if self.away > 0:
                self.away -= 1
                raise ConnectionError("database down")
            await super().save(venue, symbol, interval, last_open_ns, blob)

    class AwayLoader(ListLoader):
        def __init__(self, stored: Sequence[Bar], away: int) -> None:
            super().__init__(stored)
            self.away = away

        async def __call__(self, venue: str, symbol: str, interval: str, after_ns: int | None, before_ns: int,
                           limit: int) -> list[Bar]:
            if self.away > 0:
                self.away -= 1
                raise ConnectionError("database down")
            return await super().__call__(venue, symbol, interval, after_ns, before_ns, limit)

    store = AwaySaves(away=3)
    before = PredictAgentState(CONFIG, store, ListLoader([]))
    first = await fold_all(before, [candle(b) for b in series[:40]])
    assert before.failed_checkpoints == 3 and store.saved[("binance", "BTC-USDT", "1h")][0] == series[39].open_ns
    loader = AwayLoader(series[:45], away=2)  # the restarted worker's replay waits for the database
    after = PredictAgentState(CONFIG, store, loader)
    rest = await fold_all(after, [candle(b) for b in series[45:]])
    assert loader.away == 0 and len(loader.calls) == 1 and after.replayed == 5
    assert comparable(first + rest) == comparable(expected)


async def test_redelivered_candles_change_nothing_after_a_restart() -> None:
    series = bars(30)
    store = MemoryModelStore()
    await fold_all(PredictAgentState(CONFIG, store), [candle(b) for b in series])
    after = PredictAgentState(CONFIG, store, ListLoader(series))
    assert await after.fold(decode_candle(candle(series[-1]))) == []
    assert await after.fold(decode_candle(candle(series[10]))) == []
    assert after.redelivered == 2 and after.replayed == 0


async def test_a_new_stream_bootstraps_from_stored_candles() -> None:
    series = bars(40)
    loader = ListLoader(series[:39])
    state = PredictAgentState(PredictAgentConfig(**{**CONFIG.__dict__, "bootstrap_bars": 30}), MemoryModelStore(),
                              loader)
    events = await fold_all(state, [candle(series[39])])
    assert loader.calls == [(None, series[39].open_ns, 30)]
    assert state.replayed == 30 and state.folded == 31
    assert {e.event_ts_ns for e in events if isinstance(e, Prediction)} == {b.open_ns + HOUR for b in series[9:]}


async def test_an_unusable_checkpoint_starts_fresh_with_load_failed_status(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryModelStore()
    await store.save("binance", "BTC-USDT", "1h", T0, b"ENTASIS-PREDICT-1\n" + b"\0" * 40)
    state = PredictAgentState(CONFIG, store)
    with caplog.at_level(logging.ERROR, logger="streams.agents.predict"):
        events = await fold_all(state, [candle(b) for b in bars(60)])
    assert state.load_failures == 1 and "start from scratch" in caplog.text and "digest" in caplog.text
    statuses = [e.status for e in events if isinstance(e, Prediction) and e.horizon.value == "1h"]
    assert statuses[0] == ModelStatus.LOAD_FAILED and statuses[-1] == ModelStatus.READY
    assert store.saved[("binance", "BTC-USDT", "1h")][0] == bars(60)[-1].open_ns  # replaced by the fresh model's


async def test_an_unreachable_store_is_retried_before_giving_up() -> None:
    class Flaky(MemoryModelStore):
        def __init__(self, failures: int) -> None:
            super().__init__()
            self.failures = failures

        async def load(self, venue: str, symbol: str, interval: str) -> bytes | None:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("database down")
            return await super().load(venue, symbol, interval)

    good = await fold_all(PredictAgentState(CONFIG, flaky := Flaky(2)), [candle(b) for b in bars(3)])
    assert flaky.failures == 0 and all(e.status != ModelStatus.LOAD_FAILED for e in good if isinstance(e, Prediction))
    down = PredictAgentState(CONFIG, Flaky(5))
    events = await fold_all(down, [candle(b) for b in bars(3)])
    assert down.load_failures == 1 and all(e.status == ModelStatus.LOAD_FAILED for e in events
                                           if isinstance(e, Prediction))


async def test_book_snapshots_feed_the_imbalance_of_their_candle() -> None:
    series = bars(30)
    state = PredictAgentState(CONFIG, MemoryModelStore())
    await fold_all(state, [candle(b) for b in series[:-1]])
    last = series[-1]
    for bid, ask in (("3", "1"), ("1", "1")):  # imbalances 0.5 and 0: mean 0.25
        state.observe_book({"venue": "binance", "symbol": "BTC-USDT", "event_ts_ns": last.open_ns + 10**9,
                            "bids": [["100", bid]], "asks": [["101", ask]]})
    state.observe_book({"venue": "binance", "symbol": "BTC-USDT", "event_ts_ns": "x"})  # malformed: counted
    await fold_all(state, [candle(last)])
    predictor = state.streams[("binance", "BTC-USDT")].predictor
    features = predictor.pending["1h"][-1].features.values
    assert features["imbalance"] == pytest.approx(0.25) and features["book"] == 1.0
    assert state.book_snapshots == 2 and state.malformed == 1


async def test_one_minute_streams_checkpoint_every_hour_of_event_time() -> None:
    minute = 60 * 10**9
    config = PredictAgentConfig(interval="1m", models=("ensemble",), horizons=("1h",), retry_delay_s=0.0,
                                checkpoint_every_s=3600)
    state = PredictAgentState(config, store := MemoryModelStore())
    series = [Bar(T0 + i * minute, b.open, b.high, b.low, b.close, b.volume, b.close_exact)
              for i, b in enumerate(bars(150))]
    await fold_all(state, [candle(b, interval="1m") for b in series])
    assert state.folded == 150 and store.saves == 3  # at the first candle, then 60 and 120 minutes later
    assert store.saved[("binance", "BTC-USDT", "1m")][0] == series[120].open_ns


def test_config_from_settings() -> None:
    config = PredictAgentConfig.from_settings(
        Settings(predict_interval="1m", predict_models="ensemble", predict_horizons="1h, 4h", predict_min_scored=50))
    assert (config.interval, config.models, config.horizons, config.min_scored) == ("1m", ("ensemble",),
                                                                                     ("1h", "4h"), 50)
    assert config.core().steps("4h") == 240
    with pytest.raises(ValueError):
        PredictAgentConfig(interval="1d")  # a 1h horizon is not a whole number of days
