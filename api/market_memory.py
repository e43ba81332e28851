"""Market reads from the API's read model, falling back to the store for what memory does not
cover (docs/architecture.md, "the API is a read model"). Same methods as the store's
`MarketRepository`, so api/market_service.py serves from either without knowing which.

Warming: a series starts in memory with its first consumed trade. The first request for a
symbol then loads, once, what the store held before that trade (24 h of trades, the recent
candles of every interval, the latest feed state). It waits until the store has caught up with
the topic (the store holds a trade at or after the first consumed one, and the first consumed
candle of each interval), so the load and the topic meet without a gap; until then requests go
to the store, as they did before memory existed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from api.read_model import RETAIN_CANDLES, MemTrade, NotCovered, ReadModel, VersionedCandle
from infra.store.records_repository import RecordsRepository, TradeRecord
from infra.store.repository import DAY_NS, CandleRow, FeedState, LastTrade, MarketRepository
from schemas.events import INTERVAL_NS, Interval

logger = logging.getLogger("api.market_memory")

_RETRY_WARM_S = 1.0  # a series the store has not caught up with is tried again after this


class MemoryMarket:
    def __init__(
        self, model: ReadModel, repository: MarketRepository, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.model = model
        self.repository = repository
        self._clock = clock
        self._warm_lock = threading.Lock()
        self._tried: dict[str, float] = {}
        # venues the store knows for a symbol but memory has not seen trade since it started
        self._store_only: dict[str, dict[str, LastTrade]] = {}
        self.hits = 0  # answers from memory (statistics, tests)
        self.misses = 0
        self.only = MemoryOnly(self)

    def store_only(self, symbol: str) -> list[LastTrade]:
        """The latest stored trade of each venue the store knew for `symbol`, when it was warmed,
        and memory had not seen trade."""
        return list(self._store_only.get(symbol, {}).values())

    # --- warming -----------------------------------------------------------------------------

    def ensure_warm(self, symbol: str) -> None:
        if not self.model.cold_series(symbol):
            return
        now = self._clock()
        if now - self._tried.get(symbol, -_RETRY_WARM_S) < _RETRY_WARM_S:
            return
        with self._warm_lock:
            self._tried[symbol] = now
            cold = self.model.cold_series(symbol)
            if cold:
                self._warm(symbol, cold)

    def _warm(self, symbol: str, cold: list[tuple[str, int]]) -> None:
        repo = self.repository
        stored_last = repo.last_trades_by_venue(symbol)
        for venue, first_ns in cold:
            last = stored_last.get(venue)
            if last is None or last.event_ns < first_ns:
                continue  # the store has not caught up with the topic yet
            candles: dict[str, tuple[int, list[VersionedCandle]]] = {}
            caught_up = True
            for interval, step in INTERVAL_NS.items():
                first_candle = self.model.first_candle_open(venue, symbol, interval)
                if first_candle is not None:
                    stored = repo.last_candle_open(symbol, venue, interval)
                    if stored is None or stored < first_candle:
                        caught_up = False
                        break
                from_ns = (first_ns // step - RETAIN_CANDLES[interval] + 1) * step
                rows = repo.candles_since(symbol, venue, interval, from_ns)
                candles[interval] = (from_ns, [VersionedCandle(version, row) for row, version in rows])
            if not caught_up:
                continue
            trades = [MemTrade(*row) for row in repo.trades_between(symbol, venue, first_ns - DAY_NS, first_ns)]
            self.model.warm(venue, symbol, trades, candles, repo.feed_state(symbol, venue))
            logger.info("read model: %s:%s warm (%d trades, from the store)", venue, symbol, len(trades))
        seen = self.model.venues(symbol)
        self._store_only[symbol] = {v: t for v, t in stored_last.items() if v not in seen}

    # --- MarketRepository's reads -----------------------------------------------------------

    def _answer(self, symbol: str, name: str, *args: Any) -> Any:
        """Memory if it covers the read; else warm the symbol (the store, once) and try again;
        else the store."""
        try:
            value = getattr(self.only, name)(*args)
        except NotCovered:
            self.ensure_warm(symbol)
            try:
                value = getattr(self.only, name)(*args)
            except NotCovered:
                self.misses += 1
                return getattr(self.repository, name)(*args)
        self.hits += 1
        return value

    def knows(self, symbol: str) -> bool:
        return self.model.has_symbol(symbol) or self.repository.knows(symbol)

    def known_symbols(self) -> frozenset[str]:
        return self.repository.known_symbols()

    def last_price(self, symbol: str, venue: str | None = None) -> LastTrade | None:
        trade: LastTrade | None = self._answer(symbol, "last_price", symbol, venue)
        return trade

    def volume_24h(self, symbol: str, venue: str, until_ns: int) -> Decimal:
        volume: Decimal = self._answer(symbol, "volume_24h", symbol, venue, until_ns)
        return volume

    def feed_state(self, symbol: str, venue: str) -> FeedState | None:
        state: FeedState | None = self._answer(symbol, "feed_state", symbol, venue)
        return state

    def candles(
        self, symbol: str, interval: Interval | str, start_ns: int, end_ns: int, venue: str | None = None
    ) -> list[CandleRow]:
        if venue is None:
            last = self.last_price(symbol)
            if last is None:
                return []
            venue = last.venue
        rows: list[CandleRow] = self._answer(symbol, "candles", symbol, Interval(interval), start_ns, end_ns, venue)
        return rows

    def trades_page(
        self, symbol: str, venue: str, start_ns: int, end_ns: int, after: tuple[int, str], limit: int
    ) -> list[TradeRecord]:
        """`RecordsRepository.trades` (a page of `/market/trades`): memory when it holds the
        page's range (the last 24 h), else the store."""
        args = (symbol, venue, start_ns, end_ns, after, limit)
        for attempt in range(2):
            try:
                page = self.only.trades_page(*args)
            except NotCovered:
                if attempt == 0:
                    self.ensure_warm(symbol)
                continue
            self.hits += 1
            return page
        self.misses += 1
        return RecordsRepository(self.repository).trades(*args)


