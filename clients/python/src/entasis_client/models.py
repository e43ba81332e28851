"""Response models of the Entasis REST API and the `/ws/market` messages.

Values arrive as the API writes them: decimals as plain-notation strings (`"65432.10000000"`),
timestamps as ISO 8601 UTC with milliseconds and `Z`. Here they are `Decimal` and timezone-aware
`datetime`, and `model_dump(mode="json")` writes them back exactly as received, so a model is
equal to the JSON it came from (`model_dump(mode="json", exclude_unset=True) == response.json()`).

Every model is frozen and keeps fields it does not know (`extra="allow"`): a newer server that adds
a field does not break an older client. Enumerations (intervals, methods, models, kinds) are plain
strings for the same reason; the accepted request values are the `Literal` aliases below."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

__all__ = [
    "Ack",
    "BacktestMethod",
    "BacktestResponse",
    "BalanceResponse",
    "Candle",
    "CandleUpdate",
    "ClosePositionResponse",
    "CoverageTest",
    "DecimalString",
    "FeedState",
    "HistoryResponse",
    "HorizonMetrics",
    "Interval",
    "MarketTick",
    "Metrics",
    "MetricsResponse",
    "OpenPositionResponse",
    "OrderBookResponse",
    "OrderBookUpdate",
    "Position",
    "PositionType",
    "PositionsResponse",
    "PredictionModel",
    "PredictionResponse",
    "PriceResponse",
    "QualityItem",
    "QualityResponse",
    "ReadinessCheck",
    "ReadinessResponse",
    "RiskMethod",
    "RiskResponse",
    "StreamMessage",
    "SymbolInfo",
    "SymbolsResponse",
    "Timeframe",
    "Trade",
    "TradesResponse",
    "UtcTimestamp",
]

# Request values the API accepts (responses carry them as plain strings).
Interval = Literal["1m", "5m", "1h", "1d"]
RiskMethod = Literal["historical", "parametric", "parametric_t", "ewma", "garch"]
Timeframe = Literal["1h", "4h", "1d"]
PredictionModel = Literal["ensemble", "lstm"]
PositionType = Literal["long", "short"]


def _plain(value: Decimal) -> str:
    # `format(.., "f")` keeps the scale the API sent: "0.00000000" stays that, where str() gives "0E-8".
    return format(value, "f")


def _timestamp(value: datetime) -> str:
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


DecimalString = Annotated[Decimal, PlainSerializer(_plain, return_type=str, when_used="json")]
"""A decimal string on the wire, `Decimal` in Python."""
UtcTimestamp = Annotated[datetime, PlainSerializer(_timestamp, return_type=str, when_used="json")]
"""`2024-03-21T09:30:00.123Z` on the wire, an aware UTC `datetime` in Python."""
PriceSize = Annotated[list[DecimalString], Field(min_length=2, max_length=2)]
"""One order-book level: `[price, size]`."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", protected_namespaces=())


# --- market ------------------------------------------------------------------------------------


class PriceResponse(_Model):
    """`GET /market/price/{symbol}`: the latest trade and the 24 h volume of its venue."""

    symbol: str
    price: DecimalString
    timestamp: UtcTimestamp
    volume: DecimalString
    exchange: str


class Candle(_Model):
    """One OHLCV candle; `timestamp` is the bucket's open time. `trades` and `vwap` only when asked
    for with `fields=` (servers that support it)."""

    timestamp: UtcTimestamp
    open: DecimalString
    high: DecimalString
    low: DecimalString
    close: DecimalString
    volume: DecimalString
    trades: int | None = None
    vwap: DecimalString | None = None


class HistoryResponse(_Model):
    """`GET /market/history/{symbol}`: candles ordered by time, the still-open one last."""

    symbol: str
    data: list[Candle]


class OrderBookResponse(_Model):
    """`GET /market/orderbook/{symbol}`: the live book's top levels, best first."""

    symbol: str
    exchange: str
    bids: list[PriceSize]
    asks: list[PriceSize]
    timestamp: UtcTimestamp


class FeedState(_Model):
    state: str
    since: UtcTimestamp


class SymbolInfo(_Model):
    symbol: str
    exchange: str
    first_trade: UtcTimestamp
    last_trade: UtcTimestamp
    trades: int
    feed: FeedState | None


class SymbolsResponse(_Model):
    """`GET /market/symbols`: every venue's symbol with a stored trade."""

    data: list[SymbolInfo]


class Trade(_Model):
    trade_id: str
    price: DecimalString
    size: DecimalString
    side: str
    timestamp: UtcTimestamp


class TradesResponse(_Model):
    """`GET /market/trades/{symbol}`: one page; `next_cursor` is None on the last page."""

    symbol: str
    exchange: str
    data: list[Trade]
    next_cursor: str | None


class QualityItem(_Model):
    exchange: str
    kind: str
    timestamp: UtcTimestamp
    detail: dict[str, Any]


class QualityResponse(_Model):
    """`GET /market/quality/{symbol}`: one page of data-quality events."""

    symbol: str
    data: list[QualityItem]
    next_cursor: str | None


# --- analysis ----------------------------------------------------------------------------------


class RiskResponse(_Model):
    """`GET /analysis/risk/{symbol}`: one-day 95 % VaR and expected shortfall of one unit."""

    symbol: str
    var_95: DecimalString
    expected_shortfall: DecimalString
    volatility: DecimalString
    timestamp: UtcTimestamp
    method: str
    interval: str
    window: int
    price: DecimalString
    exchange: str


