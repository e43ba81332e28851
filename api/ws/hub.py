"""Latest market state of this API process and the routing of every update to the sockets
subscribed to it. Plain object, driven by `publish_*` calls: the Kafka feed calls them in
production, tests call them directly.

Everything runs on the event loop, so there are no locks; a publish only puts into the
subscribers' queues (microseconds a subscriber) and never awaits a socket. An update is rendered
once per (channel, symbol, depth) and the same text goes to every subscriber; so is a merge of
updates, shared by every client that fell behind at the same point."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from api.ws.protocol import MARKET, ORDERBOOK, Level, market_message, orderbook_message
from api.ws.queue import ConflatingQueue, QueueOverflow, Update

logger = logging.getLogger("api.ws")

CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455: "try again later", the close a too-slow client gets


class MarketUpdate:
    """One trade batch of a symbol, rendered once and shared by every subscriber."""

    __slots__ = ("_merged", "_text", "event_ts_ns", "price", "symbol", "volume")

    def __init__(self, symbol: str, price: Decimal, event_ts_ns: int, volume: Decimal) -> None:
        self.symbol = symbol
        self.price = price
        self.event_ts_ns = event_ts_ns
        self.volume = volume
        self._text: str | None = None
        # merges into this update, by the pending update they replaced (see `merge`)
        self._merged: dict[MarketUpdate, MarketUpdate] | None = None

    def render(self) -> str:
        if self._text is None:
            self._text = market_message(self.symbol, self.price, self.event_ts_ns, self.volume)
        return self._text

    def merge(self, newer: Update) -> Update:
        # The newest price and time, and the size traded since the last message the client got:
        # conflation must not make volume disappear. Every subscriber sees the same sequence of
        # updates, so clients that fell behind at the same point hold the same pending update:
        # the merge is kept on `newer`, and they share one object and one rendering.
        assert isinstance(newer, MarketUpdate)
        merged_into = newer._merged
        if merged_into is None:
            merged_into = newer._merged = {}
        merged = merged_into.get(self)
        if merged is None:
            merged = MarketUpdate(newer.symbol, newer.price, newer.event_ts_ns, self.volume + newer.volume)
            merged_into[self] = merged
        return merged

    def offered(self) -> None:
        """Every subscriber has been offered this update: no more merges into it, so forget
        them (they hold the pending updates they replaced, which would otherwise chain every
        update ever published to the latest one)."""
        self._merged = None


class BookUpdate:
    """A rendered top-of-book at one depth; a newer one replaces it outright (each is complete)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def render(self) -> str:
        return self.text

    def merge(self, newer: Update) -> Update:
        return newer


@dataclass
class BookState:
    venue: str
    symbol: str
    bids: Sequence[Level]
    asks: Sequence[Level]
    event_ts_ns: int
    _rendered: dict[int, BookUpdate] = field(default_factory=dict)

    def at_depth(self, depth: int) -> BookUpdate:
        # Subscribers share a handful of depths: render each once per book version.
        update = self._rendered.get(depth)
        if update is None:
            update = BookUpdate(orderbook_message(self.symbol, self.bids, self.asks, self.event_ts_ns, depth))
            self._rendered[depth] = update
        return update


