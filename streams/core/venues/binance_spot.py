"""Binance spot (`binance`): live through ccxt.pro's `binance`, and replayed from the captures.

Trades are numbered consecutively per symbol. Missed trades come from the recent-trades REST
endpoint, which takes no start time and keeps the last 1000. ccxt keeps the book from a REST
snapshot plus the diff stream and checks its sequence; the book's nonce is Binance's update id.
Recorded messages are parsed by `streams.core.venues.binance` (shared by the three markets)."""

from __future__ import annotations

from typing import Final

from streams.core.venues.binance import ONE_SOCKET, SPOT_RULES, VENUES
from streams.core.venues.contract import Backfill, Venue

VENUE: Final = Venue(
    name=VENUES["spot"],
    ccxt_id="binance",
    kind="spot",
    book_rules=SPOT_RULES,
    # spot only: the default also loads both futures market lists (three REST calls, more weight)
    ccxt_options={"defaultType": "spot", "fetchMarkets": {"types": ["spot"]}, "streamLimits": ONE_SOCKET},
    consecutive_trade_ids=True,
    backfill=Backfill(params={"fetchTradesMethod": "publicGetTrades"}, since=False),
    book_update_id_is_venue_id=True,
)
