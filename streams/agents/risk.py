"""Risk agent: final candles (`md.candles.{interval}.v1`) -> rolling one-day VaR, expected
shortfall and volatility per method on `an.risk.v1`, stored in `risk_estimates`.

Decisions and counters: `streams.core.risk_processor.RiskProcessor` (which candles count; a
`RiskStream` per (venue, symbol, interval)). Restart safety: the rolling state is not checkpointed; it is a function of
the last `rebuild_bars` final candles, which the candle sink stored. On the first candle of a
stream after a start (or after its partition comes back) the state is rebuilt from the stored
final candles BEFORE it through the injected `loader` (waited for while the database is away:
`streams.runtime.retrying`). A re-delivered candle gives the same
estimates again, which the idempotent table absorbs; estimates carry the candle's receive time,
never the wall clock. The arithmetic (a GARCH refit, a rebuild) runs on a thread of the state's
own (`streams.runtime.offload`), one candle at a time in arrival order, so the shared event loop
never stalls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from schemas.codecs import risk as risk_codec
from schemas.risk import RiskEstimate
from streams.agents.candle_messages import candle_agent
from streams.core.risk_processor import CandleView, RiskAgentConfig, RiskProcessor, RiskStream, decode_candle
from streams.runtime.batch_sink import TableSink, batch_agent, model_rows
from streams.runtime.emit import Emitter, topic_emitter
from streams.runtime.keyed import KeyedState, forget_on_revoke
from streams.runtime.offload import Offload
from streams.runtime.retrying import until_done
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.risk import ClickHouseCandleLoader

__all__ = ["CandleView", "RiskAgentConfig", "RiskAgentState", "RiskWiring", "decode_candle", "register_risk_agents"]

# (venue, symbol, interval, before open ns, limit) -> [(open ns, close)] oldest first
CandleLoader = Callable[[str, str, str, int, int], Awaitable[Sequence[tuple[int, Decimal]]]]


class RiskAgentState(RiskProcessor):
    """The processor, with the streams' state and the I/O: `loader` reads stored candles (None:
    every stream starts empty; tests, no database); `offload=False` computes inline (benchmarks)."""

    def __init__(self, config: RiskAgentConfig, loader: CandleLoader | None = None, offload: bool = True) -> None:
        super().__init__(config)
        self.loader, self.thread = loader, Offload("risk", inline=not offload)
        self.streams: KeyedState[tuple[str, str, str], RiskStream] = KeyedState()

    async def open(self, view: CandleView) -> RiskStream:
        s = self.opened(view)
        if self.loader is not None:
            loader, window = self.loader, self.rebuild_window(view)
            stored = await until_done(lambda: loader(*window), f"reading the stored candles of {window[:3]} for risk")
            await self.thread.run(s.replay, list(stored))
            self.rebuilt += 1
        return s

    async def fold(self, view: CandleView, partition: Any = None) -> list[RiskEstimate]:
        """The estimates a candle produces (none for a candle that changes nothing)."""
        if not self.admit(view):
            return []
        key = (view.venue, view.symbol, view.interval)
        s, _ = await self.streams.get_or_load(key, partition, lambda: self.open(view))
        return self.counted(await self.thread.run(s.handle, view))

    def forget(self, partitions: set[Any]) -> None:
        """Whoever gets a revoked partition next rebuilds its streams from the store."""
        self.streams.forget(partitions)

    def close(self) -> None:
        self.thread.close()


@dataclass
class RiskWiring:
    agents: dict[str, Any]
    state: RiskAgentState


def register_risk_agents(app: Any, settings: Any, *, candle_topic: Any, risk_topic: Any, sink: ClickHouseSink,
                         emit_risk: Emitter[RiskEstimate] | None = None, loader: CandleLoader | None = None,
                         config: RiskAgentConfig | None = None) -> RiskWiring:
    """Wire the risk agent (on `candle_topic`), its sink (on `risk_topic`) and its rebalance hook.
    `emit_risk` and `loader` replace publishing and reading stored candles (tests)."""
    config = config or RiskAgentConfig.from_settings(settings)
    state = RiskAgentState(config, loader if loader is not None else ClickHouseCandleLoader(sink))
    rows = TableSink(sink, model_rows(risk_codec.CODEC, "risk_estimates", risk_codec.table))
    agents = {
        "risk": app.agent(candle_topic, name="risk")(
            candle_agent(state, decode_candle, emit_risk or topic_emitter(risk_topic))),
        "risk_sink": app.agent(risk_topic, name="risk_sink")(
            batch_agent(rows, settings.sink.batch_messages, settings.sink.flush_seconds)),
    }
    forget_on_revoke(app, state)
    return RiskWiring(agents, state)
