"""Risk agent: final candles (`md.candles.{interval}.v1`) -> rolling one-day VaR, expected
shortfall and volatility per method on `an.risk.v1`, stored in `risk_estimates`.

Per stream (venue, symbol, interval) it keeps a `RollingRisk` (streams/core/risk.py): every
final candle of a configured interval is folded in and one `RiskEstimate` per method that has
enough data is published. Candles that are not final, of other intervals, or at or before the
stream's last candle (re-deliveries) change nothing.

Restart safety: the rolling state is not checkpointed; it is a function of the last
`RiskConfig.rebuild_bars` final candles, which the candle sink has stored in ClickHouse. On the
first candle of a stream after a start (or after its partition comes back in a rebalance) the
agent loads the stored final candles BEFORE that candle through the injected `loader`,
replays them, and goes on. A crash between publishing an estimate and committing the input
re-delivers the candle: the state is rebuilt from the candles before it, and the same estimate
is published again, which the idempotent table absorbs. The candle store lags the topic by at
most the sink's flush interval, so only a candle that closed within that interval of a crash
can be missing from a rebuild (it counts as a bar without trades).

Estimates carry the candle's receive time, never the wall clock: the same candles give
byte-identical estimates, live or replayed.

The arithmetic runs on one worker thread of its own (`offload`), one candle at a time in
arrival order: a GARCH refit (arch, ~10-30 ms per stream at each UTC midnight) or a rebuild
must not stall the event loop that the candle agent and the sinks share.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from infra.config.settings import Settings
from schemas.events import INTERVAL_NS, Interval
from schemas.risk import RiskEstimate, RiskMethod
from schemas.symbols import stream_key
from schemas.wire import encode_event
from streams.agents.candle_messages import CandleMessageError, read_candle
from streams.core.risk import Estimate, RiskConfig, RollingRisk
from streams.sinks.clickhouse import ClickHouseSink
from streams.sinks.risk import ClickHouseCandleLoader, risk_table

log = logging.getLogger(__name__)

RiskEmitter = Callable[[RiskEstimate], Awaitable[None]]
# (venue, symbol, interval, before open ns, limit) -> [(open ns, close)] oldest first
CandleLoader = Callable[[str, str, str, int, int], Awaitable[Sequence[tuple[int, Decimal]]]]

_QUANT = Decimal("0.00000001")
T = TypeVar("T")


@dataclass(frozen=True)
class RiskAgentConfig:
    intervals: tuple[str, ...] = ("1h",)
    window_days: int = 90
    min_days: int = 7
    ewma_lambda: float = 0.94
    garch_min_returns: int = 250
    methods: tuple[RiskMethod, ...] = tuple(RiskMethod)

    def __post_init__(self) -> None:
        unknown = [iv for iv in self.intervals if iv not in INTERVAL_NS]
        if unknown or not self.intervals:
            raise ValueError(f"intervals must be some of {tuple(INTERVAL_NS)}, got {self.intervals}")
        for iv in self.intervals:
            self.core(iv)  # validates the rest

    def core(self, interval: str) -> RiskConfig:
        return RiskConfig(
            interval_ns=INTERVAL_NS[interval], window_days=self.window_days, min_days=self.min_days,
            ewma_lambda=self.ewma_lambda, garch_min_returns=self.garch_min_returns,
            methods=tuple(RiskMethod(m) for m in self.methods),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RiskAgentConfig:
        """From the `risk` section of the settings (ENTASIS_RISK_*)."""
        values = settings.risk.model_dump()
        values["methods"] = tuple(RiskMethod(m) for m in values["methods"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class CandleView:
    """The fields of a candle.v1 message the risk agent needs."""

    venue: str
    symbol: str
    interval: str
    open_ts_ns: int
    close: Decimal
    is_final: bool
    recv_ts_ns: int


def _candle_view(c: dict[str, Any]) -> CandleView:
    return CandleView(str(c["venue"]), str(c["symbol"]), str(c["interval"]), int(c["open_ts_ns"]),
                      Decimal(c["close"]), bool(c["is_final"]), int(c["recv_ts_ns"]))


def decode_candle(raw: bytes) -> CandleView:
    return read_candle(raw, _candle_view)


def _dec(value: float) -> Decimal:
    return Decimal(repr(value)).quantize(_QUANT)


def to_event(view: CandleView, estimate: Estimate) -> RiskEstimate:
    return RiskEstimate(
        venue=view.venue, symbol=view.symbol, interval=Interval(view.interval), method=estimate.method,
        event_ts_ns=view.open_ts_ns + INTERVAL_NS[view.interval], recv_ts_ns=view.recv_ts_ns,
        price=view.close, var_95=_dec(estimate.var), expected_shortfall=_dec(estimate.es),
        volatility=_dec(estimate.volatility), window=estimate.window,
    )


@dataclass
class _Stream:
    risk: RollingRisk
    partition: Any  # Faust TP, to drop the stream when its partition is revoked


@dataclass
class RiskAgentState:
    config: RiskAgentConfig
    loader: CandleLoader | None = None  # None: start every stream empty (tests, no database)
    offload: bool = True  # compute on the state's own thread (False: inline, for benchmarks)
    streams: dict[tuple[str, str, str], _Stream] = field(default_factory=dict)
    messages: int = 0
    folded: int = 0  # final candles folded into a state
    skipped: int = 0  # not final, or an interval not configured
    redelivered: int = 0  # at or before the stream's last candle
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

    async def stream_for(self, view: CandleView, partition: Any) -> RollingRisk:
        key = (view.venue, view.symbol, view.interval)
        s = self.streams.get(key)
        if s is None:
            core = self.config.core(view.interval)
            risk = RollingRisk(core)
            if self.loader is not None:
                bars = await self.loader(view.venue, view.symbol, view.interval, view.open_ts_ns, core.rebuild_bars)
                await self._run(risk.replay, [(open_ns, float(close)) for open_ns, close in bars])
                self.rebuilt += 1
            s = _Stream(risk, partition)
            self.streams[key] = s
        return s.risk

    async def fold(self, view: CandleView, partition: Any = None) -> list[RiskEstimate]:
        """The estimates a candle produces (none for a candle that changes nothing)."""
        if not view.is_final or view.interval not in self.config.intervals:
            self.skipped += 1
            return []
        close = float(view.close)
        if not (close > 0.0 and math.isfinite(close)):
            self.malformed += 1
            return []
        risk = await self.stream_for(view, partition)
        estimates = await self._run(_apply, risk, view, close)
        if estimates is None:
            self.redelivered += 1
            return []
        self.folded += 1
        return estimates

    def forget(self, partitions: set[Any]) -> None:
        """Drop the streams of revoked partitions; whoever gets them next rebuilds from the store."""
        for key in [k for k, s in self.streams.items() if s.partition in partitions]:
            del self.streams[key]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _apply(risk: RollingRisk, view: CandleView, close: float) -> list[RiskEstimate] | None:
    """Fold the candle in and read every method; None for a re-delivered candle."""
    if not risk.update(view.open_ts_ns, close):
        return None
    return [to_event(view, e) for e in risk.estimates()]


def make_risk_agent(state: RiskAgentState, emit: RiskEmitter) -> Callable[[Any], AsyncIterator[RiskEstimate]]:
    async def risk(stream: Any) -> AsyncIterator[RiskEstimate]:
        async for event in stream.events():
            state.messages += 1
            try:
                view = decode_candle(event.value)
            except CandleMessageError:
                state.malformed += 1  # the candle sink dead-letters it: one report per message
                continue
            for estimate in await state.fold(view, event.message.tp):
                await emit(estimate)
                state.published += 1
                yield estimate

    return risk


def make_risk_sink(sink: ClickHouseSink, batch: int, within: float) -> Callable[[Any], Any]:
    async def risk_sink(stream: Any) -> None:
        async for values in stream.take(batch, within=within):
            estimates = []
            for raw in values:
                try:
                    estimates.append(RiskEstimate.model_validate_json(raw))
                except ValueError:
                    continue  # not ours to judge twice; the topic keeps the bytes
            await sink.insert("risk_estimates", risk_table(estimates))

    return risk_sink


def topic_emitter(topic: Any) -> RiskEmitter:
    async def publish(estimate: RiskEstimate) -> None:
        fut = await topic.send(key=stream_key(estimate.venue, estimate.symbol).encode(), value=encode_event(estimate))
        await fut  # on the broker before the candle behind it is acknowledged

    return publish


@dataclass
class RiskWiring:
    agents: dict[str, Any]
    state: RiskAgentState


def register_risk_agents(
    app: Any,
    settings: Any,
    *,
    candle_topic: Any,
    risk_topic: Any,
    sink: ClickHouseSink,
    emit_risk: RiskEmitter | None = None,
    loader: CandleLoader | None = None,
    config: RiskAgentConfig | None = None,
) -> RiskWiring:
    """Wire the risk agent (on `candle_topic`, any of the candle topics), its sink (on
    `risk_topic`) and its rebalance hook on `app`.

    `settings`: any object; its `risk_*` attributes override `RiskAgentConfig`'s defaults
    (unless `config` is given). `emit_risk` replaces publishing to `risk_topic` and `loader`
    replaces reading stored candles from `sink` (tests)."""
    config = config or RiskAgentConfig.from_settings(settings)
    state = RiskAgentState(config, loader if loader is not None else ClickHouseCandleLoader(sink))
    batch, within = settings.sink.batch_messages, settings.sink.flush_seconds
    agents = {
        "risk": app.agent(candle_topic, name="risk")(make_risk_agent(state, emit_risk or topic_emitter(risk_topic))),
        "risk_sink": app.agent(risk_topic, name="risk_sink")(make_risk_sink(sink, batch, within)),
    }

    async def _forget_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        state.forget(revoked)

    app.on_partitions_revoked.connect(_forget_revoked)
    log.debug("risk agent on %s: %s", config.intervals, [m.value for m in config.methods])
    return RiskWiring(agents, state)
