"""Risk agent: final candles (`md.candles.{interval}.v1`) -> rolling one-day VaR, expected
shortfall and volatility per method on `an.risk.v1`, stored in `risk_estimates`.

Decisions: `streams.core.risk_processor` (which candles count; a `RiskStream` per (venue,
symbol, interval)). Restart safety: the rolling state is not checkpointed; it is a function of
the last `rebuild_bars` final candles, which the candle sink stored. On the first candle of a
stream after a start (or after its partition comes back) the state is rebuilt from the stored
final candles BEFORE it through the injected `loader`. A re-delivered candle gives the same
estimates again, which the idempotent table absorbs; estimates carry the candle's receive time,
never the wall clock. The arithmetic (a GARCH refit, a rebuild) runs on a thread of the state's
own, one candle at a time in arrival order, so the shared event loop never stalls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from schemas.codecs import risk as risk_codec
from schemas.risk import RiskEstimate
from streams.agents.candle_messages import admitted, candle_agent, read_candle
from streams.core.risk_processor import CandleView, RiskAgentConfig, RiskStream, admit, candle_view
from streams.runtime.batch_sink import TableSink, batch_agent, model_rows
from streams.runtime.emit import Emitter, topic_emitter
from streams.runtime.keyed import KeyedState, forget_on_revoke
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.risk import ClickHouseCandleLoader

__all__ = ["CandleView", "RiskAgentConfig", "RiskAgentState", "RiskWiring", "decode_candle", "register_risk_agents"]

# (venue, symbol, interval, before open ns, limit) -> [(open ns, close)] oldest first
CandleLoader = Callable[[str, str, str, int, int], Awaitable[Sequence[tuple[int, Decimal]]]]
T = TypeVar("T")


def decode_candle(raw: bytes) -> CandleView:
    return read_candle(raw, candle_view)


@dataclass
class RiskAgentState:
    config: RiskAgentConfig
    loader: CandleLoader | None = None  # None: start every stream empty (tests, no database)
    offload: bool = True  # compute on the state's own thread (False: inline, for benchmarks)
    streams: KeyedState[tuple[str, str, str], RiskStream] = field(default_factory=KeyedState)
    messages: int = 0
    folded: int = 0
    skipped: int = 0
    redelivered: int = 0
    malformed: int = 0
    rebuilt: int = 0  # streams rebuilt from stored candles
    published: int = 0
    _executor: ThreadPoolExecutor | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.offload:
            return fn(*args)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="risk")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stream_for(self, view: CandleView, partition: Any) -> RiskStream:
        key = (view.venue, view.symbol, view.interval)
        s = self.streams.get(key)
        if s is None:
            core = self.config.core(view.interval)
            s = RiskStream(core)
            if self.loader is not None:
                bars = await self.loader(view.venue, view.symbol, view.interval, view.open_ts_ns, core.rebuild_bars)
                await self._run(s.replay, list(bars))
                self.rebuilt += 1
            self.streams.put(key, s, partition)
        return s

    async def fold(self, view: CandleView, partition: Any = None) -> list[RiskEstimate]:
        """The estimates a candle produces (none for a candle that changes nothing)."""
        if not admitted(self, admit(self.config, view)):
            return []
        estimates = await self._run((await self.stream_for(view, partition)).handle, view)
        if estimates is None:
            self.redelivered += 1
            return []
        self.folded += 1
        return estimates

    def forget(self, partitions: set[Any]) -> None:
        """Whoever gets a revoked partition next rebuilds its streams from the store."""
        self.streams.forget(partitions)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


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
