"""Binance USD-M perpetuals (`binance-usdm`): live through ccxt.pro's `binanceusdm`, and replayed
from the captures. As spot (`binance_spot`), except that diffs chain by `pu` (futures rules),
and ccxt spells the perpetual `BASE/QUOTE:QUOTE`."""

from __future__ import annotations

from typing import Final

from streams.core.venues.binance import FUTURES_RULES, ONE_SOCKET, VENUES
from streams.core.venues.contract import Backfill, Venue

VENUE: Final = Venue(
    name=VENUES["usdm"],
    ccxt_id="binanceusdm",
    kind="linear",
    book_rules=FUTURES_RULES,
    ccxt_options={"defaultType": "swap", "fetchMarkets": {"types": ["linear"]}, "streamLimits": ONE_SOCKET},
    consecutive_trade_ids=True,
    backfill=Backfill(params={"fetchTradesMethod": "fapiPublicGetTrades"}, since=False),
    book_update_id_is_venue_id=True,
)
