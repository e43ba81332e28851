"""What the risk endpoints mean, between parsed parameters and the risk repository: the venue,
the latest stored estimate, and a backtest's period and its rows. No SQL, no HTTP.

The latest estimate is read, never computed per request (the risk agent publishes one with every
closed candle). A backtest runs the same core as the agent and `entasis risk backtest`
(streams/core/risk_backtest.py), over the stored final candles of the period.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from api import market_service
from api.errors import ApiError, ErrorCode
from api.models import DecimalString, UtcTimestamp, ns_to_datetime
from api.risk_memory import LatestRisk
from infra.store.risk_repository import RiskRepository
from schemas.events import INTERVAL_NS, Interval
from schemas.risk import RiskMethod
from streams.core.risk import DAY_NS, RiskConfig
from streams.core.risk_backtest import BacktestRow, LikelihoodRatio, backtest, bar_range, default_end

DEFAULT_METHOD = RiskMethod.EWMA
DEFAULT_INTERVAL = Interval.H1
DEFAULT_WINDOW_DAYS = 90
DEFAULT_BACKTEST_DAYS = 365  # without `start`, the backtest covers this many days before `end`
MAX_BACKTEST_DAYS = 366
# Bars one backtest may read, its warm-up window included: the CPU cost grows with bars (and GARCH
# refits with bars x days), so days alone do not bound it (`interval=1m&window_days=365` is over
# half a million). The default call (1h, 90-day window, 365 days) reads about 11,000.
MAX_BACKTEST_BARS = 50_000
BACKTEST_SLOTS = 2  # backtests running at once, per API process
BACKTEST_DEADLINE_S = 30.0
BACKTEST_RETRY_AFTER_S = 5

T = TypeVar("T")


class RiskResponse(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "symbol": "BTC-USDT",
                    "var_95": "2210.43000000",
                    "expected_shortfall": "2771.90000000",
                    "volatility": "0.52140000",
                    "timestamp": "2024-03-21T09:00:00.000Z",
                    "method": "ewma",
                    "interval": "1h",
                    "window": 2160,
                    "price": "65432.10000000",
                    "exchange": "binance",
                }
            ]
        },
    )

    symbol: str = Field(examples=["BTC-USDT"])
    var_95: DecimalString = Field(description="One-day 95 % value at risk of one unit, quote currency, >= 0.")
    expected_shortfall: DecimalString = Field(
        description="Mean one-day loss of one unit in the worst 5 % of days, quote currency, >= var_95."
    )
    volatility: DecimalString = Field(description="Annualised (365 days) volatility, a fraction (0.5 = 50 %).")
    timestamp: UtcTimestamp = Field(description="As-of time: close time of the candle that completed the estimate.")
    method: RiskMethod
    interval: Interval
    window: int = Field(description="Bar returns in the estimate's window.")
    price: DecimalString = Field(description="The close the amounts refer to.")
    exchange: str


class CoverageTest(BaseModel):
    model_config = ConfigDict(frozen=True)

    statistic: DecimalString | None = Field(description="Likelihood-ratio statistic; null without observations.")
    p_value: DecimalString | None


class BacktestMethod(BaseModel):
    model_config = ConfigDict(frozen=True)

    method: RiskMethod
    observations: int = Field(description="Daily forecasts with a realised next-day loss.")
    breaches: int = Field(description="Days whose loss exceeded the VaR.")
    expected: DecimalString = Field(description="Expected breaches: 5 % of the observations.")
    breach_rate: DecimalString | None
    kupiec: CoverageTest = Field(description="Proportion of failures, χ²(1).")
    christoffersen: CoverageTest = Field(description="Independence of breaches, χ²(1).")
    conditional_coverage: CoverageTest = Field(description="Kupiec + Christoffersen, χ²(2).")


class BacktestResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    symbol: str
    exchange: str
    interval: Interval
    window_days: int
    start: UtcTimestamp = Field(description="Inclusive bound on forecast as-of times.")
    end: UtcTimestamp = Field(description="Exclusive bound on forecast as-of times.")
    results: list[BacktestMethod]


def _dec(value: float) -> Decimal | None:
    return None if math.isnan(value) else Decimal(repr(value))


def _test(result: LikelihoodRatio) -> CoverageTest:
    return CoverageTest(statistic=_dec(result.statistic), p_value=_dec(result.p_value))


def _row(row: BacktestRow) -> BacktestMethod:
    return BacktestMethod(
        method=row.method, observations=row.observations, breaches=row.breaches, expected=Decimal(repr(row.expected)),
        breach_rate=_dec(row.breach_rate), kupiec=_test(row.kupiec), christoffersen=_test(row.christoffersen),
        conditional_coverage=_test(row.conditional_coverage),
    )


def _bad_query(reason: str) -> ApiError:
    return ApiError(ErrorCode.BAD_REQUEST, {"errors": [{"field": "query", "reason": reason}]})


class BacktestCancelled(Exception):
    """Raised inside a backtest's thread once its request has given up on it (deadline passed or
    client gone), so the CPU it holds is freed instead of finishing work nobody will read."""


def _until_cancelled(bars: Iterable[tuple[int, float]], cancel: threading.Event | None) -> Iterator[tuple[int, float]]:
    # The core consumes bars one by one and does all its work (including GARCH refits) between
    # two of them, so a check per bar stops a cancelled backtest within one bar's work.
    for bar in bars:
        if cancel is not None and cancel.is_set():
            raise BacktestCancelled
        yield bar


def _unavailable(reason: str, retry_after_s: int, **extra: object) -> ApiError:
    return ApiError(
        ErrorCode.UNAVAILABLE, {"reason": reason, **extra}, headers={"Retry-After": str(retry_after_s)}
    )


class BacktestRunner:
    """Runs backtests on threads of their own, never on the request threads: at most `slots` at
    once (another request is answered 503 with `Retry-After` at once, not queued behind them), and
    each answered within `deadline_s` (503 past it; its thread is told to stop at the next bar).

    A slot is held until the backtest's thread has really finished, not until its request was
    answered, so abandoned work cannot pile up beyond `slots` threads."""

    def __init__(
        self,
        slots: int = BACKTEST_SLOTS,
        deadline_s: float = BACKTEST_DEADLINE_S,
        retry_after_s: int = BACKTEST_RETRY_AFTER_S,
    ) -> None:
        self.slots = slots
        self.deadline_s = deadline_s
        self.retry_after_s = retry_after_s
        self._free = threading.BoundedSemaphore(slots)
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="backtest")

    async def run(self, work: Callable[[threading.Event], T]) -> T:
        """`work(cancel)` on a backtest thread; `cancel` is set when its answer is no longer wanted."""
        if not self._free.acquire(blocking=False):
            raise _unavailable("too many backtests running; retry later", self.retry_after_s,
                               max_concurrent=self.slots)
        cancel = threading.Event()
        try:
            future = self._executor.submit(work, cancel)
        except RuntimeError:  # shut down
            self._free.release()
            raise _unavailable("backtests are shutting down", self.retry_after_s) from None
        future.add_done_callback(lambda _: self._free.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.deadline_s)
        except TimeoutError:
            cancel.set()
            raise _unavailable("backtest deadline exceeded; ask for fewer bars", self.retry_after_s,
                               deadline_seconds=self.deadline_s) from None
        except asyncio.CancelledError:  # the client went away: nobody reads the answer
            cancel.set()
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def latest(
    repository: RiskRepository, symbol: str, exchange: str | None, method: RiskMethod, interval: Interval
) -> RiskResponse:
    """The risk agent's latest estimate; 503 UNAVAILABLE until it has published one."""
    venue = market_service.last_trade(repository, symbol, exchange).venue
    # the served API's memory of the latest estimates (api/risk_memory.py); tools read the store
    memory: LatestRisk | None = getattr(repository, "risk_memory", None)
    if memory is not None:
        row = memory.latest_risk(repository, symbol, venue, method.value, interval.value)
    else:
        row = repository.latest_risk(symbol, venue, method.value, interval.value)
    if row is None:
        raise ApiError(
            ErrorCode.UNAVAILABLE,
            {"reason": "no risk estimate yet (not enough data)", "symbol": symbol, "exchange": venue,
             "method": method.value, "interval": interval.value},
        )
    return RiskResponse(
        symbol=symbol, var_95=row.var_95, expected_shortfall=row.expected_shortfall, volatility=row.volatility,
        timestamp=ns_to_datetime(row.as_of_ns), method=method, interval=interval, window=row.window,
        price=row.price, exchange=venue,
    )


