"""The live venues Entasis connects to through ccxt.pro, and how their symbols are spelled.

Every venue spelling is mapped here and in `schemas.symbols`, nowhere else:
- ours: `BASE-QUOTE` (`ETH-USDT`), with the venue in the stream key (`binance-usdm:ETH-USDT`);
- ccxt's unified symbol: `ETH/USDT` on spot venues, `ETH/USDT:USDT` for a USD-M perpetual;
- the venue's own id (`ETHUSDT`, `ETH-USD`, `XBT/USD`) comes from ccxt's market list at run
  time (`market["id"]`), because only the venue knows it (Kraken's XBT is ccxt's BTC).

A configured feed is `venue:SYMBOL`, e.g. `binance:ETH-USDT`, `kraken:BTC-USD`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from schemas.symbols import InvalidSymbol, normalize_symbol

MarketKind = Literal["spot", "linear"]


@dataclass(frozen=True)
class VenueSpec:
    """One venue as ccxt.pro reaches it. `options` go into the ccxt constructor's options."""

    name: str  # our venue tag: the first half of every stream key
    ccxt_id: str  # the ccxt.pro exchange class
    kind: MarketKind
    options: dict[str, Any] = field(default_factory=dict)
    # whether the venue's trade ids are consecutive integers per symbol, so a missing id is a gap
    consecutive_trade_ids: bool = False
    # how missed trades are fetched after a reconnect: ccxt `fetch_trades` params, and whether
    # the venue takes a start time (Binance's recent-trades endpoint refuses one)
    backfill_params: dict[str, Any] = field(default_factory=dict)
    backfill_since: bool = True
    # whether ccxt's book `nonce` is the venue's update id (it grows across reconnects)
    book_nonce: bool = False
    # a per-connection message counter the venue sends and ccxt does not check
    message_sequence: str | None = None
    # the book depth to subscribe to, where the venue sends a fixed-depth view (Kraken: 10 by
    # default; 10, 25, 100, 500 or 1000); None: the venue's full diff stream
    book_limit: int | None = None
    # a book checksum the venue sends and ccxt does not check (see streams.core.venues.kraken)
    book_checksum: str | None = None
    # ccxt's fetch_trades on the venue wants an end time with a start time (`until`)
    backfill_until: bool = False


# ccxt spreads Binance subscriptions over up to 50 sockets; one socket per venue carries a
# symbol's trades and depth together (Binance allows 1024 streams on one), so a silent socket
# means a stalled feed, not a quiet market
_ONE_SOCKET: Final = dict.fromkeys(("spot", "margin", "linear", "inverse", "stock", "option", "optionMarket"), 1)

VENUES: Final[dict[str, VenueSpec]] = {
    "binance": VenueSpec(
        "binance", "binance", "spot",
        # spot only: the default also loads both futures market lists (three REST calls, more weight)
        {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]}, "streamLimits": _ONE_SOCKET},
        consecutive_trade_ids=True,
        backfill_params={"fetchTradesMethod": "publicGetTrades"},
        backfill_since=False,
        book_nonce=True,
    ),
    "binance-usdm": VenueSpec(
        "binance-usdm", "binanceusdm", "linear",
        {"defaultType": "swap", "fetchMarkets": {"types": ["linear"]}, "streamLimits": _ONE_SOCKET},
        consecutive_trade_ids=True,
        backfill_params={"fetchTradesMethod": "fapiPublicGetTrades"},
        backfill_since=False,
        book_nonce=True,
    ),
    "coinbase": VenueSpec("coinbase", "coinbase", "spot", consecutive_trade_ids=True,
                          message_sequence="sequence_num", backfill_until=True),
    "kraken": VenueSpec("kraken", "kraken", "spot", book_checksum="kraken_v2", book_limit=100),
}


class InvalidFeed(ValueError):
    """A configured `venue:SYMBOL` that cannot be used; the message says why."""


@dataclass(frozen=True, order=True)
class Feed:
    venue: str
    symbol: str  # BASE-QUOTE

    @property
    def key(self) -> str:
        return f"{self.venue}:{self.symbol}"

    @property
    def spec(self) -> VenueSpec:
        return VENUES[self.venue]

    @property
    def ccxt_symbol(self) -> str:
        return to_ccxt_symbol(self.symbol, self.spec.kind)

    def __str__(self) -> str:
        return self.key


def parse_feed(text: str) -> Feed:
    """`binance:eth-usdt` -> Feed("binance", "ETH-USDT"); InvalidFeed says what is wrong."""
    venue, sep, symbol = text.strip().partition(":")
    venue = venue.strip().lower()
    if not sep or not venue or not symbol.strip():
        raise InvalidFeed(f"{text!r}: expected venue:SYMBOL, e.g. binance:ETH-USDT")
    if venue not in VENUES:
        raise InvalidFeed(f"{text!r}: unknown venue {venue!r}; known venues: {', '.join(sorted(VENUES))}")
    try:
        return Feed(venue, normalize_symbol(symbol))
    except InvalidSymbol:
        raise InvalidFeed(f"{text!r}: the symbol must be BASE-QUOTE, e.g. ETH-USDT") from None


def parse_feeds(items: Sequence[str] | str) -> tuple[Feed, ...]:
    """A comma-separated string or a list of `venue:SYMBOL`, deduplicated, in the given order."""
    if isinstance(items, str):
        items = [part for part in items.split(",") if part.strip()]
    feeds: list[Feed] = []
    for item in items:
        feed = parse_feed(item)
        if feed not in feeds:
            feeds.append(feed)
    return tuple(feeds)


def to_ccxt_symbol(symbol: str, kind: MarketKind = "spot") -> str:
    """`ETH-USDT` -> `ETH/USDT` (spot) or `ETH/USDT:USDT` (USD-M perpetual, settled in the quote)."""
    base, quote = normalize_symbol(symbol).split("-")
    return f"{base}/{quote}" if kind == "spot" else f"{base}/{quote}:{quote}"


def from_ccxt_symbol(unified: str) -> str:
    """`ETH/USDT` or `ETH/USDT:USDT` -> `ETH-USDT`."""
    pair = unified.split(":", 1)[0]
    base, _, quote = pair.partition("/")
    return normalize_symbol(f"{base}-{quote}")


def point_urls_at(urls: Any, base: str, venue: str) -> Any:
    """ccxt's `urls["api"]` with every endpoint moved to `base/<venue>`, keeping its path:
    `https://api.binance.com/api/v3` -> `http://127.0.0.1:8900/binance/api/v3`, and
    `wss://stream.binance.com:9443/ws` -> `ws://127.0.0.1:8900/binance/ws`. This is how the
    connectors reach the local exchange double instead of the internet."""
    if isinstance(urls, dict):
        return {k: point_urls_at(v, base, venue) for k, v in urls.items()}
    if isinstance(urls, list):
        return [point_urls_at(v, base, venue) for v in urls]
    if not isinstance(urls, str) or "://" not in urls:
        return urls
    scheme, rest = _URL.match(urls).groups()  # type: ignore[union-attr]  # "://" is in it
    target_scheme, target_rest = _URL.match(base.rstrip("/")).groups()  # type: ignore[union-attr]
    if scheme in ("ws", "wss"):
        target_scheme = "wss" if target_scheme == "https" else "ws"
    path = rest[len(rest.split("/", 1)[0]):].rstrip("/")  # drop the host[:port]
    return f"{target_scheme}://{target_rest}/{venue}{path}"


_URL: Final = re.compile(r"^([a-z]+)://(.*)$")
