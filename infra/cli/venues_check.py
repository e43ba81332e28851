"""`entasis venues check`: is the configured list of live feeds usable? Parses every
`venue:SYMBOL`, loads each venue's market list through ccxt, and says for every symbol
whether the venue has it, under which names, or what is wrong."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from ccxt.base.errors import BaseError

from schemas.venues import Feed, InvalidFeed
from streams.core.venues.contract import from_ccxt_symbol
from streams.core.venues.registry import VENUES, ccxt_symbol, parse_feed
from streams.ingest.venues.ccxt_client import plain_exchange


@dataclass(frozen=True)
class CheckLine:
    item: str  # what was configured
    ok: bool
    message: str


async def _markets(venue: str, endpoint: str | None, timeout_s: float) -> dict[str, dict]:
    exchange = plain_exchange(venue, endpoint)
    try:
        return dict(await asyncio.wait_for(exchange.load_markets(), timeout_s))
    finally:
        await exchange.close()


def _similar(feed: Feed, markets: dict[str, dict]) -> list[str]:
    """Markets of the same base asset (or the same quote, failing that), to suggest."""
    base, quote = feed.symbol.split("-")
    kind = VENUES[feed.venue].kind
    kind_ok = [m for m in markets.values() if m.get(kind)]
    same_base = sorted(from_ccxt_symbol(m["symbol"]) for m in kind_ok if m.get("base") == base)
    if same_base:
        return same_base[:8]
    return sorted(from_ccxt_symbol(m["symbol"]) for m in kind_ok if m.get("quote") == quote)[:8]


def check_feed(feed: Feed, markets: dict[str, dict]) -> CheckLine:
    unified = ccxt_symbol(feed)
    market = markets.get(unified)
    if market is None:
        similar = _similar(feed, markets)
        hint = f"; it lists {', '.join(f'{feed.venue}:{s}' for s in similar)}" if similar else ""
        return CheckLine(feed.key, False, f"{feed.venue} has no {VENUES[feed.venue].kind} market {unified}{hint}")
    if market.get("active") is False:
        return CheckLine(feed.key, False, f"{feed.venue} lists {unified} but it is not trading (inactive)")
    return CheckLine(feed.key, True, f"ccxt {unified}, venue id {market['id']}")


async def check(items: Sequence[str], endpoint: str | None = None, timeout_s: float = 30.0) -> list[CheckLine]:
    lines: list[CheckLine] = []
    feeds: list[Feed] = []
    for item in items:
        try:
            feed = parse_feed(item)
        except InvalidFeed as exc:
            lines.append(CheckLine(item.strip(), False, str(exc)))
            continue
        if feed in feeds:
            lines.append(CheckLine(feed.key, False, "listed twice"))
            continue
        feeds.append(feed)
    if not items:
        lines.append(CheckLine("(none)", False, "no venues configured: set ENTASIS_VENUES or pass --venues, "
                                                 "e.g. binance:ETH-USDT,kraken:BTC-USD"))
    for venue in sorted({f.venue for f in feeds}):
        mine = [f for f in feeds if f.venue == venue]
        try:
            markets = await _markets(venue, endpoint, timeout_s)
        except (BaseError, OSError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            lines.extend(CheckLine(f.key, False, f"cannot load {venue}'s market list ({reason[:300]})") for f in mine)
            continue
        lines.extend(check_feed(f, markets) for f in mine)
    return lines


def render(lines: Sequence[CheckLine]) -> str:
    width = max((len(line.item) for line in lines), default=0)
    return "\n".join(f"{'ok  ' if line.ok else 'FAIL'}  {line.item:<{width}}  {line.message}" for line in lines)