class CoverageTest(_Model):
    statistic: DecimalString | None
    p_value: DecimalString | None


class BacktestMethod(_Model):
    method: str
    observations: int
    breaches: int
    expected: DecimalString
    breach_rate: DecimalString | None
    kupiec: CoverageTest
    christoffersen: CoverageTest
    conditional_coverage: CoverageTest


class BacktestResponse(_Model):
    """`GET /analysis/risk/{symbol}/backtest`."""

    symbol: str
    exchange: str
    interval: str
    window_days: int
    start: UtcTimestamp
    end: UtcTimestamp
    results: list[BacktestMethod]


class PredictionResponse(_Model):
    """`GET /analysis/prediction/{symbol}`: a forecast with its calibrated confidence."""

    symbol: str
    prediction: DecimalString
    confidence: float
    timeframe: str
    model: str
    timestamp: UtcTimestamp
    price: DecimalString
    log_return: DecimalString
    direction: str
    exchange: str
    interval: str
    model_version: str
    features_version: str


class Metrics(_Model):
    scored: int
    mae: DecimalString | None
    mae_naive: DecimalString | None
    skill: DecimalString | None
    r2: DecimalString | None
    directional_accuracy: DecimalString | None
    up_rate: DecimalString | None
    mean_confidence: DecimalString | None
    calibration_error: DecimalString | None


class HorizonMetrics(_Model):
    model: str
    timeframe: str
    status: str
    remaining_candles: int
    timestamp: UtcTimestamp
    interval: str
    model_version: str
    features_version: str
    all: Metrics
    recent: Metrics


class MetricsResponse(_Model):
    """`GET /analysis/prediction/{symbol}/metrics`."""

    symbol: str
    exchange: str
    metrics: list[HorizonMetrics]


# --- portfolio ---------------------------------------------------------------------------------


class OpenPositionResponse(_Model):
    """`POST /portfolio/positions` (201)."""

    position_id: str
    status: str
    timestamp: UtcTimestamp


class Position(_Model):
    position_id: str
    symbol: str
    type: str
    size: DecimalString
    leverage: DecimalString
    entry_price: DecimalString
    current_price: DecimalString
    pnl: DecimalString
    timestamp: UtcTimestamp


class PositionsResponse(_Model):
    """`GET /portfolio/positions`: open positions marked to the latest price."""

    positions: list[Position]


class ClosePositionResponse(_Model):
    """`DELETE /portfolio/positions/{id}`."""

    position_id: str
    status: str
    exit_price: DecimalString
    pnl: DecimalString
    timestamp: UtcTimestamp


class BalanceResponse(_Model):
    """`GET /portfolio/balance`."""

    balance: DecimalString
    used_margin: DecimalString
    free_balance: DecimalString
    unrealized_pnl: DecimalString
    equity: DecimalString
    open_positions: int
    timestamp: UtcTimestamp


# --- operator paths ----------------------------------------------------------------------------


class ReadinessCheck(_Model):
    ok: bool
    state: str


class ReadinessResponse(_Model):
    """`GET /readyz` (200 or 503, the same body): `status` is `ok` or `unavailable`."""

    status: str
    checks: dict[str, ReadinessCheck]


# --- WebSocket /ws/market ----------------------------------------------------------------------


class _StreamModel(_Model):
    """A data message of one subscription. `seq` numbers the subscription's updates (1, 2, 3...).

    Two attributes are the client's, not the wire's (left out of `model_dump`):
    - `gap`: how many updates the server merged or lost before this one (`seq` jumped by
      `gap + 1`); 0 normally. The server conflates when the client falls behind.
    - `resumed`: the first message of this subscription on a new connection after a reconnect:
      updates of the time without a connection are not replayed (a market tick's `volume` covers
      only itself; an order book or candle message is complete anyway)."""

    seq: int
    gap: int = Field(default=0, exclude=True)
    resumed: bool = Field(default=False, exclude=True)


class MarketTick(_StreamModel):
    """Channel `market`: a trade update; `volume` is the size traded in this update (merged
    updates add their volumes)."""

    channel: Literal["market"] = Field(default="market", exclude=True)
    symbol: str
    exchange: str
    price: DecimalString
    timestamp: UtcTimestamp
    volume: DecimalString


class OrderBookUpdate(_StreamModel):
    """Channel `orderbook`: a full book of the subscribed depth, on subscribe and on every change."""

    channel: Literal["orderbook"] = Field(default="orderbook", exclude=True)
    symbol: str
    exchange: str
    bids: list[PriceSize]
    asks: list[PriceSize]
    timestamp: UtcTimestamp


class CandleUpdate(_StreamModel):
    """Channel `candles`: every revision of a candle; the last one of a bucket has `is_final`."""

    channel: Literal["candles"] = Field(default="candles", exclude=True)
    symbol: str
    exchange: str
    interval: str
    timestamp: UtcTimestamp
    open: DecimalString
    high: DecimalString
    low: DecimalString
    close: DecimalString
    volume: DecimalString
    is_final: bool


StreamMessage = MarketTick | OrderBookUpdate | CandleUpdate


class Ack(_Model):
    """A subscription's acknowledgement: `type` is `subscribed` or `unsubscribed`. A market
    subscribe names each symbol's bound venue in `exchanges`; orderbook and candles in `exchange`
    (None: no venue known yet, the first that publishes binds)."""

    type: str
    channel: str
    symbol: str | None = None
    symbols: list[str] | None = None
    exchange: str | None = None
    exchanges: dict[str, str | None] | None = None
    depth: int | None = None
    interval: str | None = None
