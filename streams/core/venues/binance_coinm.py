"""Binance COIN-M perpetuals (`binance-coinm`): replayed from the captures only (no live
connector). Diffs chain by `pu` (futures rules); our symbol is `BASE-USD` (`ETHUSD_PERP`)."""

from __future__ import annotations

from typing import Final

from streams.core.venues.binance import FUTURES_RULES, VENUES
from streams.core.venues.contract import Venue

VENUE: Final = Venue(name=VENUES["cm"], ccxt_id=None, kind="inverse", book_rules=FUTURES_RULES,
                     consecutive_trade_ids=True)
