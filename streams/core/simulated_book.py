"""Simulated L2 order books that agree with the simulated trades. Pure: no clock, no I/O.

One `SimulatedBook` per symbol, driven window by window by that symbol's trades in integer
ticks and lots (the units `streams.core.simulation` draws them in). Each side holds a best level and, behind it,
some of the next four ticks, then `levels - 1` levels on a fixed price grid (a step of about
0.3 bp of the start price, at least one tick), so a price move re-prices only the levels near
the top and those it crosses. For each trade at price `p`:

1. the quotes move, halfway in time between the previous trade and this one: the side the
   taker hits gets its best level at `p` holding at least the trade's size (a buy lifts the
   ask, so the best ask is `p`), the other side's best level sits a spread of one or more ticks
   away (geometric, mean two ticks); levels the move crosses are cancelled, levels it uncovers
   are quoted with fresh log-normal sizes, and two random levels per side get new sizes;
2. at the trade's time the trade takes its size from the level at `p` (the level goes when it
   is emptied, which happens to about 40 % of them).

So the book is never crossed, and every trade's price lies between the best bid and the best
ask before and after it. Each of those steps is one `book_delta.v1` diff with the next update
id (`U == u`, chained like Binance spot: `U == previous u + 1`); a whole `book_snapshot.v1`
(every level, at the current update id) comes at the start and then every `snapshot_every_ns`
of event time, so a consumer that starts late, or lost a diff, has a whole book within that
period. With `gap_rate` > 0 each diff is dropped with that probability (its update id is still
used), which a consumer sees as a `book_gap` followed by a `book_resync` at the next snapshot.

Determinism: the book draws from its own numpy PCG64 stream and the gaps from another, both
seeded from the simulation's seed, so adding books (or gaps) leaves the trades as they were,
and the same seed, symbols and start give byte-identical books.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal
from typing import Final

import numpy as np

from schemas.events import BookDelta, BookSnapshot, PriceLevel
from schemas.trusted import trusted

BOOK_LEVELS: Final = 120  # per side: top N up to 100 is always there, even after a level is emptied
LEVEL_STEP: Final = 3e-5  # grid step, relative to the start price
LEVEL_SIZE: Final = 4.0  # median level size, in median trade sizes
LEVEL_SIGMA: Final = 0.8  # of log level size
EMPTIED: Final = 0.4  # share of trades that empty the level they hit
SPREAD_P: Final = 0.5  # spread in ticks ~ geometric(SPREAD_P): mean 2, at least 1
REFRESHED: Final = 2  # levels per side re-sized at each move
NEAR_TICKS: Final = 4  # behind the best level, each of the next few ticks is quoted...
NEAR_QUOTED: Final = 0.5  # ...with this probability (so an emptied best level leaves a tight spread)
SNAPSHOT_EVERY_NS: Final = 1_000_000_000
FIRST_UPDATE_ID: Final = 1
_POOL: Final = 4096  # numbers drawn per numpy call: one call per draw would cost more than the book


class _Draws:
    """Buffered draws of one numpy generator, in a fixed order (so the same seed gives the same
    book, whichever draw asked first)."""

    def __init__(self, rng: np.random.Generator, median_lots: float) -> None:
        self._rng = rng
        self._mu = math.log(median_lots)
        self._uniform: list[float] = []
        self._sizes: list[int] = []
        self._spreads: list[int] = []

    def uniform(self) -> float:
        if not self._uniform:
            self._uniform = self._rng.random(_POOL).tolist()
        return self._uniform.pop()

    def size(self) -> int:
        if not self._sizes:
            lots = self._rng.lognormal(self._mu, LEVEL_SIGMA, _POOL)
            self._sizes = np.maximum(np.rint(lots), 1).astype(np.int64).tolist()
        return self._sizes.pop()

    def spread(self) -> int:
        if not self._spreads:
            self._spreads = self._rng.geometric(SPREAD_P, _POOL).tolist()
        return self._spreads.pop()


class _Side:
    """One side keyed so that better is smaller: asks by price in ticks, bids by minus it. Holds
    the best level (`top`, any tick), some of the next `NEAR_TICKS` ticks behind it (`near`),
    and grid levels at keys `g * step` for g in [first, first + held), behind those."""

    __slots__ = ("changed", "first", "held", "near", "sign", "sizes", "step", "top", "width")

    def __init__(self, sign: int, step: int, levels: int) -> None:
        self.sign = sign  # +1 asks, -1 bids: a price is sign * key
        self.step = step
        self.width = levels - 1  # grid levels behind the top
        self.sizes: dict[int, int] = {}  # key -> lots
        self.top: int | None = None
        self.near: list[int] = []  # keys between the top and the grid
        self.first = 0
        self.held = 0
        self.changed: dict[int, int] = {}  # key -> lots since the last `take_changes` (0: gone)

    def best(self) -> int | None:
        return min(self.sizes) if self.sizes else None

    def place(self, top: int, at_least: int, draws: _Draws) -> None:
        """Move the best level to key `top` (with at least `at_least` lots), a few levels a tick
        or so behind it, and the grid behind those."""
        step = self.step
        lo = top // step + 1
        hi = lo + self.width
        near = [top + d for d in range(1, NEAR_TICKS + 1) if top + d < lo * step and draws.uniform() < NEAR_QUOTED]
        held = {top, *near}

        def stays(key: int) -> bool:
            return key in held or (key % step == 0 and lo <= key // step < hi)

        for key in (self.top, *self.near):
            if key is not None and not stays(key):
                self._delete(key)
        olo, ohi = self.first, self.first + self.held
        for g in (*range(olo, min(ohi, lo)), *range(max(olo, hi), ohi)):
            self._delete(g * step)
        for g in (*range(lo, min(hi, olo)), *range(max(lo, ohi), hi)):
            key = g * step
            if key not in self.sizes and self.sign * key > 0:
                self._set(key, draws.size())
        for _ in range(REFRESHED):
            key = (lo + int(draws.uniform() * self.width)) * step
            if key in self.sizes:
                self._set(key, draws.size())
        for key in near:
            if key not in self.sizes and self.sign * key > 0:
                self._set(key, draws.size())
        if self.sizes.get(top, 0) < max(at_least, 1):
            # a level the trade will hit holds its size and, unless the trade empties it, more
            rest = draws.size() if not at_least or draws.uniform() >= EMPTIED else 0
            self._set(top, at_least + rest)
        self.top, self.near, self.first, self.held = top, near, lo, self.width

    def take(self, lots: int) -> None:
        """A trade takes `lots` from the best level (which `place` made big enough)."""
        top = self.top
        assert top is not None and self.sizes[top] >= lots, "a trade hit a level it does not fit"
        left = self.sizes[top] - lots
        if left:
            self._set(top, left)
        else:
            self._delete(top)
            self.top = None

    def take_changes(self) -> dict[int, int]:
        changed, self.changed = self.changed, {}
        return changed

    def _set(self, key: int, lots: int) -> None:
        self.sizes[key] = lots
        self.changed[key] = lots

    def _delete(self, key: int) -> None:
        if self.sizes.pop(key, None) is not None:
            self.changed[key] = 0


class SimulatedBook:
    """One symbol's book; see the module docstring. `window` takes the symbol's trades window by
    window and gives what to publish."""

    def __init__(
        self,
        venue: str,
        symbol: str,
        *,
        start_price_ticks: int,
        median_trade_lots: float,
        start_ns: int,
        rng: np.random.Generator,
        gap_rng: np.random.Generator | None = None,
        gap_rate: float = 0.0,
        tick_exp: int = -2,
        lot_exp: int = -4,
        levels: int = BOOK_LEVELS,
        snapshot_every_ns: int = SNAPSHOT_EVERY_NS,
    ) -> None:
        if not 0.0 <= gap_rate < 1.0:
            raise ValueError(f"gap_rate must be within [0, 1), got {gap_rate}")
        if levels < 2 or snapshot_every_ns <= 0 or start_price_ticks < 2:
            raise ValueError("levels must be at least 2, snapshot_every_ns positive, the start price 2 ticks or more")
        if gap_rate and gap_rng is None:
            raise ValueError("gaps need their own generator")
        self.venue, self.symbol = venue, symbol
        self.tick_exp, self.lot_exp = tick_exp, lot_exp
        step = max(1, round(start_price_ticks * LEVEL_STEP))
        self.asks = _Side(+1, step, levels)
        self.bids = _Side(-1, step, levels)
        self._draws = _Draws(rng, max(median_trade_lots * LEVEL_SIZE, 1.0))
        self._gap_rng, self.gap_rate = gap_rng, gap_rate
        self.update_id = FIRST_UPDATE_ID
        self.snapshot_every_ns = snapshot_every_ns
        self.next_snapshot_ns = start_ns
        self.last_ns = start_ns
        self.dropped = 0  # diffs not published (gaps)
        spread = self._draws.spread()
        self.asks.place(start_price_ticks, 0, self._draws)
        self.bids.place(-(start_price_ticks - min(spread, start_price_ticks - 1)), 0, self._draws)
        self.asks.take_changes()
        self.bids.take_changes()
        self._out: list[BookDelta | BookSnapshot] = []

    # ---- driving -------------------------------------------------------------------------

    def window(
        self, start_ns: int, times: Iterable[int], ticks: Iterable[int], lots: Iterable[int], buys: Iterable[bool]
    ) -> list[BookDelta | BookSnapshot]:
        """What to publish for a window starting at `start_ns` holding the symbol's next trades
        (in time order, each at or after `start_ns`): a whole snapshot at `start_ns` when one is
        due, then a quote move and a fill per trade (less the dropped diffs)."""
        if start_ns >= self.next_snapshot_ns:
            self._out.append(self.snapshot(start_ns))
            while self.next_snapshot_ns <= start_ns:
                self.next_snapshot_ns += self.snapshot_every_ns
        # a quote move comes after what was published before it, in event time too
        self.last_ns = max(self.last_ns, start_ns)
        for ts, price, size, buy in zip(times, ticks, lots, buys, strict=True):
            self._move((self.last_ns + ts) // 2, price, size, buy)
            (self.asks if buy else self.bids).take(size)
            self._diff(ts)
            self.last_ns = ts
        out, self._out = self._out, []
        return out

    # ---- reading -------------------------------------------------------------------------

    def best(self) -> tuple[int | None, int | None]:
        """(best bid, best ask) in ticks."""
        bid, ask = self.bids.best(), self.asks.best()
        return (None if bid is None else -bid), ask

    def levels(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Every level as (ticks, lots), best first: (bids, asks)."""
        bids = sorted(((-k, v) for k, v in self.bids.sizes.items()), reverse=True)
        asks = sorted(self.asks.sizes.items())
        return bids, asks

    def snapshot(self, ts_ns: int) -> BookSnapshot:
        bids, asks = self.levels()
        return trusted(
            BookSnapshot,
            {
                "venue": self.venue,
                "symbol": self.symbol,
                "event_ts_ns": ts_ns,
                "recv_ts_ns": ts_ns,
                "schema_version": "book_snapshot.v1",
                "last_update_id": self.update_id,
                "bids": self._levels(bids),
                "asks": self._levels(asks),
            },
        )

    # ---- inside --------------------------------------------------------------------------

    def _move(self, ts: int, price: int, size: int, buy: bool) -> None:
        spread = self._draws.spread()
        if buy:
            self.asks.place(price, size, self._draws)
            if price - spread >= 1:
                self.bids.place(-(price - spread), 0, self._draws)
            else:  # no bid can sit below a one-tick ask
                self._clear(self.bids)
        else:
            self.bids.place(-price, size, self._draws)
            self.asks.place(price + spread, 0, self._draws)
        self._diff(ts)

    def _clear(self, side: _Side) -> None:
        for key in list(side.sizes):
            side._delete(key)
        side.top, side.near, side.held = None, [], 0

    def _diff(self, ts: int) -> None:
        bids, asks = self.bids.take_changes(), self.asks.take_changes()
        self.update_id += 1
        if self.gap_rate and self._gap_rng is not None and self._gap_rng.random() < self.gap_rate:
            self.dropped += 1
            return
        self._out.append(
            trusted(
                BookDelta,
                {
                    "venue": self.venue,
                    "symbol": self.symbol,
                    "event_ts_ns": ts,
                    "recv_ts_ns": ts,  # nothing travels: received when it happens
                    "schema_version": "book_delta.v1",
                    "first_update_id": self.update_id,
                    "last_update_id": self.update_id,
                    "prev_update_id": None,
                    "bids": self._levels(sorted(((-k, v) for k, v in bids.items()), reverse=True)),
                    "asks": self._levels(sorted(asks.items())),
                },
            )
        )

    def _levels(self, levels: list[tuple[int, int]]) -> tuple[PriceLevel, ...]:
        tick, lot = self.tick_exp, self.lot_exp
        return tuple((Decimal(p).scaleb(tick), Decimal(q).scaleb(lot)) for p, q in levels)