class Session:
    """The hub's view of one socket: its queue, its subscriptions and whether it must go."""

    def __init__(
        self, max_subscriptions: int, clock: Callable[[], float] = time.monotonic, *, max_backlog: int = 256
    ) -> None:
        # +1 so an orderbook and market key of the same symbol never overflow a full socket.
        self.queue = ConflatingQueue(max_keys=max_subscriptions + 1, clock=clock, max_backlog=max_backlog)
        self.market: set[str] = set()
        self.books: dict[str, int] = {}  # symbol -> depth
        self.close_code: int | None = None
        self.close_reason = ""
        self.closing = asyncio.Event()

    @property
    def subscription_count(self) -> int:
        return len(self.market) + len(self.books)

    def kick(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.closing.set()


class MarketHub:
    """`slow_close_after_s`: a socket whose oldest undelivered update is older than this is closed
    with 1013. `max_subscriptions`: per socket, each (channel, symbol) counting one. `max_backlog`:
    how many updates may wait for a socket before it counts as behind and its updates conflate
    (see api/ws/queue.py); up to then it gets every update."""

    def __init__(
        self,
        *,
        slow_close_after_s: float = 5.0,
        max_subscriptions: int = 100,
        max_backlog: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slow_close_after_s = slow_close_after_s
        self.max_subscriptions = max_subscriptions
        self.max_backlog = max_backlog
        self._clock = clock
        self._market_subs: dict[str, set[Session]] = {}
        self._book_subs: dict[str, dict[Session, int]] = {}
        self.last_trade: dict[str, MarketUpdate] = {}
        self.books: dict[str, BookState] = {}
        self.sessions: set[Session] = set()
        self.updates = 0  # publish calls (statistics)
        self.slow_closed = 0

    # --- sockets -----------------------------------------------------------------------

    def open_session(self) -> Session:
        session = Session(self.max_subscriptions, self._clock, max_backlog=self.max_backlog)
        self.sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        self.sessions.discard(session)
        for symbol in session.market:
            subs = self._market_subs.get(symbol)
            if subs is not None:
                subs.discard(session)
                if not subs:
                    del self._market_subs[symbol]
        for symbol in session.books:
            book_subs = self._book_subs.get(symbol)
            if book_subs is not None:
                book_subs.pop(session, None)
                if not book_subs:
                    del self._book_subs[symbol]
        session.market.clear()
        session.books.clear()

    def seen(self, symbol: str) -> bool:
        """Whether the feed has carried this symbol since the process started."""
        return symbol in self.last_trade or symbol in self.books

    def new_subscriptions(self, session: Session, channel: str, symbols: Iterable[str]) -> int:
        """How many of `symbols` the session does not hold yet on `channel` (for the cap)."""
        held: set[str] | dict[str, int] = session.market if channel == MARKET else session.books
        return sum(1 for s in symbols if s not in held)

    def subscribe_market(self, session: Session, symbols: Iterable[str]) -> None:
        """Subscribe, then queue the latest price of each symbol the process knows, so the client
        starts from the current value (the queue sends the acknowledgement queued before)."""
        for symbol in symbols:
            session.market.add(symbol)
            self._market_subs.setdefault(symbol, set()).add(session)
            last = self.last_trade.get(symbol)
            if last is not None:
                self._offer(session, (MARKET, symbol), last)

    def unsubscribe_market(self, session: Session, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            session.market.discard(symbol)
            subs = self._market_subs.get(symbol)
            if subs is not None:
                subs.discard(session)
                if not subs:
                    del self._market_subs[symbol]
            session.queue.discard((MARKET, symbol))

    def subscribe_book(self, session: Session, symbol: str, depth: int) -> None:
        """Subscribe (a new depth replaces the old one) and queue the current book at that depth:
        every orderbook message is a full snapshot, the first one included."""
        session.books[symbol] = depth
        self._book_subs.setdefault(symbol, {})[session] = depth
        book = self.books.get(symbol)
        if book is not None:
            self._offer(session, (ORDERBOOK, symbol), book.at_depth(depth))

    def unsubscribe_book(self, session: Session, symbol: str) -> None:
        session.books.pop(symbol, None)
        subs = self._book_subs.get(symbol)
        if subs is not None:
            subs.pop(session, None)
            if not subs:
                del self._book_subs[symbol]
        session.queue.discard((ORDERBOOK, symbol))

    # --- feed --------------------------------------------------------------------------

    def publish_trades(self, symbol: str, price: Decimal, event_ts_ns: int, volume: Decimal) -> None:
        """One update of `symbol`: the last price of a trade batch and the size the batch traded."""
        update = MarketUpdate(symbol, price, event_ts_ns, volume)
        self.last_trade[symbol] = update
        self.updates += 1
        subs = self._market_subs.get(symbol)
        if subs:
            key = (MARKET, symbol)
            for session in tuple(subs):
                self._offer(session, key, update)
            update.offered()

    def publish_book(
        self, venue: str, symbol: str, bids: Sequence[Level], asks: Sequence[Level], event_ts_ns: int
    ) -> None:
        """A new top of `symbol`'s book. One venue's book per symbol: the first venue seen keeps
        it, since interleaving two venues' books would show a client neither."""
        current = self.books.get(symbol)
        if current is not None and current.venue != venue:
            return
        book = BookState(venue, symbol, bids, asks, event_ts_ns)
        self.books[symbol] = book
        self.updates += 1
        subs = self._book_subs.get(symbol)
        if subs:
            key = (ORDERBOOK, symbol)
            for session, depth in tuple(subs.items()):
                self._offer(session, key, book.at_depth(depth))

    def _offer(self, session: Session, key: tuple[str, str], update: Update) -> None:
        if session.close_code is not None:
            return
        try:
            session.queue.put(key, update)
        except QueueOverflow as exc:
            self._slow(session, str(exc))
            return
        if session.queue.lag() > self.slow_close_after_s:
            self._slow(session, f"behind by more than {self.slow_close_after_s:g} s")

    def _slow(self, session: Session, why: str) -> None:
        self.slow_closed += 1
        logger.info("closing a slow WebSocket client (1013): %s", why)
        session.kick(CLOSE_TRY_AGAIN_LATER, "too slow")
