"""A burst of candles (the 90 days of history a fresh `entasis up` imports) must not hold the
worker's other agents up while the risk and prediction agents fold it.

Faust delivers every message of a poll to the buffer of each agent on its topic; once a buffer
is past its pause mark (mode's `FlowControlQueue.pressure_high_size`, 80 % of it) Faust stops
fetching that partition but still delivers the rest of the poll, and when a buffer is full it
waits, and with it every partition of the worker. So an agent on candles can never block the
others only if a whole poll fits between its pause mark and its size. Before this was set, a
fresh `up` stored no trade for about a minute (a 4,096 buffer, 820 above the mark, and polls of
the whole prefetch: ~9,500 history candles)."""

from __future__ import annotations

from typing import Any

from infra.config.settings import Settings
from schemas import topics
from streams.app import build_worker
from streams.core.checkpoint import MemoryCheckpointStore
from tests.unit.test_worker_metrics import _no_client

CANDLE_TOPICS = {spec.full_name("") for spec in topics.CANDLES.values()}


def _queues() -> tuple[Any, dict[str, Any]]:
    worker = build_worker(Settings(worker_id="test-buffers", kafka_bootstrap="127.0.0.1:1"),
                          client_factory=_no_client, checkpoint_store=MemoryCheckpointStore())
    # each agent reads a clone of its topic, built as Faust builds it when the agent starts
    queues = {name: agent.channel.clone(is_iterator=True).queue for name, agent in worker.agents.items()
              if CANDLE_TOPICS & set(agent.channel.topics)}
    return worker.app, queues


def test_every_candle_agent_takes_a_whole_poll_past_its_pause_mark_without_filling() -> None:
    app, queues = _queues()
    assert {"risk", "predict", "candle_sink", "vwap"} <= set(queues)
    poll = app.conf.broker_max_poll_records
    assert poll is not None, "an unbounded poll can overrun any buffer"
    for name, queue in queues.items():
        headroom = queue.maxsize - queue.pressure_high_size
        assert poll <= headroom, f"{name}: a poll of {poll} overruns the {headroom} messages above its pause mark"
