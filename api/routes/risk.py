"""`/analysis/risk/{symbol}` (the risk agent's latest estimate) and
`/analysis/risk/{symbol}/backtest` (VaR breaches and coverage tests over stored candles).

`get_risk` is a plain `def` route, as in api/routes/market.py: FastAPI runs it in its threadpool,
where the repository's per-thread clients live. The backtest route is `async` and only waits: its
work (queries included) runs on the BacktestRunner's own few threads with a deadline, so
expensive backtests can neither occupy the shared request threads nor run without limit.
The portfolio endpoint (`/analysis/risk/portfolio`) is not served yet: positions do not
exist; its math is in streams/core/risk_portfolio.py. When it comes, register it BEFORE
`/{symbol}`, or `portfolio` is read as a (malformed) symbol.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api import risk_service
from api.deps import ANALYSIS_READER, ExchangeQuery, RiskIntervalQuery, RiskRepositoryDep, SymbolPath
from api.errors import ErrorCode, openapi_error_responses
from api.params import parse_exchange, parse_symbol, parse_time
from api.risk_service import (
    BACKTEST_DEADLINE_S,
    BACKTEST_SLOTS,
    DEFAULT_BACKTEST_DAYS,
    DEFAULT_INTERVAL,
    DEFAULT_METHOD,
    DEFAULT_WINDOW_DAYS,
    MAX_BACKTEST_BARS,
    MAX_BACKTEST_DAYS,
    BacktestResponse,
    BacktestRunner,
    RiskResponse,
)
from api.security import SECURITY_ERRORS
from schemas.risk import RiskMethod

router = APIRouter(prefix="/analysis/risk", tags=["analysis"], dependencies=[ANALYSIS_READER])

_METHODS_DOC = """
Methods (`method`), all one-day 95 % for one unit of the base asset, in the quote currency, as
positive losses (zero when even the 5 % tail is a gain); log returns of final candle closes, a
missing candle counting as an unchanged price:
- `historical`: empirical 5 % quantile (and tail mean) of the OVERLAPPING one-day returns inside
  the window (ln C_t − ln C_(t−1 day) at every bar); no scaling assumption.
- `parametric`: normal with the window's mean and sample variance of bar returns, scaled to one
  day as i.i.d. bars (mean × n, variance × n, n = bars per day).
- `parametric_t`: Student-t matched to the one-day variance and excess kurtosis implied by the
  bars (ν = 4 + 6n/κ).
- `ewma`: RiskMetrics, λ = 0.94 per day (λ^(1/n) per bar, same memory for every interval), zero
  mean, normal, variance × n.
- `garch`: GARCH(1,1) by `arch` (zero mean, normal), refitted at every UTC midnight on the window
  once it holds 250 returns; one-day variance = sum of the n bar forecasts. For daily candles it
  needs a window of at least 250 days, so the default 90-day window has no GARCH for `1d`.

