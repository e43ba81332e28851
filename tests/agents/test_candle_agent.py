"""The candles agent in Faust's test context: decoded batches in, candles and dead letters out."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from infra.config.settings import Settings
from schemas.events import Candle, DeadLetter, QualityEvent, Side, Trade
from schemas.wire import TradeRow, encode_trade_batch
from streams.app import build_worker
from streams.core.checkpoint import MemoryCheckpointStore
from tests.shared_data import raw_spot_trades, reference_candles

MIN = 60 * 10**9


def _no_client():  # the candle agent never touches the database
    raise AssertionError("no database in this test")


@pytest.fixture
def worker_parts():
    candles: list[Candle] = []
    letters: list[DeadLetter] = []
    quality: list[QualityEvent] = []

    async def emit(c: Candle) -> None:
        candles.append(c)

    async def dead(d: DeadLetter) -> None:
        letters.append(d)

    async def report(q: QualityEvent) -> None:
        quality.append(q)

    settings = Settings(worker_id="test-candles", candle_lateness_ms=0, kafka_bootstrap="127.0.0.1:1")
    store = MemoryCheckpointStore()
    worker = build_worker(settings, client_factory=_no_client, candle_emitter=emit, quality_emitter=report,
                          dead_letter_emitter=dead, checkpoint_store=store)
    return worker, candles, letters, quality, store


def spot_trades() -> list[Trade]:
    return [
        Trade(venue="binance", symbol="ETH-USDT", trade_id=str(t["t"]), price=Decimal(t["p"]), size=Decimal(t["q"]),
              side=Side.SELL if t["m"] else Side.BUY, event_ts_ns=t["T"] * 10**6, recv_ts_ns=t["T"] * 10**6)
        for t in raw_spot_trades()
    ]


KEY = b"binance:ETH-USDT"


def batches(trades: list[Trade], size: int = 100) -> list[bytes]:
    return [encode_trade_batch("binance", "ETH-USDT", trades[i : i + size]) for i in range(0, len(trades), size)]


async def feed(worker, messages: list[bytes]) -> None:
    """Put messages through the agent in Faust's test context, and wait until it took them."""
    start = worker.candle_state.messages
    async with worker.agents["candles"].test_context() as agent:
        for value in messages:
            await agent.put(value, key=KEY, wait=False)
        for _ in range(1000):
            if worker.candle_state.messages - start == len(messages):
                break
            await asyncio.sleep(0.01)
    assert worker.candle_state.messages - start == len(messages)


def as_rows(candles: list[Candle], interval: str) -> list[tuple[str, ...]]:
    return [(format(c.open, "f"), format(c.high, "f"), format(c.low, "f"), format(c.close, "f"),
             format(c.volume, "f"), str(c.trades)) for c in candles if c.interval.value == interval]


def rolled_up_reference(minutes_per_bucket: int) -> list[tuple[str, ...]]:
    """Higher-interval oracle: the reference 1m rows rolled up by hand (first open, max high,
    min low, last close, summed volume and count), independent of the candle code."""
    buckets: dict[str, list[dict[str, str]]] = {}
    for row in reference_candles():
        minute = int(row["minute_start_utc_iso"][14:16])
        key = row["minute_start_utc_iso"][:14] + f"{minute - minute % minutes_per_bucket:02d}"
        buckets.setdefault(key, []).append(row)
    return [(rows[0]["open"], max(rows, key=lambda r: Decimal(r["high"]))["high"],
             min(rows, key=lambda r: Decimal(r["low"]))["low"], rows[-1]["close"],
             format(sum(Decimal(r["volume"]) for r in rows), "f"), str(sum(int(r["trades"]) for r in rows)))
            for rows in buckets.values()]


async def test_agent_emits_reference_candles_of_every_interval_and_dead_letters_garbage(worker_parts) -> None:
    worker, candles, letters, quality, _ = worker_parts
    await feed(worker, [b"{not json", *batches(spot_trades())])
    reference = [(r["open"], r["high"], r["low"], r["close"], r["volume"], r["trades"]) for r in reference_candles()]
    # every minute but the last closed; the last is still open (no later trade passed it)
    assert as_rows(candles, "1m") == reference[:-1]
    # 5m: 23:50 (one minute of data), 23:55 and 00:00 closed; 00:05 still open
    assert as_rows(candles, "5m") == rolled_up_reference(5)[:-1]
    assert as_rows(candles, "1h") == rolled_up_reference(60)[:-1]  # 23:00 closed at midnight
    assert all(c.revision == 0 and c.is_final for c in candles)
    assert letters[0].raw_hex == b"{not json".hex() and worker.candle_state.dead_letters == 1
    assert quality == []


