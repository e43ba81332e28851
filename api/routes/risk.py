"""`/analysis/risk/{symbol}` (the risk agent's latest estimate) and
`/analysis/risk/{symbol}/backtest` (VaR breaches and coverage tests over stored candles).

Plain `def` routes on purpose, as in api/routes/market.py: FastAPI runs them in its threadpool,
where the repository's per-thread clients live, and a backtest's CPU work stays off the event
loop. The portfolio endpoint (`/analysis/risk/portfolio`) is not served yet: positions do not
exist; its math is in streams/core/risk_portfolio.py. When it comes, register it BEFORE
`/{symbol}`, or `portfolio` is read as a (malformed) symbol.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Security
from pydantic import BaseModel, ConfigDict, Field

from api import market_service
from api.errors import ApiError, ErrorCode, openapi_error_responses
from api.models import DecimalString, UtcTimestamp, ns_to_datetime
from api.params import parse_exchange, parse_symbol, parse_time
from api.principal import ANALYSIS_READ
from api.routes.market import ExchangeQuery, SymbolPath  # one definition (and schema pattern) per parameter
from api.security import SECURITY_ERRORS, require_scope
from infra.store.risk_repository import RiskRepository
from schemas.events import INTERVAL_NS, Interval
from schemas.risk import RiskMethod
from streams.core.risk import DAY_NS, RiskConfig
from streams.core.risk_backtest import BacktestRow, LikelihoodRatio, backtest

router = APIRouter(prefix="/analysis/risk", tags=["analysis"], dependencies=[Security(require_scope(ANALYSIS_READ))])

DEFAULT_METHOD = RiskMethod.EWMA
DEFAULT_INTERVAL = Interval.H1
DEFAULT_WINDOW_DAYS = 90
MAX_BACKTEST_DAYS = 366


def get_risk_repository(request: Request) -> RiskRepository:
    repository = getattr(request.app.state, "risk_repository", None) or getattr(request.app.state, "repository", None)
    if not isinstance(repository, RiskRepository):  # not started, shutting down, or not wired with risk
        raise ApiError(ErrorCode.UNAVAILABLE, {"reason": "risk store not ready"})
    return repository


Repository = Annotated[RiskRepository, Depends(get_risk_repository)]
IntervalQuery = Annotated[
    Interval, Query(description="Candles whose closes give the returns (the risk agent's interval).")
]

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

Defaults: the last 365 days of candles, `interval=1h`, `window_days={DEFAULT_WINDOW_DAYS}`. At most
{MAX_BACKTEST_DAYS} days per call (400 otherwise). GARCH refits once per day of data (~10 ms each),
so it dominates the time of a long backtest.
{_METHODS_DOC}"""


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
    repository: Repository,
    symbol: SymbolPath,
    method: Annotated[RiskMethod, Query(description="Estimation method (see above).")] = DEFAULT_METHOD,
    interval: IntervalQuery = DEFAULT_INTERVAL,
    exchange: ExchangeQuery = None,
) -> RiskResponse:
    parsed = parse_symbol(symbol)
    venue = market_service.last_trade(repository, parsed, parse_exchange(exchange)).venue
    row = repository.latest_risk(parsed, venue, method.value, interval.value)
    if row is None:
        raise ApiError(
            ErrorCode.UNAVAILABLE,
            {"reason": "no risk estimate yet (not enough data)", "symbol": parsed, "exchange": venue,
             "method": method.value, "interval": interval.value},
        )
    return RiskResponse(
        symbol=parsed, var_95=row.var_95, expected_shortfall=row.expected_shortfall, volatility=row.volatility,
        timestamp=ns_to_datetime(row.as_of_ns), method=method, interval=interval, window=row.window,
        price=row.price, exchange=venue,
    )


def _bad(field: str, reason: str) -> ApiError:
    return ApiError(ErrorCode.BAD_REQUEST, {"errors": [{"field": field, "reason": reason}]})


@router.get(
    "/{symbol}/backtest",
    response_model=BacktestResponse,
    summary="VaR backtest: breaches, Kupiec and Christoffersen tests per method",
    description=BACKTEST_DESCRIPTION,
    responses=_ERRORS,
)
def get_backtest(
    repository: Repository,
    symbol: SymbolPath,
    start: Annotated[str | None, Query(description="ISO 8601, inclusive. Default: `end` − 365 days.")] = None,
    end: Annotated[
        str | None, Query(description="ISO 8601, exclusive. Default: the first UTC midnight after the last candle.")
    ] = None,
    method: Annotated[RiskMethod | None, Query(description="One method; default: every method.")] = None,
    interval: IntervalQuery = DEFAULT_INTERVAL,
    window_days: Annotated[int, Query(ge=1, le=365, description="Estimation window in days.")] = DEFAULT_WINDOW_DAYS,
    exchange: ExchangeQuery = None,
) -> BacktestResponse:
    parsed = parse_symbol(symbol)
    start_ns, end_ns = parse_time("start", start), parse_time("end", end)
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise _bad("query", "start must be before end")
    venue = market_service.last_trade(repository, parsed, parse_exchange(exchange)).venue
    step = INTERVAL_NS[interval.value]
    if end_ns is None:
        last = repository.last_final_open(parsed, venue, interval.value)
        if last is None:
            # nothing to backtest over is a missing resource, not a passing server condition
            raise ApiError(ErrorCode.NOT_FOUND, {"reason": "no stored final candles", "symbol": parsed,
                                                   "exchange": venue, "interval": interval.value})
        # the first UTC midnight after the last close: every forecast that can be realised is before it
        end_ns = ((last + step) // DAY_NS + 1) * DAY_NS
    if start_ns is None:
        start_ns = end_ns - 365 * DAY_NS
    if end_ns - start_ns > MAX_BACKTEST_DAYS * DAY_NS:
        raise _bad("query", f"at most {MAX_BACKTEST_DAYS} days per backtest")
    methods = (method,) if method is not None else tuple(RiskMethod)
    config = RiskConfig(interval_ns=step, window_days=window_days, methods=methods)
    # Warm up on the candles a running agent would hold at `start`; realise up to a day after `end`.
    bars = repository.final_closes(parsed, venue, interval.value, start_ns - config.rebuild_bars * step - step,
                                   end_ns + DAY_NS)
    rows = backtest(((ts, float(close)) for ts, close in bars), config, start_ns, end_ns)
    return BacktestResponse(
        symbol=parsed, exchange=venue, interval=interval, window_days=window_days,
        start=ns_to_datetime(start_ns), end=ns_to_datetime(end_ns), results=[_row(r) for r in rows],
    )