class MemoryOnly:
    """The read model alone, as the market endpoints read it: `NotCovered` wherever MemoryMarket
    would ask the store (or warm a series from it). No I/O, so the async routes call it on the
    event loop and go to the threadpool, through MemoryMarket, only when it raises."""

    def __init__(self, market: MemoryMarket) -> None:
        self._market = market
        self.model = market.model

    def knows(self, symbol: str) -> bool:
        if self.model.has_symbol(symbol):
            return True
        raise NotCovered(f"{symbol} not in memory")

    def last_price(self, symbol: str, venue: str | None = None) -> LastTrade:
        if self.model.cold_series(symbol):
            raise NotCovered(f"{symbol} not warm")
        trade = self.model.last_trade(symbol, venue)
        if venue is None:
            # A venue the store knows and memory has not seen trade since it started may have
            # traded last: only the store can pick the default venue then.
            seen = self.model.venues(symbol)
            for other in self._market.store_only(symbol):
                if other.venue not in seen and other.event_ns >= trade.event_ns:
                    raise NotCovered(f"{other.venue}:{symbol} only in the store")
        return trade

    def volume_24h(self, symbol: str, venue: str, until_ns: int) -> Decimal:
        return self.model.volume_24h(symbol, venue, until_ns)

    def feed_state(self, symbol: str, venue: str) -> FeedState | None:
        return self.model.feed_state(symbol, venue)

    def candles(
        self, symbol: str, interval: Interval | str, start_ns: int, end_ns: int, venue: str | None = None
    ) -> list[CandleRow]:
        if venue is None:
            venue = self.last_price(symbol).venue
        return self.model.candles(symbol, Interval(interval).value, start_ns, end_ns, venue)

    def candle_fragments(
        self, symbol: str, interval: Interval | str, start_ns: int, end_ns: int, venue: str
    ) -> list[bytes]:
        """`candles`, each already rendered as its JSON object (api/models.py `candle_json`)."""
        return self.model.candle_fragments(symbol, Interval(interval).value, start_ns, end_ns, venue)

    def trades_page(
        self, symbol: str, venue: str, start_ns: int, end_ns: int, after: tuple[int, str], limit: int
    ) -> list[TradeRecord]:
        """The store's page (`TradeRecord`s) from the read model."""
        return self.model.trades_page(symbol, venue, start_ns, end_ns, after, limit)
