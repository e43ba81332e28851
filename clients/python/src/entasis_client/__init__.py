"""Python client of the Entasis Engine API.

    from entasis_client import Client, AsyncClient, MarketStream

- `Client` / `AsyncClient`: every REST route, answered as pydantic models (`entasis_client.models`),
  errors raised by code (`entasis_client.errors`), retries on 429/503 that honour `Retry-After`
  (`RetryPolicy`), an `Idempotency-Key` on every POST.
- `MarketStream`: the `/ws/market` WebSocket with reconnect, resubscribe and `seq` gap detection.
"""

import logging

from entasis_client._core import DEFAULT_BASE_URL, RateLimitInfo, __version__
from entasis_client.async_client import AsyncClient
from entasis_client.client import Client
from entasis_client.errors import (
    AuthError,
    ConnectionFailed,
    EntasisError,
    FeedUnavailable,
    Forbidden,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidResponse,
    InvalidSymbol,
    MethodNotAllowed,
    ModelLoadFailed,
    NotFound,
    PortfolioRejected,
    PositionLimitExceeded,
    PredictionUnavailable,
    RateLimited,
    ServerError,
    SymbolNotFound,
    Unavailable,
    ValidationFailed,
)
from entasis_client.models import CandleUpdate, MarketTick, OrderBookUpdate, StreamMessage
from entasis_client.retry import ReconnectPolicy, RetryPolicy
from entasis_client.stream import MarketStream, SequenceTracker, Subscription

# A library logs; the application decides whether and where that goes.
logging.getLogger("entasis_client").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncClient",
    "AuthError",
    "CandleUpdate",
    "Client",
    "ConnectionFailed",
    "EntasisError",
    "FeedUnavailable",
    "Forbidden",
    "IdempotencyConflict",
    "InsufficientBalance",
    "InvalidResponse",
    "InvalidSymbol",
    "MarketStream",
    "MarketTick",
    "MethodNotAllowed",
    "ModelLoadFailed",
    "NotFound",
    "OrderBookUpdate",
    "PortfolioRejected",
    "PositionLimitExceeded",
    "PredictionUnavailable",
    "RateLimitInfo",
    "RateLimited",
    "ReconnectPolicy",
    "RetryPolicy",
    "SequenceTracker",
    "ServerError",
    "StreamMessage",
    "Subscription",
    "SymbolNotFound",
    "Unavailable",
    "ValidationFailed",
    "__version__",
]
