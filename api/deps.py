"""Every dependency the routes declare, in one place: the providers of what the app's lifespan
built (api/app.py `create_app`), the caller's scopes, and the parameters several routes share.
Routes import their dependencies from here only.

State on `app.state`, set once (by `create_app`, or by its lifespan for what a served app builds):
`repository` (a RiskRepository: market queries plus the analysis tables) and `portfolio_bus` (a
PortfolioBus). Before the lifespan has run, or while it is shutting down, a provider answers 503
UNAVAILABLE instead of letting a route fail on None. The services are modules of functions over
these (api/market_service.py is the model): nothing to build.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request, Security

from api.errors import ApiError, ErrorCode
from api.portfolio_service import PortfolioBus, unavailable_error
from api.prediction_memory import LatestPredictions, MemoryPredictionRepository
from api.principal import ANALYSIS_READ, MARKET_READ, PORTFOLIO_READ, PORTFOLIO_WRITE, Principal
from api.security import require_scope
from infra.store.prediction_repository import PredictionRepository
from infra.store.repository import MarketRepository
from infra.store.risk_repository import RiskRepository
from schemas.events import Interval

# --- Providers of the lifespan's state -----------------------------------------------------------


async def get_market_repository(request: Request) -> MarketRepository:
    repository: MarketRepository | None = getattr(request.app.state, "repository", None)
    if repository is None:  # the app was not started (lifespan not run) or is shutting down
        raise ApiError(ErrorCode.UNAVAILABLE, {"reason": "market data store not ready"})
    return repository


async def get_risk_repository(request: Request) -> RiskRepository:
    repository = getattr(request.app.state, "repository", None)
    if not isinstance(repository, RiskRepository):  # not started, shutting down, or not wired with risk
        raise ApiError(ErrorCode.UNAVAILABLE, {"reason": "risk store not ready"})
    return repository


async def get_prediction_repository(request: Request) -> PredictionRepository:
    market = getattr(request.app.state, "repository", None)
    if not isinstance(market, MarketRepository):  # not started, or shutting down
        raise ApiError(ErrorCode.UNAVAILABLE, {"reason": "prediction store not ready"})
    # It runs its queries through the market repository's clients and owns nothing, so a view per
    # request costs nothing and always follows the repository the app holds now.
    store = PredictionRepository(market)
    # A served API keeps the latest forecasts in memory (api/prediction_memory.py).
    memory: LatestPredictions | None = getattr(market, "prediction_memory", None)
    return MemoryPredictionRepository(store, memory) if memory is not None else store


async def get_portfolio_bus(request: Request) -> PortfolioBus:
    bus: PortfolioBus | None = getattr(request.app.state, "portfolio_bus", None)
    if bus is None:  # not started, shutting down, or an app given no bus (see create_app)
        raise unavailable_error("portfolio bus not ready")
    return bus


MarketRepositoryDep = Annotated[MarketRepository, Depends(get_market_repository)]
RiskRepositoryDep = Annotated[RiskRepository, Depends(get_risk_repository)]
PredictionRepositoryDep = Annotated[PredictionRepository, Depends(get_prediction_repository)]
PortfolioBusDep = Annotated[PortfolioBus, Depends(get_portfolio_bus)]

# --- The caller ----------------------------------------------------------------------------------

# Router-wide: `APIRouter(dependencies=[MARKET_READER])`.
MARKET_READER = Security(require_scope(MARKET_READ))
ANALYSIS_READER = Security(require_scope(ANALYSIS_READ))

# Per route, when the route acts for the account.
PortfolioReader = Annotated[Principal, Security(require_scope(PORTFOLIO_READ))]
PortfolioWriter = Annotated[Principal, Security(require_scope(PORTFOLIO_WRITE))]

# --- Request parameters shared by routes ---------------------------------------------------------

# The patterns document exactly what the parsers accept (api/params.py); they are not enforced
# by FastAPI, so a mismatch still gets the contract's MARKET_001 or BAD_REQUEST, not a generic 400.
SymbolPath = Annotated[
    str,
    Path(
        description="`BASE-QUOTE`, case-insensitive (`btc-usdt` = `BTC-USDT`); each side 1-15 letters or digits.",
        examples=["BTC-USDT"],
        json_schema_extra={"pattern": r"^[A-Za-z0-9]{1,15}-[A-Za-z0-9]{1,15}$"},
    ),
]
ExchangeQuery = Annotated[
    str | None,
    Query(
        description=(
            "Venue id (case-insensitive), e.g. `binance`. Default: the venue with the most recent trade of the symbol."
        ),
        examples=["binance"],
        json_schema_extra={"pattern": r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$"},
    ),
]
RiskIntervalQuery = Annotated[
    Interval, Query(description="Candles whose closes give the returns (the risk agent's interval).")
]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x21-\x7e]{1,128}$",
        description="Makes retries safe: a repeat with the same key returns the first response and opens "
        "nothing new (also across API restarts); the same key with another body is 409.",
    ),
]
