"""Latest market state of this API process and the routing of every update to the sockets
subscribed to it. Plain object, driven by `publish_*` calls: the Kafka feed calls them in
production, tests call them directly.

Everything is keyed by venue and symbol: a subscription is (channel, venue, symbol), or
(channel, venue, symbol, interval) for candles, so two venues of one symbol never interleave on
one subscription. A subscription without `exchange` is bound when it is made to the symbol's
default venue, the REST rule: the venue with the most recent trade (event time; ties:
alphabetically first); with no trade of the symbol seen, the venue that last published on the
channel (`venue_for`). When no venue of the symbol is known yet it waits, bound to no venue
(`PENDING`), and binds to the first venue that publishes on its channel.

Everything runs on the event loop, so there are no locks; a publish only puts into the
subscribers' queues (microseconds a subscriber) and never awaits a socket. An update is rendered
once per (channel, venue, symbol, depth or interval) and the same text goes to every subscriber;
so is a merge of updates, shared by every client that fell behind at the same point. Each
subscription numbers the updates offered to it (`seq`, from 1); the number is spliced into the
shared text when the socket's sender takes it (api/ws/queue.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from api.ws.protocol import (
    CANDLES,
    MARKET,
    ORDERBOOK,
    CandleBar,
    Level,
    candle_message,
    market_message,
    orderbook_message,
)
from api.ws.queue import ConflatingQueue, Key, QueueOverflow, Update

logger = logging.getLogger("api.ws")

CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455: "try again later", the close a too-slow client gets
PENDING = ""  # the venue of a subscription made before any venue of its symbol was known

# Quality kinds after which a venue's book is not trusted until its next snapshot: a sequence gap
# (the book agent drops the book and waits for a snapshot) and the feed marked down.
BOOK_INVALIDATING_KINDS = frozenset({"book_gap", "stale_feed", "feed_disconnected", "feed_stale"})
# A book whose last update is older than this, in event time, than the venue's latest trade of
# the symbol is stale: trades go on and the top did not move, so its publisher has stopped.
BOOK_STALE_AFTER_NS = 30 * 10**9


def sub_key(channel: str, venue: str, symbol: str, interval: str | None = None) -> Key:
    return (channel, venue, symbol) if interval is None else (channel, venue, symbol, interval)


class MarketUpdate:
    """One trade batch of a (venue, symbol), rendered once and shared by every subscriber."""

    __slots__ = ("_merged", "_text", "event_ts_ns", "price", "symbol", "venue", "volume")

    def __init__(self, venue: str, symbol: str, price: Decimal, event_ts_ns: int, volume: Decimal) -> None:
        self.venue = venue
        self.symbol = symbol
        self.price = price
        self.event_ts_ns = event_ts_ns
        self.volume = volume
        self._text: str | None = None
        # merges into this update, by the pending update they replaced (see `merge`)
        self._merged: dict[MarketUpdate, MarketUpdate] | None = None

    def render(self) -> str:
        if self._text is None:
            self._text = market_message(self.venue, self.symbol, self.price, self.event_ts_ns, self.volume)
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
            merged = MarketUpdate(newer.venue, newer.symbol, newer.price, newer.event_ts_ns, self.volume + newer.volume)
            merged_into[self] = merged
        return merged

    def offered(self) -> None:
        """Every subscriber has been offered this update: no more merges into it, so forget
        them (they hold the pending updates they replaced, which would otherwise chain every
        update ever published to the latest one)."""
        self._merged = None


class Replacing:
    """A complete rendered value (a book at one depth, a candle revision); a newer one replaces it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def render(self) -> str:
        return self.text

    def merge(self, newer: Update) -> Update:
        return newer


BookUpdate = Replacing


@dataclass
class BookState:
    venue: str
    symbol: str
    bids: Sequence[Level]
    asks: Sequence[Level]
    event_ts_ns: int
    _rendered: dict[int, Replacing] = field(default_factory=dict)

    def at_depth(self, depth: int) -> Replacing:
        # Subscribers share a handful of depths: render each once per book version.
        update = self._rendered.get(depth)
        if update is None:
            update = Replacing(
                orderbook_message(self.venue, self.symbol, self.bids, self.asks, self.event_ts_ns, depth)
            )
            self._rendered[depth] = update
        return update


