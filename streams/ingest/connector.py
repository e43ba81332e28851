"""Live venue connectors: ccxt.pro WebSockets in, Entasis raw topics out.

One `VenueConnector` per venue owns one ccxt.pro client and, per configured symbol, two
supervised loops: trades and the order book. The connector is generic: what differs between
venues (ccxt class and options, symbol spelling, trade numbering, backfill, book depth, the
sequence and checksum checks) is asked of the venue's `streams.core.venues.contract.Venue`.
What each loop guarantees:

- **Reconnects.** Any network error (a dropped socket, a timeout, a stalled socket the
  watchdog gave up on) is a `feed_disconnected` quality event; the loop waits an exponential
  backoff with full jitter and calls ccxt's `watch_*` again, which reconnects and
  resubscribes. The first data after that is `feed_connected`.
- **No lost or duplicated trades.** After a reconnect, the trades the venue printed while we
  were away are fetched over REST (`fetch_trades`) and published before the live ones;
  every trade id is checked against the recent ones, so re-sent trades are dropped. On venues
  that number trades consecutively (`Venue.consecutive_trade_ids`) a hole that the backfill
  could not fill is reported as `trade_gap`, with the ids missing.
- **Books are always whole.** ccxt keeps the book (snapshot plus diffs, checking sequence
  numbers or checksums; the checks ccxt does not make are the venue's, run by
  `streams.ingest.venues.ccxt_client`); a gap or checksum failure is `book_gap`, and the loop
  resubscribes, which takes a fresh snapshot: `book_resync`. The connector publishes the top
  `book_depth` levels as a `book_snapshot.v1` at most every `book_interval_s` (and the last
  change always), so a worker that starts late has a whole book within one interval.
- **Stalls.** A watchdog closes a socket that sent nothing for `stale_after_s`
  (`feed_stale`), which sends the loops through the reconnect path above.
- **Malformed frames** (not JSON, or a message ccxt's handler chokes on) go to the
  dead-letter topic and a counter; the socket goes on.
- **Start-up limits.** ccxt's rate limiter spaces the REST calls (markets, snapshots,
  backfills), and subscriptions are staggered by `stagger_s`, so 50 symbols do not arrive at
  the venue in one burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from ccxt.base.errors import BadRequest, BadSymbol, ExchangeError, InvalidNonce, NetworkError

from schemas import topics
from schemas.events import DeadLetter, QualityEvent, QualityKind, Trade
from schemas.venues import Feed
from schemas.wire import encode_book_batch, encode_event, encode_trade_batch, iter_batches
from streams.core.backoff import Backoff
from streams.core.candle_stream import RecentIds
from streams.core.venues.ccxt_events import CcxtParseError, book_from_ccxt, trade_from_ccxt, trade_id
from streams.core.venues.registry import LIVE_VENUES
from streams.ingest.publisher import Publisher
from streams.ingest.recorder import Recorder
from streams.ingest.venues.ccxt_client import guarded_exchange, plain_exchange

__all__ = ["ConnectorConfig", "FeedStats", "VenueConnector", "plain_exchange"]

log = logging.getLogger(__name__)

WallNs = Callable[[], int]
TRADES_PER_MESSAGE = 500


@dataclass(frozen=True)
class ConnectorConfig:
    book_depth: int = 100
    book_interval_s: float = 0.1
    stale_after_s: float = 15.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    stagger_s: float = 0.25  # between two subscriptions at start-up
    namespace: str = ""
    # base URL of a local exchange double; None reaches the real venues
    endpoint: str | None = None
    recent_ids: int = 20_000
    # after a reconnect, missed trades are fetched at the first live trade or after this long
    backfill_after_s: float = 1.0
    # where every received WebSocket frame is recorded (streams.core.recording); None: nowhere
    record_dir: str | None = None


@dataclass
class FeedStats:
    trades: int = 0
    duplicates: int = 0
    backfilled: int = 0
    missing: int = 0  # trade ids never seen, after backfill (consecutive-id venues only)
    trade_gaps: int = 0  # holes those ids fell in: one `trade_gap` event each
    books: int = 0
    book_gaps: int = 0
    book_resyncs: int = 0
    disconnects: int = 0
    reconnects: int = 0
    stale: int = 0
    malformed: int = 0
    connected_at: list[float] = field(default_factory=list)  # monotonic, each (re)connection
    disconnected_at: list[float] = field(default_factory=list)


class _FeedState:
    def __init__(self, feed: Feed, ccxt_symbol: str, recent: int) -> None:
        self.feed = feed
        self.ccxt_symbol = ccxt_symbol
        self.up: bool | None = None  # None: never connected yet
        self.recent = RecentIds(recent)
        self.last_trade: Trade | None = None
        self.need_backfill = False
        self.book: Any = None  # ccxt's order book (updated in place by ccxt)
        self.book_published: tuple[Any, ...] | None = None  # what the last published book was
        self.book_broken = False  # a gap or reconnect: the next book is a resync
        self.stats = FeedStats()


class VenueConnector:
    def __init__(self, venue: str, feeds: Iterable[Feed], publisher: Publisher,
                 config: ConnectorConfig | None = None, *, wall_ns: WallNs = time.time_ns,
                 rng: random.Random | None = None, exchange: Any = None) -> None:
        self.venue = venue
        self.adapter = LIVE_VENUES[venue]  # everything venue-specific is asked of it
        self.config = config or ConnectorConfig()
        self.publisher = publisher
        self.wall_ns = wall_ns
        self.rng = rng or random.Random()
        self.states = {f.symbol: _FeedState(f, self.adapter.ccxt_symbol(f.symbol), self.config.recent_ids)
                       for f in feeds if f.venue == venue}
        self._given_exchange = exchange
        self.recorder = Recorder(self.config.record_dir, venue) if self.config.record_dir else None
        self.exchange = exchange or guarded_exchange(venue, self.config.endpoint, self)
        ns = self.config.namespace
        self.topics = {t: t.full_name(ns) for t in (topics.TRADES, topics.BOOK, topics.QUALITY, topics.DEAD_LETTER)}
        self.malformed_frames = 0
        self._stale_limit_s = self.config.stale_after_s
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Runs until `stop()`; every loop restarts itself on errors, so this only ends on stop."""
        await self._load_markets()
        loops: list[Coroutine[Any, Any, None]] = []
        for state in self.states.values():
            loops.append(self._trades_loop(state))
            loops.append(self._book_loop(state))
        self._tasks = [asyncio.create_task(self._book_flusher(), name=f"{self.venue}-books"),
                       asyncio.create_task(self._watchdog(), name=f"{self.venue}-watchdog")]
        for i, loop in enumerate(loops):
            self._tasks.append(asyncio.create_task(self._staggered(i * self.config.stagger_s, loop)))
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._flush_books()
        with contextlib.suppress(Exception):
            await self.exchange.close()
        if self.recorder is not None:
            self.recorder.close()  # a restart reopens the day's files in append mode
        self.publisher.flush()

    def restart(self) -> None:
        """Ready to `run()` again after a failure: a fresh ccxt client, the feeds' state kept
        (what was published, so nothing is published twice)."""
        self._stopping = asyncio.Event()
        self._tasks = []
        if self._given_exchange is None:
            self.exchange = guarded_exchange(self.venue, self.config.endpoint, self)
        for state in self.states.values():
            if state.up:
                self._down(state, RuntimeError("the connector failed and is restarting"))
            state.need_backfill = True
            state.book = None
            state.book_broken = True

    async def _staggered(self, delay: float, loop: Coroutine[Any, Any, None]) -> None:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            loop.close()
            raise
        await loop

    async def _load_markets(self) -> None:
        backoff = self._backoff()
        while True:
            try:
                await self.exchange.load_markets()
                return
            except NetworkError as exc:
                delay = backoff.next()
                log.warning("%s: markets could not be loaded (%s); retrying in %.1fs", self.venue, exc, delay)
                await asyncio.sleep(delay)

    def _backoff(self) -> Backoff:
        return Backoff(self.config.backoff_initial_s, self.config.backoff_max_s, self.rng)

    # ---- trades -------------------------------------------------------------------------

    async def _trades_loop(self, state: _FeedState) -> None:
        backoff = self._backoff()
        symbol = state.ccxt_symbol
        while not self._stopping.is_set():
            try:
                if state.need_backfill:
                    trades = await self._watch_and_backfill(state, symbol)
                else:
                    # awaited directly, not as a task: a task starts a loop turn later, and a
                    # trade arriving in between would wake nobody (ccxt keeps no pending result)
                    trades = await self.exchange.watch_trades(symbol)
            except (BadSymbol, BadRequest) as exc:
                log.error("%s: cannot watch trades: %s", state.feed, exc)
                return
            except (NetworkError, ExchangeError) as exc:
                self._down(state, exc)
                state.need_backfill = True  # also before any trade: some may have come and gone
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self._up(state)
            recv = self.wall_ns()
            if self._hole_before(state, trades):
                await self._backfill(state, recv)  # a live trade skipped ids: REST may have them
            self._publish_trades(state, trades, recv)
            self._publish_trades(state, self._unread_tail(symbol, state), recv)

    def _unread_tail(self, symbol: str, state: _FeedState) -> list[dict[str, Any]]:
        """Trades ccxt cached while this loop was busy (publishing, backfilling). ccxt only
        wakes a watcher on the next message, so without this the last trades before a quiet
        spell would wait for the next trade. Read back from the newest to the first one known;
        the next watch returns them again and they are dropped as repeats."""
        cache = self.exchange.trades.get(symbol) if isinstance(self.exchange.trades, dict) else None
        tail: list[dict[str, Any]] = []
        for t in reversed(cache or ()):
            if trade_id(t) in state.recent:
                break
            tail.append(t)
        tail.reverse()
        return tail

    async def _watch_and_backfill(self, state: _FeedState, symbol: str) -> list[dict[str, Any]]:
        """Back after an outage: fetch what was missed once the new socket had time to
        subscribe, without waiting for a live trade (a quiet market has none)."""
        watch = asyncio.ensure_future(self.exchange.watch_trades(symbol))
        try:
            await asyncio.wait({watch}, timeout=self.config.backfill_after_s)
            if not watch.done() or watch.exception() is None:
                state.need_backfill = False
                recv = self.wall_ns()
                await self._backfill(state, recv)
                self._publish_trades(state, self._unread_tail(symbol, state), recv)
            trades: list[dict[str, Any]] = await watch
            return trades
        finally:
            if not watch.done():
                watch.cancel()

    def _hole_before(self, state: _FeedState, trades: list[dict[str, Any]]) -> bool:
        steps = [self._ids_after_last(state, t.get("id")) for t in trades]
        return bool(steps) and None not in steps and min(s for s in steps if s is not None) > 1

    def _ids_after_last(self, state: _FeedState, raw_id: Any) -> int | None:
        """How many ids a trade lies after the last one published, on a venue that numbers
        trades consecutively (1: the next one); None where that cannot be told."""
        last = state.last_trade
        if not self.adapter.consecutive_trade_ids or last is None:
            return None
        try:
            return int(raw_id) - int(last.trade_id)
        except (TypeError, ValueError):
            return None

    async def _backfill(self, state: _FeedState, recv: int) -> None:
        """What the venue printed while we were away, from REST, before the live trades. With
        no trade published yet, the venue's latest trades (some may predate the connector)."""
        last = state.last_trade
        policy = self.adapter.backfill
        since = last.event_ts_ns // 1_000_000 if policy.since and last is not None else None
        params = dict(policy.params)
        if policy.until and since is not None:
            params["until"] = max(recv // 1_000_000, since + 1)
        try:
            fetched = await self.exchange.fetch_trades(state.ccxt_symbol, since, 1000, params)
        except (NetworkError, ExchangeError) as exc:
            log.warning("%s: backfill failed: %s", state.feed, exc)
            return
        before = state.stats.trades
        self._publish_trades(state, fetched, recv)
        state.stats.backfilled += state.stats.trades - before

    def _publish_trades(self, state: _FeedState, raw: list[dict[str, Any]], recv: int) -> None:
        fresh: list[Trade] = []
        for t in sorted(raw, key=_trade_order):
            if not state.recent.add(trade_id(t)) or self._older(state, t):
                state.stats.duplicates += 1
                continue
            try:
                trade = trade_from_ccxt(self.venue, state.feed.symbol, t, recv)
            except CcxtParseError as exc:
                self._dead_letter(state.feed.symbol, f"trade:{state.ccxt_symbol}", t, str(exc))
                continue
            self._check_gap(state, trade)
            fresh.append(trade)
            state.last_trade = trade
        if fresh:
            self._stale_limit_s = self.config.stale_after_s  # the market is trading: a stall is a stall again
        for batch in iter_batches(fresh, TRADES_PER_MESSAGE):
            self.publisher.publish(self.topics[topics.TRADES], state.feed.key.encode(),
                                   encode_trade_batch(self.venue, state.feed.symbol, batch))
        state.stats.trades += len(fresh)

    def _older(self, state: _FeedState, t: dict[str, Any]) -> bool:
        """A consecutively numbered trade at or before the last one published is a re-send."""
        step = self._ids_after_last(state, t.get("id"))
        return step is not None and step <= 0

    def _check_gap(self, state: _FeedState, trade: Trade) -> None:
        step = self._ids_after_last(state, trade.trade_id)
        if step is not None and step > 1:
            last = state.last_trade
            assert last is not None  # a step is only measured from a published trade
            state.stats.missing += step - 1
            state.stats.trade_gaps += 1
            self._quality(state.feed.symbol, QualityKind.TRADE_GAP, trade.event_ts_ns,
                          {"after_trade_id": last.trade_id, "next_trade_id": trade.trade_id, "missing": step - 1})

    # ---- books --------------------------------------------------------------------------

    async def _book_loop(self, state: _FeedState) -> None:
        backoff = self._backoff()
        symbol = state.ccxt_symbol
        while not self._stopping.is_set():
            try:
                book = await self.exchange.watch_order_book(symbol, self.adapter.book_limit)
            except (BadSymbol, BadRequest) as exc:
                log.error("%s: cannot watch the order book: %s", state.feed, exc)
                return
            except InvalidNonce as exc:  # a sequence gap or a checksum mismatch (ChecksumError)
                self._book_gap(state, exc)
                await asyncio.sleep(min(backoff.next(), 1.0))
                continue
            except (NetworkError, ExchangeError) as exc:
                self._down(state, exc)
                state.book_broken = True
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self._up(state)
            state.book = book
            if state.book_broken:
                state.book_broken = False
                state.stats.book_resyncs += 1
                self._quality(state.feed.symbol, QualityKind.BOOK_RESYNC, self.wall_ns(),
                              {"source": "snapshot", "nonce": book.get("nonce")})

    def _book_gap(self, state: _FeedState, exc: Exception) -> None:
        state.stats.book_gaps += 1
        state.book_broken = True
        state.book = None  # never publish a book ccxt gave up on
        self._quality(state.feed.symbol, QualityKind.BOOK_GAP, self.wall_ns(),
                      {"reason": type(exc).__name__, "error": str(exc)[:300]})

    async def _book_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.config.book_interval_s)
            self._flush_books()

    def _flush_books(self) -> None:
        for state in self.states.values():
            if state.book is None or state.book_broken:
                continue
            version = _book_version(state.book, self.config.book_depth)
            if version != state.book_published:
                state.book_published = version
                self._publish_book(state)

    def _publish_book(self, state: _FeedState) -> None:
        recv = self.wall_ns()
        nonce = state.book.get("nonce")
        # the venue's update id where ccxt's nonce is one (Binance's `u`), else our receive time:
        # either only grows, across reconnects and restarts of this process
        update_id = nonce if self.adapter.book_update_id_is_venue_id and isinstance(nonce, int) else recv
        try:
            snap = book_from_ccxt(self.venue, state.feed.symbol, state.book, self.config.book_depth, update_id, recv)
        except CcxtParseError as exc:
            self._dead_letter(state.feed.symbol, f"book:{state.ccxt_symbol}", {}, str(exc))
            return
        self.publisher.publish(self.topics[topics.BOOK], state.feed.key.encode(),
                               encode_book_batch(self.venue, state.feed.symbol, [snap]))
        state.stats.books += 1

    # ---- connection state -----------------------------------------------------------------

    def _down(self, state: _FeedState, exc: Exception) -> None:
        if state.up is False:
            return
        state.stats.disconnects += 1
        log.warning("%s disconnected: %s: %s", state.feed, type(exc).__name__, exc)
        self._mark_down(state, QualityKind.FEED_DISCONNECTED, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"})

    def _mark_down(self, state: _FeedState, kind: QualityKind, detail: dict[str, Any]) -> None:
        state.up = False
        state.stats.disconnected_at.append(time.monotonic())
        self._quality(state.feed.symbol, kind, self.wall_ns(), detail)

    def _up(self, state: _FeedState) -> None:
        if state.up:
            return
        if state.up is False:
            state.stats.reconnects += 1
        state.up = True
        state.stats.connected_at.append(time.monotonic())
        self._quality(state.feed.symbol, QualityKind.FEED_CONNECTED, self.wall_ns(), {"source": "ccxt"})

    async def _watchdog(self) -> None:
        """Gives up on sockets that went silent: ccxt would wait on them forever.

        A venue that answered the resubscription (a fresh snapshot) but stays silent is alive
        and quiet (an illiquid market, or a double at the end of its recording): each stall in
        a row doubles the limit, up to 16 times, so it is not restarted every few seconds; a
        trade brings the limit back (`_stale_limit_s`)."""
        while True:
            await asyncio.sleep(min(1.0, self.config.stale_after_s / 4))
            now_ms = time.time() * 1000
            limit_ms = self._stale_limit_s * 1000
            for client in list(self.exchange.clients.values()):
                last = getattr(client, "_entasis_last_data", None) or getattr(client, "connectionEstablished", None)
                if client.closed() or last is None or now_ms - last < limit_ms:
                    continue
                self._stale_limit_s = min(self._stale_limit_s * 2, self.config.stale_after_s * 16)
                silent_s = (now_ms - last) / 1000
                for state in self.states.values():
                    if state.up:
                        state.stats.stale += 1
                        detail = {"silent_s": round(silent_s, 3), "url": client.url}
                        self._mark_down(state, QualityKind.FEED_STALE, detail)
                log.warning("%s: %s sent nothing for %.1fs; reconnecting", self.venue, client.url, silent_s)
                self._restart(client, NetworkError(f"no message for {silent_s:.1f}s"))

    # ---- output helpers --------------------------------------------------------------------

    def _quality(self, symbol: str, kind: QualityKind, event_ts_ns: int, detail: dict[str, Any]) -> None:
        event = QualityEvent(venue=self.venue, symbol=symbol, event_ts_ns=event_ts_ns, recv_ts_ns=self.wall_ns(),
                             kind=kind, detail=detail)
        self.publisher.publish(self.topics[topics.QUALITY], f"{self.venue}:{symbol}".encode(), encode_event(event))

    def books_broken(self, client: Any, reason: str) -> None:
        """A message of the socket never arrived, or a book drifted from the venue's: every
        book on the socket is suspect. They are dropped, and the socket restarted, so the
        resubscriptions bring fresh snapshots."""
        if getattr(client, "_entasis_restarting", False):
            return
        client._entasis_restarting = True
        for state in self.states.values():
            self._book_gap(state, InvalidNonce(reason))
        self._restart(client, InvalidNonce(reason))

    def _restart(self, client: Any, error: Exception) -> None:
        """Close a socket from inside ccxt's callbacks: the watchers get `error` and reconnect,
        and their resubscription brings fresh snapshots."""
        # ccxt's own error path: it rejects the pending watchers with `error`, forgets the
        # client (the next watch dials a new socket and subscribes afresh) and closes this one
        client.on_error(error)

    def raw_frame(self, data: Any) -> None:
        """A frame as the venue sent it, before ccxt decodes it: recorded when recording."""
        if self.recorder is not None and isinstance(data, str | bytes | bytearray):
            self.recorder.write(self.wall_ns(), data)

    def malformed(self, url: str, message: Any, error: str) -> None:
        self.malformed_frames += 1
        self._dead_letter(None, f"ws:{url}", message, error)

    def _dead_letter(self, symbol: str | None, source: str, raw: Any, error: str) -> None:
        body = raw if isinstance(raw, bytes) else (raw if isinstance(raw, str) else repr(raw)).encode()
        letter = DeadLetter(venue=self.venue, symbol=symbol, source=source, error=error[:1000],
                            raw_hex=body[:65536].hex(), recv_ts_ns=self.wall_ns())
        self.publisher.publish(self.topics[topics.DEAD_LETTER], self.venue.encode(), encode_event(letter))

    def stats(self) -> dict[str, FeedStats]:
        return {s.feed.key: s.stats for s in self.states.values()}


def _book_version(book: Any, depth: int) -> tuple[Any, ...]:
    """Changes whenever ccxt applied an update within the published depth: ccxt mutates its book
    in place, also between two wake-ups of the book loop, so the flusher compares versions rather
    than flags. The levels themselves are part of it: a venue without a nonce (Kraken) can change
    a deeper level within the same millisecond, which nonce, time and the best levels miss."""
    bids, asks = book["bids"], book["asks"]
    return (book.get("nonce"), book.get("timestamp"), len(bids), len(asks),
            hash(tuple(map(tuple, bids[:depth]))), hash(tuple(map(tuple, asks[:depth]))))


def _trade_order(t: dict[str, Any]) -> tuple[int, int, str]:
    """Time, then the id as a number where it is one: a backfill page and a live batch merge in order."""
    raw = t.get("id")
    try:
        numeric = int(raw) if raw is not None else 0
    except (TypeError, ValueError):
        numeric = 0
    return (t.get("timestamp") or 0, numeric, str(raw))
