"""Best bid/ask as the exchange publishes it (Binance `bookTicker`).

Kept apart from `schemas.events` because only some venues publish it; the book agent uses
it to check its own top of book (the ticker's `update_id` is in the same sequence as the
depth diffs' `U`/`u`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.events import DecimalStr, Event


class BookTicker(Event):
    """Top of book at `update_id`.

    Spot Binance tickers carry no exchange time at all: their `event_ts_ns` is our receive
    time, which on the recorded files runs about 1.27 s behind the exchange clock."""

    schema_version: Literal["book_ticker.v1"] = "book_ticker.v1"
    update_id: int
    bid_price: DecimalStr = Field(ge=0)
    bid_size: DecimalStr = Field(ge=0)
    ask_price: DecimalStr = Field(ge=0)
    ask_size: DecimalStr = Field(ge=0)