async def test_duplicates_and_late_trades_become_quality_events_not_candle_changes(worker_parts) -> None:
    worker, candles, _, quality, _ = worker_parts
    trades = spot_trades()
    first_minute = [t for t in trades if t.event_ts_ns < trades[0].event_ts_ns - trades[0].event_ts_ns % MIN + MIN]
    messages = batches(trades)
    late = Trade(venue="binance", symbol="ETH-USDT", trade_id="late-1", price=Decimal("1"), size=Decimal("5"),
                 side=Side.BUY, event_ts_ns=first_minute[3].event_ts_ns, recv_ts_ns=trades[-1].recv_ts_ns)
    # a re-sent recent batch (the exchange repeating itself) and one trade for a minute long final
    await feed(worker, [*messages, messages[-2], encode_trade_batch("binance", "ETH-USDT", [late])])
    reference = [(r["open"], r["high"], r["low"], r["close"], r["volume"], r["trades"]) for r in reference_candles()]
    assert as_rows(candles, "1m") == reference[:-1]  # neither the re-sent batch nor the late trade counted
    kinds = [(q.kind.value, q.detail["count"]) for q in quality]
    assert kinds == [("duplicate_trade", 100), ("late_trade", 1)]
    assert quality[1].detail["trade_ids"] == ["late-1"] and quality[1].event_ts_ns == late.event_ts_ns


async def test_restart_from_checkpoint_emits_exactly_what_an_uninterrupted_run_does(worker_parts) -> None:
    messages = batches(spot_trades(), size=50)

    async def run(parts_list) -> list[tuple[str, int, int]]:
        emitted = []
        for worker, candles, _, _, _, chunk in parts_list:
            await feed(worker, chunk)
            emitted += [(c.interval.value, c.open_ts_ns, c.revision, c.model_dump_json()) for c in candles]
        return sorted(set(emitted))

    def fresh(store: MemoryCheckpointStore):
        candles: list[Candle] = []

        async def emit(c: Candle) -> None:
            candles.append(c)

        async def ignore(_: object) -> None:
            return None

        settings = Settings(worker_id="t", candle_lateness_ms=0, kafka_bootstrap="127.0.0.1:1",
                            checkpoint_every_s=0.000001)
        worker = build_worker(settings, client_factory=_no_client, candle_emitter=emit, quality_emitter=ignore,
                              dead_letter_emitter=ignore, checkpoint_store=store)
        return worker, candles

    whole_store = MemoryCheckpointStore()
    w, c = fresh(whole_store)
    uninterrupted = await run([(w, c, None, None, None, messages)])

    store = MemoryCheckpointStore()
    w1, c1 = fresh(store)
    w2, c2 = fresh(store)  # a new process: nothing but the stored checkpoint survives
    cut = len(messages) * 3 // 5
    # the restarted worker is handed everything again from the start, as Kafka would after
    # a crash before any commit: it must skip what its checkpoint already covers
    restarted = await run([(w1, c1, None, None, None, messages[:cut]), (w2, c2, None, None, None, messages)])
    assert store.saves > 0 and restarted == uninterrupted
    assert len(c2) < len(uninterrupted)  # the second worker re-emitted only what came after the checkpoint




async def test_tick_closes_a_quiet_streams_windows_and_marks_the_feed_stale() -> None:
    from streams.agents.candles import CandleAgentState, CandleConfig, on_tick
    from streams.agents.quality import StaleFeedMonitor, StreamClock

    now = [100.0]
    store = MemoryCheckpointStore()
    state = CandleAgentState(CandleConfig(intervals=("1m",), idle_timeout_s=10.0, checkpoint_every_s=1.0), store,
                             "md.trades.v1", clock=lambda: now[0])
    emitted: list[Candle] = []

    async def emit(c: Candle) -> None:
        emitted.append(c)

    async def ack(event: object) -> None:
        return None

    state.ack = ack
    partition = type("TP", (), {"partition": 0})()
    slot = await state.slot("binance:ETH-USDT", partition)
    stream = slot.state
    everything = spot_trades()
    trades = [t for t in everything if t.event_ts_ns < everything[0].event_ts_ns + 20 * 10**9]

    stream.handle([TradeRow(t.trade_id, t.price, t.size, t.side.value, t.event_ts_ns, t.recv_ts_ns)
                   for t in trades], now[0])
    state.dirty.add("binance:ETH-USDT")

    now[0] += 5  # quiet, but not for long: nothing closes
    await on_tick(state, emit)
    assert emitted == [] and store.saves == 1  # the changed state was checkpointed
    now[0] += 60  # a minute of silence: event time must have passed the first minute's end
    await on_tick(state, emit)
    assert [(c.interval.value, c.trades) for c in emitted] == [("1m", len(trades))]
    assert store.saves == 2

    monitor = StaleFeedMonitor(stale_after_s=30.0)
    clock = StreamClock("binance", "ETH-USDT", stream.last_trade_wall, stream.max_event_ts_ns)
    events = monitor.check([("binance:ETH-USDT", clock)], now[0])
    assert [(e.kind.value, e.event_ts_ns) for e in events] == [("stale_feed", trades[-1].event_ts_ns)]
    assert monitor.check([("binance:ETH-USDT", clock)], now[0] + 1) == []  # reported once
    clock.last_wall = now[0] + 2
    assert [e.kind.value for e in monitor.check([("binance:ETH-USDT", clock)], now[0] + 3)] == ["feed_connected"]
    assert StaleFeedMonitor(stale_after_s=0).check([("binance:ETH-USDT", clock)], now[0] + 999) == []