def backtest_report(
    repository: RiskRepository,
    symbol: str,
    *,
    start_ns: int | None,
    end_ns: int | None,
    exchange: str | None,
    method: RiskMethod | None,
    interval: Interval,
    window_days: int,
    cancel: threading.Event | None = None,
) -> BacktestResponse:
    """Forecasts as of UTC midnights in [start, end): by default the last 365 days up to the first
    midnight after the last stored final candle (404 NOT_FOUND when there is none). At most
    MAX_BACKTEST_BARS bars read (400 beyond, before reading any); `cancel` set stops it
    (BacktestCancelled)."""
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise _bad_query("start must be before end")
    venue = market_service.last_trade(repository, symbol, exchange).venue
    step = INTERVAL_NS[interval.value]
    if end_ns is None:
        last = repository.last_final_open(symbol, venue, interval.value)
        if last is None:
            # nothing to backtest over is a missing resource, not a passing server condition
            raise ApiError(ErrorCode.NOT_FOUND, {"reason": "no stored final candles", "symbol": symbol,
                                                   "exchange": venue, "interval": interval.value})
        end_ns = default_end(last, step)
    if start_ns is None:
        start_ns = end_ns - DEFAULT_BACKTEST_DAYS * DAY_NS
    if end_ns - start_ns > MAX_BACKTEST_DAYS * DAY_NS:
        raise _bad_query(f"at most {MAX_BACKTEST_DAYS} days per backtest")
    methods = (method,) if method is not None else tuple(RiskMethod)
    config = RiskConfig(interval_ns=step, window_days=window_days, methods=methods)
    lo, hi = bar_range(config, start_ns, end_ns)
    wanted = -(-(hi - lo) // step)  # bars the range can hold: an upper bound known before the query
    if wanted > MAX_BACKTEST_BARS:
        raise ApiError(
            ErrorCode.BAD_REQUEST,
            {"errors": [{"field": "query", "reason": f"at most {MAX_BACKTEST_BARS} bars per backtest, the "
                         "estimation window included: shorten the period or the window, or use a longer interval"}],
             "max_bars": MAX_BACKTEST_BARS, "bars": wanted},
        )
    bars = repository.final_closes(symbol, venue, interval.value, lo, hi)
    rows = backtest(_until_cancelled(((ts, float(close)) for ts, close in bars), cancel), config, start_ns, end_ns)
    return BacktestResponse(
        symbol=symbol, exchange=venue, interval=interval, window_days=window_days,
        start=ns_to_datetime(start_ns), end=ns_to_datetime(end_ns), results=[_row(r) for r in rows],
    )