`volatility` is annualised over 365 days, a fraction: the window's realised volatility for
`historical`/`parametric`/`parametric_t`, the model's one-day forecast for `ewma`/`garch`.
"""

RISK_DESCRIPTION = f"""
The latest rolling risk estimate of `symbol`, published by the risk agent with every closed
candle. **Default: `method=ewma` on `interval=1h` candles with a {DEFAULT_WINDOW_DAYS}-day window**
(2160 hourly returns; the agent's default, configurable per deployment). An estimate needs at
least 7 days of returns. `timestamp` is the estimate's as-of time: the close time of the candle
that completed it (exchange event time).
{_METHODS_DOC}
`MARKET_001`: malformed (400) or unknown (404) symbol. `UNAVAILABLE` (503): no estimate of this
method and interval yet (not enough data, or the risk agent does not run that interval).
"""

BACKTEST_DESCRIPTION = f"""
VaR backtest of `symbol` over stored final candles, for each method (or the one in `method`):
the estimator rolls over the candles exactly as the risk agent does (warmed up on the candles
before `start`), a forecast is taken at every UTC midnight in [`start`, `end`) and compared with
the realised loss of one unit over the next 24 hours; a breach is a loss above the VaR.

Reported per method: forecasts (`observations`), `breaches`, `expected` (5 % of the
observations), the Kupiec proportion-of-failures test (χ²(1)), the Christoffersen independence
test (χ²(1)) and their sum, conditional coverage (χ²(2)), each as `statistic` and `p_value`
(null without observations). A small p-value rejects a correct VaR.

Defaults: the last {DEFAULT_BACKTEST_DAYS} days of candles, `interval=1h`, `window_days={DEFAULT_WINDOW_DAYS}`. At most
{MAX_BACKTEST_DAYS} days per call (400 otherwise), and **at most {MAX_BACKTEST_BARS} bars read per call**, the
estimation window before `start` included: (`window_days` + days of the period + 1) × bars per day
(400 `BAD_REQUEST` beyond, with `max_bars` and `bars` in `details`; e.g. `interval=1m` allows about
34 days in all). GARCH refits once per day of data, so it dominates the time of a long backtest.
At most {BACKTEST_SLOTS} backtests run at once per API process, off the request threads: another one is
answered 503 `UNAVAILABLE` with `Retry-After` at once, and one not finished within
{BACKTEST_DEADLINE_S:g} seconds is stopped and answered 503 with `Retry-After`.
{_METHODS_DOC}"""


_ERRORS = openapi_error_responses(
    {
        400: [ErrorCode.MARKET_001, ErrorCode.BAD_REQUEST],
        404: [ErrorCode.MARKET_001, ErrorCode.NOT_FOUND],
        500: [ErrorCode.INTERNAL],
        503: [ErrorCode.UNAVAILABLE],
        **SECURITY_ERRORS,
    }
)


@router.get(
    "/{symbol}",
    response_model=RiskResponse,
    summary="One-day VaR, expected shortfall and volatility",
    description=RISK_DESCRIPTION,
    responses=_ERRORS,
)
def get_risk(
    repository: RiskRepositoryDep,
    symbol: SymbolPath,
    method: Annotated[RiskMethod, Query(description="Estimation method (see above).")] = DEFAULT_METHOD,
    interval: RiskIntervalQuery = DEFAULT_INTERVAL,
    exchange: ExchangeQuery = None,
) -> RiskResponse:
    return risk_service.latest(repository, parse_symbol(symbol), parse_exchange(exchange), method, interval)


_DEFAULT_RUNNER = BacktestRunner()


def get_backtest_runner(request: Request) -> BacktestRunner:
    """The app's runner when it set one (`app.state.backtest_runner`), else the process-wide one:
    the slot limit is per process, as the CPU it protects is."""
    runner = getattr(request.app.state, "backtest_runner", None)
    return runner if isinstance(runner, BacktestRunner) else _DEFAULT_RUNNER


@router.get(
    "/{symbol}/backtest",
    response_model=BacktestResponse,
    summary="VaR backtest: breaches, Kupiec and Christoffersen tests per method",
    description=BACKTEST_DESCRIPTION,
    responses=_ERRORS,
)
async def get_backtest(
    repository: RiskRepositoryDep,
    runner: Annotated[BacktestRunner, Depends(get_backtest_runner)],
    symbol: SymbolPath,
    start: Annotated[
        str | None, Query(description=f"ISO 8601, inclusive. Default: `end` − {DEFAULT_BACKTEST_DAYS} days.")
    ] = None,
    end: Annotated[
        str | None, Query(description="ISO 8601, exclusive. Default: the first UTC midnight after the last candle.")
    ] = None,
    method: Annotated[RiskMethod | None, Query(description="One method; default: every method.")] = None,
    interval: RiskIntervalQuery = DEFAULT_INTERVAL,
    window_days: Annotated[int, Query(ge=1, le=365, description="Estimation window in days.")] = DEFAULT_WINDOW_DAYS,
    exchange: ExchangeQuery = None,
) -> BacktestResponse:
    # parsed here (cheap, no I/O) so malformed input is answered without taking a backtest slot
    parsed_symbol, parsed_exchange = parse_symbol(symbol), parse_exchange(exchange)
    start_ns, end_ns = parse_time("start", start), parse_time("end", end)
    return await runner.run(
        lambda cancel: risk_service.backtest_report(
            repository, parsed_symbol, start_ns=start_ns, end_ns=end_ns, exchange=parsed_exchange,
            method=method, interval=interval, window_days=window_days, cancel=cancel,
        )
    )
