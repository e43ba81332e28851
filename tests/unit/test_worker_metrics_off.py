"""`ENTASIS_WORKER_METRICS=false` (what `bench_pipeline --metrics off|both` measures against): the
worker counts nothing per batch or per insert, while the same input with metrics on is counted
(tests/unit/test_worker_metrics.py builds the same worker the same way)."""

from __future__ import annotations

from infra.config.settings import Settings
from schemas.events import Candle, DeadLetter, QualityEvent
from streams.app import build_worker
from streams.core.checkpoint import MemoryCheckpointStore
from streams.runtime.metrics import MeteredClickHouseSink
from tests.agents.test_candle_agent import batches, feed, spot_trades
from tests.unit.test_worker_metrics import _no_client, samples


async def _fed_worker(metrics: bool) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async def emit(_: Candle) -> None:
        pass

    async def dead(_: DeadLetter) -> None:
        pass

    async def report(_: QualityEvent) -> None:
        pass

    settings = Settings(
        worker_id=f"test-metrics-{metrics}", candle_lateness_ms=0, kafka_bootstrap="127.0.0.1:1", worker_metrics=metrics
    )
    worker = build_worker(
        settings,
        client_factory=_no_client,
        candle_emitter=emit,
        quality_emitter=report,
        dead_letter_emitter=dead,
        checkpoint_store=MemoryCheckpointStore(),
    )
    assert isinstance(worker.sink, MeteredClickHouseSink) is metrics  # inserts timed only with metrics on
    await feed(worker, batches(spot_trades()))
    return samples(worker.metrics)


async def test_with_metrics_off_no_candle_message_is_observed_and_with_them_on_every_one_is() -> None:
    n = len(batches(spot_trades()))
    timed = ("entasis_worker_agent_processing_seconds_count", (("agent", "candles"),))
    on = await _fed_worker(True)
    assert on[timed] == n
    off = await _fed_worker(False)
    assert off.get(timed, 0) == 0
    # what is read at scrape time is still there: the agent counts its input messages anyway
    assert off[("entasis_worker_candle_input_messages_total", ())] == n
