"""The risk agent's decisions: which candles count, and the estimates a final candle of one
(venue, symbol, interval) stream produces, and the counters of all that (`RiskProcessor`). No
I/O: the agent decodes, rebuilds a new stream's state from stored candles (`RiskStream.replay`)
and publishes what `handle` returns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from infra.config.settings import Settings
from schemas.events import INTERVAL_NS, Interval
from schemas.risk import RiskEstimate, RiskMethod
from streams.core.candle_admission import Verdict
from streams.core.candle_input import CandleCounters, read_candle
from streams.core.risk import Estimate, RiskConfig, RollingRisk

_QUANT = Decimal("0.00000001")


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


def candle_view(c: dict[str, Any]) -> CandleView:
    return CandleView(str(c["venue"]), str(c["symbol"]), str(c["interval"]), int(c["open_ts_ns"]),
                      Decimal(c["close"]), bool(c["is_final"]), int(c["recv_ts_ns"]))


def decode_candle(raw: bytes) -> CandleView:
    return read_candle(raw, candle_view)


def admit(config: RiskAgentConfig, view: CandleView) -> Verdict:
    if not view.is_final or view.interval not in config.intervals:
        return Verdict.SKIP
    close = float(view.close)
    return Verdict.FOLD if close > 0.0 and math.isfinite(close) else Verdict.MALFORMED


def _dec(value: float) -> Decimal:
    return Decimal(repr(value)).quantize(_QUANT)


def to_event(view: CandleView, estimate: Estimate) -> RiskEstimate:
    return RiskEstimate(
        venue=view.venue, symbol=view.symbol, interval=Interval(view.interval), method=estimate.method,
        event_ts_ns=view.open_ts_ns + INTERVAL_NS[view.interval], recv_ts_ns=view.recv_ts_ns,
        price=view.close, var_95=_dec(estimate.var), expected_shortfall=_dec(estimate.es),
        volatility=_dec(estimate.volatility), window=estimate.window,
    )


class RiskStream:
    """One stream's rolling state."""

    def __init__(self, core: RiskConfig) -> None:
        self.risk = RollingRisk(core)

    def replay(self, bars: list[tuple[int, Decimal]]) -> None:
        self.risk.replay([(open_ns, float(close)) for open_ns, close in bars])

    def handle(self, view: CandleView) -> list[RiskEstimate] | None:
        """The estimates of an admitted candle; None for a re-delivery (at or before the last)."""
        if not self.risk.update(view.open_ts_ns, float(view.close)):
            return None
        return [to_event(view, e) for e in self.risk.estimates()]


class RiskProcessor(CandleCounters):
    """The decisions over every stream of a worker, and their counters. The caller does the I/O
    around them: it rebuilds a new stream (`opened`) from the stored candles `rebuild_window`
    names, runs `RiskStream.handle` (off the event loop) and hands the result to `counted`."""

    def __init__(self, config: RiskAgentConfig) -> None:
        super().__init__()
        self.config = config
        self.rebuilt = 0  # streams rebuilt from stored candles

    def admit(self, view: CandleView) -> bool:
        return self.admitted(admit(self.config, view))

    def opened(self, view: CandleView) -> RiskStream:
        return RiskStream(self.config.core(view.interval))

    def rebuild_window(self, view: CandleView) -> tuple[str, str, str, int, int]:
        """(venue, symbol, interval, before open ns, limit) of the stored candles a new stream
        is rebuilt from: those before `view`, as many as its window holds."""
        return view.venue, view.symbol, view.interval, view.open_ts_ns, self.config.core(view.interval).rebuild_bars

    def counted(self, estimates: list[RiskEstimate] | None) -> list[RiskEstimate]:
        if estimates is None:
            self.redelivered += 1
            return []
        self.folded += 1
        return estimates
