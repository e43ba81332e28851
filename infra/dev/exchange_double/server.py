"""A local exchange double: one aiohttp server on loopback that speaks several venues' public
WebSocket and REST protocols and plays recorded raw messages, with faults on demand.

Each venue is a `VenueDouble` mounted under `/<venue>` (so ccxt's endpoint URLs are pointed
at it by `streams.ingest.venues.ccxt_client.point_urls_at`). The double is the exchange: it
advances through its recording whether or not anyone listens, keeps its own state (the book,
the trades so far) so its REST answers are right at any point, and sends each recorded frame
to every connection that subscribed to that frame's channel.

Faults (per venue, `VenueDouble.faults`, or `POST /_control/<venue>/<fault>`):
- `drop`: abort every open connection of the venue (TCP reset, no close frame);
- `stall`: the connections open now get nothing more, silently, until they reconnect;
- `skip`: the next book update frame is sent to nobody (a sequence gap);
- `down` / `up`: the venue is unreachable (every connection aborted, every request answered
  503) until it is back up; the recording keeps playing meanwhile, like a real market;
- `garbage`: before each of the next frames, one that is not the venue's JSON (truncated
  JSON, binary junk, an HTML error page); the real frame follows it, so nothing is lost;
- `throttle?n=K&after=P`: after P more answers of the venue's OHLCV route, the next K requests
  of it are refused with 429 and the venue's rate-limit error (`n=0` lifts it).

Candle history (`ohlcv.py`): each venue serves OHLCV over REST, seeded history up to the
recording's first trade of a symbol and the played trades after it; every request of that route
is logged in `ohlcv_requests` (symbol, interval, start ms, end ms, bars served), for tests.

Written by hand: no library plays recorded exchange traffic behind ccxt's own URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from infra.dev.exchange_double.ohlcv import CandleHistory, Print, Row, history_for

log = logging.getLogger(__name__)

GARBAGE_FRAMES: tuple[str, ...] = (
    '{"e":"trade","E":17231612', "\x00\xff not json", "[1, 2,", "<html>502 Bad Gateway</html>",
)


@dataclass
class Recorded:
    """One frame of the recording: when it was received, the venue channel it belongs to
    (what a client subscribes to, e.g. `ethusdt@trade`), and the message as the venue sent it."""

    ts_ns: int
    channel: str
    message: Any
    is_book_update: bool = False  # a diff that carries sequence numbers: `skip` drops these


@dataclass
class Faults:
    skip_book_updates: int = 0
    garbage_frames: int = 0
    # counters, for tests and the report
    dropped_connections: int = 0
    stalled_connections: int = 0
    skipped: list[Recorded] = field(default_factory=list)
    garbage_sent: int = 0
    # OHLCV: serve `ohlcv_serve_before_refusal` more answers, then refuse `ohlcv_refusals` requests
    ohlcv_serve_before_refusal: int = 0
    ohlcv_refusals: int = 0
    ohlcv_refused: int = 0


class Connection:
    """One client WebSocket: what it subscribed to, and whether it is stalled."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.channels: set[str] = set()
        self.stalled = False
        self.sent = 0

    async def send_json(self, message: Any) -> None:
        await self.send_text(orjson.dumps(message).decode())

    async def send_text(self, text: str) -> None:
        if not self.stalled and not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(text)
                self.sent += 1

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class VenueDouble:
    """Base of one venue's double. A subclass loads its recording, answers its REST routes,
    speaks its subscription protocol, and keeps the state its REST answers need.

    Playback: `speed` multiplies the recorded pace (2.0 = twice as fast); `None` plays as fast
    as the sockets take the frames. Playback starts on `play()` (not on start-up), so a test
    can connect first and lose nothing it did not ask to lose."""

    name = "venue"

    def __init__(self, speed: float | None = None) -> None:
        self.speed = speed
        self.faults = Faults()
        self.connections: list[Connection] = []
        self.played = 0  # frames the exchange has produced so far
        self.is_down = False
        self.finished = asyncio.Event()
        self._go = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.recording: list[Recorded] = []
        self._histories: dict[str, CandleHistory | None] = {}
        self.ohlcv_requests: list[tuple[str, int, int, int, int]] = []  # symbol, step, start, end ms, bars

    # ---- for subclasses ---------------------------------------------------------------

    def load(self) -> Iterable[Recorded]:
        """The recording, in the order the venue sent it."""
        raise NotImplementedError

    def routes(self) -> list[web.RouteDef]:
        """REST and WebSocket routes, with paths relative to the venue prefix (`/api/v3/depth`)."""
        raise NotImplementedError

    def apply(self, rec: Recorded) -> None:
        """Advance the exchange's own state by one recorded frame (before anyone is sent it)."""

    def frames_for(self, conn: Connection, rec: Recorded) -> Iterator[Any]:
        """What `conn` is sent for `rec` (nothing unless it subscribed to the channel)."""
        if rec.channel in conn.channels:
            yield rec.message

    async def on_client_message(self, conn: Connection, message: Any) -> None:
        """A client frame (subscribe, unsubscribe, ping), already JSON-decoded."""
        raise NotImplementedError

    # ---- the WebSocket endpoint subclasses route to -------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        # no per-message compression: aiohttp compresses big frames in an executor, and a small
        # frame sent later could overtake a big one
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=1 << 22, compress=False)
        await ws.prepare(request)
        conn = Connection(ws, request)
        self.connections.append(conn)
        await self.on_connect(conn)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    payload = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    await conn.send_json({"error": "invalid JSON"})
                    continue
                await self.on_client_message(conn, payload)
        finally:
            with contextlib.suppress(ValueError):
                self.connections.remove(conn)
        return ws

    async def on_connect(self, conn: Connection) -> None:
        """Called once a client's socket is open (Coinbase and Kraken greet their clients)."""

    # ---- faults ---------------------------------------------------------------------------

    def drop(self) -> int:
        """Abort every open connection; returns how many."""
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
        self.connections.clear()
        self.faults.dropped_connections += len(conns)
        return len(conns)

    def down(self) -> int:
        """The venue becomes unreachable: connections are aborted, new requests get 503."""
        self.is_down = True
        return self.drop()

    def up(self) -> None:
        self.is_down = False

    def stall(self) -> int:
        """The connections open now go silent (until the client gives up and reconnects)."""
        n = 0
        for conn in self.connections:
            if not conn.stalled:
                conn.stalled = True
                n += 1
        self.faults.stalled_connections += n
        return n

    def skip(self, n: int = 1) -> None:
        self.faults.skip_book_updates += n

    def garbage(self, n: int = 1) -> None:
        self.faults.garbage_frames += n

    def throttle(self, n: int, after: int = 0) -> None:
        """After `after` more OHLCV answers, refuse the next `n` OHLCV requests (429)."""
        self.faults.ohlcv_serve_before_refusal = after
        self.faults.ohlcv_refusals = n

    # ---- candle history (OHLCV) ---------------------------------------------------------------

    def venue_time_ns(self) -> int:
        """The exchange's now: the recording's time of the last frame played (its first before)."""
        i = max(self.played - 1, 0)
        return self.recording[i].ts_ns if self.recording else time.time_ns()

    def recorded_prints(self, symbol: str) -> list[Print]:
        """Every trade of `symbol` (the venue's own id) in the whole recording, oldest first."""
        return []

    def played_prints(self, symbol: str) -> list[Print]:
        """The trades of `symbol` played so far, oldest first."""
        return []

    def candle_history(self, symbol: str) -> CandleHistory | None:
        """`symbol`'s candle history (None: the recording never trades it)."""
        if symbol not in self._histories:
            self._histories[symbol] = history_for(symbol, self.recorded_prints(symbol))
        return self._histories[symbol]

    def ohlcv(self, symbol: str, step_ms: int, start_ms: int, end_ms: int) -> list[Row] | None:
        """The bars of an OHLCV request (oldest first), or None when it is to be refused (the
        throttle fault). Logged in `ohlcv_requests`."""
        faults = self.faults
        if faults.ohlcv_refusals > 0 and faults.ohlcv_serve_before_refusal <= 0:
            faults.ohlcv_refusals -= 1
            faults.ohlcv_refused += 1
            return None
        if faults.ohlcv_serve_before_refusal > 0:
            faults.ohlcv_serve_before_refusal -= 1
        history = self.candle_history(symbol)
        rows = [] if history is None else history.bars(step_ms, start_ms, end_ms, self.played_prints(symbol),
                                                        self.venue_time_ns())
        self.ohlcv_requests.append((symbol, step_ms, start_ms, end_ms, len(rows)))
        return rows

    # ---- playback ---------------------------------------------------------------------------

    def play(self) -> None:
        self._go.set()

    def start(self) -> None:
        if not self.recording:
            self.recording = list(self.load())
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"double-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for conn in list(self.connections):
            conn.abort()

    @property
    def subscribers(self) -> int:
        return sum(1 for c in self.connections if c.channels)

    async def _run(self) -> None:
        await self._go.wait()
        first_ns = self.recording[0].ts_ns if self.recording else 0
        started = time.monotonic()
        for i, rec in enumerate(self.recording):
            if self.speed:
                due = started + (rec.ts_ns - first_ns) / 1e9 / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            self.apply(rec)
            self.played = i + 1
            await self._send(rec)
            if i % 64 == 63:
                await asyncio.sleep(0)  # let clients and REST requests in between frames
        self.finished.set()

    async def _send(self, rec: Recorded) -> None:
        if rec.is_book_update and self.faults.skip_book_updates > 0 and self._anyone_listens(rec):
            self.faults.skip_book_updates -= 1
            self.faults.skipped.append(rec)
            return
        for conn in list(self.connections):
            for frame in self.frames_for(conn, rec):
                if self.faults.garbage_frames > 0:
                    self.faults.garbage_frames -= 1
                    await conn.send_text(GARBAGE_FRAMES[self.faults.garbage_sent % len(GARBAGE_FRAMES)])
                    self.faults.garbage_sent += 1
                await conn.send_json(frame)

    def _anyone_listens(self, rec: Recorded) -> bool:
        return any(rec.channel in c.channels and not c.stalled for c in self.connections)


