"""The simulated market (`sim`): `entasis simulate` and the default `entasis up` feed, never
reached live. Its books are a snapshot and diffs with consecutive update ids, chained by
Binance spot's rules (`U == previous u + 1`), so a dropped diff is a gap the book agent sees
(`streams.core.simulated_book`)."""

from __future__ import annotations

from typing import Final

from streams.core.simulation import SIM_VENUE
from streams.core.venues.binance import SPOT_RULES
from streams.core.venues.contract import Venue

VENUE: Final = Venue(name=SIM_VENUE, ccxt_id=None, kind="spot", book_rules=SPOT_RULES, consecutive_trade_ids=True)
