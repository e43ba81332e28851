"""`/portfolio/positions` (list, open, close) and `/portfolio/balance`, event-sourced: writes
are commands answered by the portfolio agent's events; reads come from the fold of those events.
Parse, ask api/portfolio_service.py, return its model. Every route acts for the authenticated
account only: a position of another account is 404 exactly like one that never existed, so ids
cannot be probed.

Async routes: they wait on the bus (the service runs the blocking market lookups in the threadpool).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api import portfolio_service
from api.deps import IdempotencyHeader, MarketRepositoryDep, PortfolioBusDep, PortfolioReader, PortfolioWriter
from api.errors import ErrorCode, openapi_error_responses
from api.params import parse_symbol
from api.portfolio_service import (
    BalanceResponse,
    ClosePositionResponse,
    OpenPositionRequest,
    OpenPositionResponse,
    PositionsResponse,
)
from api.security import SECURITY_ERRORS

router = APIRouter(prefix="/portfolio", tags=["portfolio"])


_WRITE_ERRORS = openapi_error_responses({
    400: [ErrorCode.BAD_REQUEST, ErrorCode.MARKET_001],
    404: [ErrorCode.MARKET_001, ErrorCode.NOT_FOUND],
    409: [ErrorCode.IDEMPOTENCY_CONFLICT],
    422: [ErrorCode.PORT_001, ErrorCode.PORT_002],
    500: [ErrorCode.INTERNAL],
    503: [ErrorCode.UNAVAILABLE, ErrorCode.MARKET_002],
    **SECURITY_ERRORS,
})
_READ_ERRORS = openapi_error_responses({500: [ErrorCode.INTERNAL], 503: [ErrorCode.UNAVAILABLE], **SECURITY_ERRORS})
_CLOSE_ERRORS = openapi_error_responses({
    400: [ErrorCode.BAD_REQUEST], 404: [ErrorCode.NOT_FOUND], 500: [ErrorCode.INTERNAL],
    503: [ErrorCode.UNAVAILABLE, ErrorCode.MARKET_002],
    **SECURITY_ERRORS,
})


@router.post(
    "/positions",
    status_code=201,
    response_model=OpenPositionResponse,
    summary="Open a position",
    description=(
        "Checks, in order: request shape (400 `BAD_REQUEST`), symbol (`MARKET_001`), required margin "
        "(size × latest price ÷ leverage) against the free balance (422 `PORT_001`), the account's limits on open "
        "positions and per-symbol notional (422 `PORT_002`). The entry price is the latest trade price. A 503 means "
        "the outcome is unknown: retry with the same `Idempotency-Key`. A key answers retries for 24 hours after its "
        "first result (event time); after that it is forgotten and the same key is a new request."
    ),
    responses=_WRITE_ERRORS,
)
async def open_position(
    body: OpenPositionRequest, principal: PortfolioWriter, repository: MarketRepositoryDep, bus: PortfolioBusDep,
    idempotency_key: IdempotencyHeader = None,
) -> OpenPositionResponse:
    return await portfolio_service.open_position(
        bus, repository, principal.account, parse_symbol(body.symbol), body, idempotency_key
    )


@router.get("/positions", response_model=PositionsResponse, summary="Open positions, marked to the latest price",
            responses=_READ_ERRORS)
async def list_positions(
    principal: PortfolioReader, repository: MarketRepositoryDep, bus: PortfolioBusDep
) -> PositionsResponse:
    return await portfolio_service.positions(bus, repository, principal.account)


@router.delete(
    "/positions/{position_id}",
    response_model=ClosePositionResponse,
    summary="Close a position at the latest price",
    description="Realises the PnL into the balance. 404 for a position the caller does not hold open.",
    responses=_CLOSE_ERRORS,
)
async def close_position(
    principal: PortfolioWriter, repository: MarketRepositoryDep, bus: PortfolioBusDep,
    position_id: Annotated[str, Path(max_length=64)],
) -> ClosePositionResponse:
    return await portfolio_service.close_position(bus, repository, principal.account, position_id)


@router.get("/balance", response_model=BalanceResponse, summary="Cash, margin and equity of the account",
            responses=_READ_ERRORS)
async def get_balance(principal: PortfolioReader, repository: MarketRepositoryDep, bus: PortfolioBusDep
                      ) -> BalanceResponse:
    return await portfolio_service.balance(bus, repository, principal.account)