def _unless_down(venue: VenueDouble) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if venue.is_down:
            raise web.HTTPServiceUnavailable(text=f"{venue.name} is down (exchange double)")
        response: web.StreamResponse = await handler(request)
        return response

    return middleware


class ExchangeDouble:
    """The server: venues under `/<venue>`, fault control under `/_control`."""

    def __init__(self, venues: Iterable[VenueDouble]) -> None:
        self.venues = {v.name: v for v in venues}
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        for name, venue in self.venues.items():
            sub = web.Application(middlewares=[_unless_down(venue)])
            sub.add_routes(venue.routes())
            app.add_subapp(f"/{name}", sub)
        app.router.add_post("/_control/{venue}/{fault}", self._control)
        app.router.add_get("/_status", self._status)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        for venue in self.venues.values():
            venue.start()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    def play(self) -> None:
        for venue in self.venues.values():
            venue.play()

    async def stop(self) -> None:
        for venue in self.venues.values():
            await venue.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _control(self, request: web.Request) -> web.Response:
        venue = self.venues.get(request.match_info["venue"])
        fault = request.match_info["fault"]
        n = int(request.query.get("n", "1"))
        if venue is None:
            return web.json_response({"error": "unknown venue"}, status=404)
        actions = {
            "drop": lambda: venue.drop(),
            "stall": lambda: venue.stall(),
            "skip": lambda: venue.skip(n),
            "garbage": lambda: venue.garbage(n),
            "throttle": lambda: venue.throttle(n, int(request.query.get("after", "0"))),
            "down": lambda: venue.down(),
            "up": lambda: venue.up(),
            "play": lambda: venue.play(),
        }
        if fault not in actions:
            return web.json_response({"error": f"unknown fault; one of {sorted(actions)}"}, status=404)
        return web.json_response({"ok": True, "result": actions[fault]()})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({
            name: {"played": v.played, "of": len(v.recording), "connections": len(v.connections),
                   "subscriptions": sum(len(c.channels) for c in v.connections),
                   "finished": v.finished.is_set(), "down": v.is_down}
            for name, v in self.venues.items()
        })