@dataclass(frozen=True)
class BookHealth:
    """Why a venue's book cannot be served as live: `state` is `invalid` (a gap or a feed-down mark
    after its last update) or `stale` (trades went on without it); `since`: the mark's or the
    book's event time."""

    state: str
    reason: str
    since_ns: int


class Session:
    """The hub's view of one socket: its queue, its subscriptions and whether it must go."""

    def __init__(
        self, max_subscriptions: int, clock: Callable[[], float] = time.monotonic, *, max_backlog: int = 256
    ) -> None:
        self.queue = ConflatingQueue(max_keys=max_subscriptions + 1, clock=clock, max_backlog=max_backlog)
        self.subs: dict[Key, int] = {}  # subscription -> its book depth (0 on other channels)
        self.seq: dict[Key, int] = {}  # subscription -> the seq of the last update offered to it
        self.close_code: int | None = None
        self.close_reason = ""
        self.closing = asyncio.Event()

    @property
    def subscription_count(self) -> int:
        return len(self.subs)

    def kick(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.closing.set()


class MarketHub:
    """`slow_close_after_s`: a socket whose oldest undelivered update is older than this is closed
    with 1013. `max_subscriptions`: per socket, each (channel, venue, symbol[, interval]) counting
    one. `max_backlog`: how many updates may wait for a socket before it counts as behind and its
    updates conflate (see api/ws/queue.py); up to then it gets every update."""

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
        self._subs: dict[Key, dict[Session, int]] = {}
        self.trades: dict[tuple[str, str], MarketUpdate] = {}  # (venue, symbol) -> its latest
        self.last_trade: dict[str, MarketUpdate] = {}  # symbol -> the default venue's latest
        self.books: dict[tuple[str, str], BookState] = {}  # (venue, symbol)
        self.candles: dict[tuple[str, str, str], Replacing] = {}  # (venue, symbol, interval) -> latest
        self.book_marks: dict[tuple[str, str], tuple[str, int]] = {}  # (venue, symbol) -> (kind, event ns)
        self._venues: dict[str, set[str]] = {}  # symbol -> venues seen on any channel
        self._last_publisher: dict[tuple[str, str], str] = {}  # (channel, symbol) -> venue
        self.sessions: set[Session] = set()
        self.updates = 0  # publish calls (statistics)
        self.slow_closed = 0

    # --- what the hub knows ----------------------------------------------------------------

    def seen(self, symbol: str, venue: str | None = None) -> bool:
        """Whether the feed has carried this symbol (on `venue`) since the process started."""
        venues = self._venues.get(symbol)
        if not venues:
            return False
        return venue is None or venue in venues

    def venues(self, symbol: str) -> frozenset[str]:
        return frozenset(self._venues.get(symbol, ()))

    def default_venue(self, symbol: str) -> str | None:
        """The REST rule: the venue with the most recent trade of `symbol` (None: no trade yet)."""
        last = self.last_trade.get(symbol)
        return None if last is None else last.venue

    def venue_for(self, channel: str, symbol: str) -> str | None:
        """The venue a subscription without `exchange` binds to: the default venue; when the process
        has seen no trade of the symbol, the venue that last published on `channel` (None: none)."""
        default = self.default_venue(symbol)
        return default if default is not None else self._last_publisher.get((channel, symbol))

    def book_health(self, venue: str, symbol: str) -> BookHealth | None:
        """None when the venue's book is live; otherwise why not (`BOOK_*` rules above). A book
        that never arrived is not judged here (the caller has none to serve)."""
        book = self.books.get((venue, symbol))
        if book is None:
            return None
        mark = self.book_marks.get((venue, symbol))
        if mark is not None and mark[1] >= book.event_ts_ns:
            return BookHealth("invalid", mark[0], mark[1])
        trade = self.trades.get((venue, symbol))
        if trade is not None and trade.event_ts_ns - book.event_ts_ns > BOOK_STALE_AFTER_NS:
            return BookHealth("stale", "no book update while trading went on", book.event_ts_ns)
        return None

    # --- sockets -----------------------------------------------------------------------

    def open_session(self) -> Session:
        session = Session(self.max_subscriptions, self._clock, max_backlog=self.max_backlog)
        self.sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        self.sessions.discard(session)
        for key in tuple(session.subs):
            self._drop(session, key)

    def new_subscriptions(self, session: Session, keys: Iterable[Key]) -> int:
        """How many of `keys` the session does not hold yet (for the cap)."""
        return sum(1 for key in set(keys) if key not in session.subs)

    def subscribe(self, session: Session, key: Key, depth: int = 0) -> None:
        """Subscribe (on a held orderbook subscription a new depth replaces the old one), then
        queue the latest value the process knows of it, so the client starts from the current
        value: the last price, the book at that depth (every orderbook message is a full
        snapshot, the first one included), the last candle revision. A new subscription starts
        at seq 1; a held one keeps counting."""
        session.subs[key] = depth
        session.seq.setdefault(key, 0)
        self._subs.setdefault(key, {})[session] = depth
        channel, venue, symbol = key[0], key[1], key[2]
        if venue == PENDING:
            return
        latest: Update | None
        if channel == MARKET:
            latest = self.trades.get((venue, symbol))
        elif channel == ORDERBOOK:
            book = self.books.get((venue, symbol))
            latest = None if book is None else book.at_depth(depth)
        else:
            latest = self.candles.get((venue, symbol, key[3]))
        if latest is not None:
            self._offer(session, key, latest)

    def unsubscribe(
        self, session: Session, channel: str, symbol: str, venue: str | None, interval: str | None = None
    ) -> None:
        """Drop the session's subscriptions of `symbol` on `channel` (and `interval`): the one
        bound to `venue`, or every venue's when None. Nothing of them arrives after this."""
        for key in tuple(session.subs):
            held = key[0] == channel and key[2] == symbol
            if held and (venue is None or key[1] == venue) and (interval is None or key[3] == interval):
                self._drop(session, key)

    def _drop(self, session: Session, key: Key) -> None:
        session.subs.pop(key, None)
        session.seq.pop(key, None)
        subs = self._subs.get(key)
        if subs is not None:
            subs.pop(session, None)
            if not subs:
                del self._subs[key]
        session.queue.discard(key)

    # --- compatibility helpers (a market or book subscription by symbols) -------------------

    def subscribe_market(self, session: Session, symbols: Iterable[str], venue: str | None = None) -> None:
        for symbol in symbols:
            self.subscribe(session, sub_key(MARKET, self._bound(symbol, venue, MARKET), symbol))

    def unsubscribe_market(self, session: Session, symbols: Iterable[str], venue: str | None = None) -> None:
        for symbol in symbols:
            self.unsubscribe(session, MARKET, symbol, venue)

    def subscribe_book(self, session: Session, symbol: str, depth: int, venue: str | None = None) -> None:
        self.subscribe(session, sub_key(ORDERBOOK, self._bound(symbol, venue, ORDERBOOK), symbol), depth)

    def unsubscribe_book(self, session: Session, symbol: str, venue: str | None = None) -> None:
        self.unsubscribe(session, ORDERBOOK, symbol, venue)

    def _bound(self, symbol: str, venue: str | None, channel: str) -> str:
        if venue is not None:
            return venue
        default = self.venue_for(channel, symbol)
        return PENDING if default is None else default

    # --- feed --------------------------------------------------------------------------

    def publish_trades(self, venue: str, symbol: str, price: Decimal, event_ts_ns: int, volume: Decimal) -> None:
        """One update of (venue, symbol): the last price of a trade batch and the size it traded."""
        update = MarketUpdate(venue, symbol, price, event_ts_ns, volume)
        self.trades[(venue, symbol)] = update
        self._note(venue, symbol)
        self._elect_default(symbol, update)
        self.updates += 1
        key = self._bind_pending(sub_key(MARKET, venue, symbol))
        subs = self._subs.get(key)
        if subs:
            for session in tuple(subs):
                self._offer(session, key, update)
            update.offered()

    def publish_book(
        self, venue: str, symbol: str, bids: Sequence[Level], asks: Sequence[Level], event_ts_ns: int
    ) -> None:
        """A new top of (venue, symbol)'s book."""
        book = BookState(venue, symbol, bids, asks, event_ts_ns)
        self.books[(venue, symbol)] = book
        self._note(venue, symbol)
        self._last_publisher[(ORDERBOOK, symbol)] = venue
        self.updates += 1
        key = self._bind_pending(sub_key(ORDERBOOK, venue, symbol))
        subs = self._subs.get(key)
        if subs:
            for session, depth in tuple(subs.items()):
                self._offer(session, key, book.at_depth(depth))

    def publish_candle(self, venue: str, symbol: str, interval: str, bar: CandleBar) -> None:
        """One revision of a candle (a window's close, a late trade's revision, the final one)."""
        update = Replacing(candle_message(venue, symbol, interval, bar))
        self.candles[(venue, symbol, interval)] = update
        self._note(venue, symbol)
        self._last_publisher[(CANDLES, symbol)] = venue
        self.updates += 1
        key = self._bind_pending(sub_key(CANDLES, venue, symbol, interval))
        subs = self._subs.get(key)
        if subs:
            for session in tuple(subs):
                self._offer(session, key, update)

    def publish_quality(self, venue: str, symbol: str, kind: str, event_ts_ns: int) -> None:
        """A data-quality event; the hub keeps the latest that invalidates a venue's book."""
        if kind not in BOOK_INVALIDATING_KINDS:
            return
        mark = self.book_marks.get((venue, symbol))
        if mark is None or event_ts_ns >= mark[1]:
            self.book_marks[(venue, symbol)] = (kind, event_ts_ns)

    def _note(self, venue: str, symbol: str) -> None:
        venues = self._venues.get(symbol)
        if venues is None:
            self._venues[symbol] = {venue}
        elif venue not in venues:
            venues.add(venue)

    def _elect_default(self, symbol: str, update: MarketUpdate) -> None:
        current = self.last_trade.get(symbol)
        if current is None or current.venue == update.venue:
            if current is not None and update.event_ts_ns < current.event_ts_ns:
                # this venue went back in time: another venue may lead now
                update = min(
                    (t for (v, s), t in self.trades.items() if s == symbol),
                    key=lambda t: (-t.event_ts_ns, t.venue),
                )
            self.last_trade[symbol] = update
        elif (update.event_ts_ns, current.venue) > (current.event_ts_ns, update.venue):
            self.last_trade[symbol] = update

    def _bind_pending(self, key: Key) -> Key:
        """The first venue to publish on a channel for a symbol takes the subscriptions that were
        waiting for one; returns `key`."""
        pending_key = (key[0], PENDING, *key[2:])
        waiting = self._subs.pop(pending_key, None)
        if waiting:
            subs = self._subs.setdefault(key, {})
            for session, depth in waiting.items():
                seq = session.seq.pop(pending_key, 0)
                session.subs.pop(pending_key, None)
                if key not in session.subs:
                    session.subs[key] = depth
                    session.seq[key] = seq
                    subs[session] = depth
        return key

    def _offer(self, session: Session, key: Key, update: Update) -> None:
        if session.close_code is not None:
            return
        seq = session.seq.get(key, 0) + 1
        session.seq[key] = seq
        try:
            session.queue.put(key, update, seq)
        except QueueOverflow as exc:
            self._slow(session, str(exc))
            return
        if session.queue.lag() > self.slow_close_after_s:
            self._slow(session, f"behind by more than {self.slow_close_after_s:g} s")

    def _slow(self, session: Session, why: str) -> None:
        self.slow_closed += 1
        logger.info("closing a slow WebSocket client (1013): %s", why)
        session.kick(CLOSE_TRY_AGAIN_LATER, "too slow")
