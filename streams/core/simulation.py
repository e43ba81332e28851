"""A seeded synthetic trade feed. Pure: no clock, no I/O; time is whatever `start_ns` says.

Per symbol, trades arrive as a Poisson process (`trades_per_s`), the log price follows a
random walk with volatility `volatility` per square-root second, sizes are log-normal around
`median_size`, prices are rounded to a 0.01 tick and sizes to 1e-4, and a trade that moved
the unrounded price up is a buy. Time advances in windows of `window_ms`; each window gives
each symbol its trades as batches of at most `max_batch`, so batches come out ordered by
the end of their window, and by event time within one symbol.

With `books=True` each symbol also gets an L2 order book that agrees with its trades
(`streams.core.simulated_book`): `next_market_window` gives the window's trade batches and, per
symbol, its book updates (diffs, and a whole snapshot every second).

Determinism: the same symbols, seed and start give the same trades, hence byte-identical
wire batches (one numpy PCG64 stream, drawn in a fixed order; decimal strings from Python's
correctly rounded float formatting). The books draw from streams of their own, so they leave
the trades as they are without books.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, NamedTuple

import numpy as np

from schemas.codecs import trades as trades_codec
from schemas.events import BookDelta, BookSnapshot, Side, Trade
from schemas.symbols import normalize_symbol
from schemas.trusted import trusted
from streams.core.batching import TradeBatch
from streams.core.simulated_book import SimulatedBook

SIM_VENUE: Final = "sim"
_TICK: Final = 0.01
_TICK_EXP: Final = -2
_LOT: Final = 1e-4
_LOT_EXP: Final = -4
_BUY: Final = Side.BUY
_SELL: Final = Side.SELL
_SIDE_TEXT: Final = (_SELL.value, _BUY.value)  # indexed by "moved the price up"
_VENUE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")  # as schemas.events.Venue

# Plausible starting prices, so simulated candles look like the real ones.
_START_PRICES: Final[dict[str, str]] = {"BTC-USDT": "60000.00", "ETH-USDT": "2600.00", "SOL-USDT": "150.00"}


@dataclass(frozen=True)
class SimSymbol:
    symbol: str
    start_price: Decimal = Decimal("100.00")
    trades_per_s: float = 20.0
    volatility: float = 0.0005  # std of the log price over one second (~13 % a day)
    median_size: float = 0.05
    size_sigma: float = 1.2  # of log size

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbol", normalize_symbol(self.symbol))
        if not self.start_price > 0:
            raise ValueError(f"{self.symbol}: start_price must be positive")
        if not (self.trades_per_s > 0 and self.volatility >= 0 and self.median_size > 0 and self.size_sigma >= 0):
            raise ValueError(f"{self.symbol}: rates, sizes and volatility must be positive")


def default_symbol(symbol: str, trades_per_s: float = 20.0) -> SimSymbol:
    """A `SimSymbol` with a plausible start price for well-known symbols, 100 otherwise."""
    name = normalize_symbol(symbol)
    return SimSymbol(name, Decimal(_START_PRICES.get(name, "100.00")), trades_per_s)


class BookBatch(NamedTuple):
    """One symbol's book updates of one window, in order: a `book_batch.v1` message."""

    venue: str
    symbol: str
    updates: list[BookDelta | BookSnapshot]


class MarketWindow(NamedTuple):
    trades: list[TradeBatch]
    books: list[BookBatch]  # empty without books, or for symbols whose book did not change


class TradeColumns(NamedTuple):
    """One symbol's trades of one window, column by column: ids from `first_id` on."""

    first_id: int
    ts: list[int]
    ticks: list[int]
    lots: list[int]
    ups: list[bool]


class WireBatch(NamedTuple):
    """A `trade_batch.v1` message ready to publish, with what a feed reports of it."""

    venue: str
    symbol: str
    payload: bytes
    n_trades: int
    last_id: str
    first_ns: int
    last_ns: int


class WireWindow(NamedTuple):
    trades: list[WireBatch]
    books: list[BookBatch]


@dataclass
class _State:
    spec: SimSymbol
    log_price: float  # unrounded, so rounding to the tick never accumulates
    next_id: int
    book: SimulatedBook | None = None


class TradeSimulator:
    """Yields trade batches window after window; see the module docstring."""

    def __init__(
        self,
        symbols: Sequence[SimSymbol],
        *,
        seed: int,
        start_ns: int,
        venue: str = SIM_VENUE,
        window_ms: float = 50.0,
        max_batch: int = 100,
        books: bool = False,
        book_gap_rate: float = 0.0,
    ) -> None:
        """`books`: simulate each symbol's order book too; `book_gap_rate`: the share of book
        diffs dropped (see `streams.core.simulated_book`)."""
        if not symbols:
            raise ValueError("at least one symbol")
        if len({s.symbol for s in symbols}) != len(symbols):
            raise ValueError("symbols must be distinct")
        if not _VENUE_RE.match(venue):
            raise ValueError(f"not a venue name: {venue!r}")
        if window_ms <= 0 or max_batch < 1 or start_ns < 0:
            raise ValueError("window_ms must be positive, max_batch at least 1, start_ns not negative")
        self.venue = venue
        self.window_ns = int(window_ms * 1_000_000)
        self.max_batch = max_batch
        self.now_ns = start_ns  # end of what has been generated
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._price_text = FixedPointText(-_TICK_EXP)
        self._size_text = FixedPointText(-_LOT_EXP)
        self._states = [_State(s, math.log(float(s.start_price)), 1) for s in symbols]
        if book_gap_rate and not books:
            raise ValueError("book gaps need books")
        if books:
            # streams of their own: the trades stay what they are without books
            book_rng = np.random.Generator(np.random.PCG64([seed, 1]))
            gap_rng = np.random.Generator(np.random.PCG64([seed, 2]))
            for state in self._states:
                spec = state.spec
                state.book = SimulatedBook(
                    venue,
                    spec.symbol,
                    start_price_ticks=int(spec.start_price.scaleb(-_TICK_EXP)),
                    median_trade_lots=spec.median_size / _LOT,
                    start_ns=start_ns,
                    rng=book_rng,
                    gap_rng=gap_rng,
                    gap_rate=book_gap_rate,
                    tick_exp=_TICK_EXP,
                    lot_exp=_LOT_EXP,
                )

    def next_window(self) -> list[TradeBatch]:
        """The trade batches of the next `window_ms`, symbol by symbol in the order given."""
        return self.next_market_window().trades

    def next_market_window(self) -> MarketWindow:
        """The trade batches and book updates of the next `window_ms`, symbol by symbol."""
        start = self.now_ns
        self.now_ns += self.window_ns
        batches: list[TradeBatch] = []
        books: list[BookBatch] = []
        for state in self._states:
            trades, updates = self._window_trades(state, start)
            for first in range(0, len(trades), self.max_batch):
                batches.append(TradeBatch(self.venue, state.spec.symbol, trades[first : first + self.max_batch]))
            if updates:
                books.append(BookBatch(self.venue, state.spec.symbol, updates))
        return MarketWindow(batches, books)

    def batches(self) -> Iterator[TradeBatch]:
        """Endless: every window's batches, in order."""
        while True:
            yield from self.next_window()

    def next_wire_window(self, limit: int | None = None) -> WireWindow:
        """The next window as `next_market_window` gives it, with its trade batches already
        encoded (`trade_batch.v1`, the same bytes `schemas.codecs.trades.encode` writes for
        them) and no trade object built: the feed's publishing path. `limit`: at most that many
        trades of the window are kept (the rest are drawn and dropped, as a cut would)."""
        start = self.now_ns
        self.now_ns += self.window_ns
        batches: list[WireBatch] = []
        books: list[BookBatch] = []
        room = limit
        for state in self._states:
            columns, updates = self._window_columns(state, start)
            if columns is not None:
                for batch in self._encoded(state.spec.symbol, columns, room):
                    batches.append(batch)
                    if room is not None:
                        room -= batch.n_trades
            if updates:
                books.append(BookBatch(self.venue, state.spec.symbol, updates))
        return WireWindow(batches, books)

    def _encoded(self, symbol: str, c: TradeColumns, room: int | None) -> Iterator[WireBatch]:
        n = len(c.ts) if room is None else max(0, min(room, len(c.ts)))
        ids = list(map(str, range(c.first_id, c.first_id + n)))
        prices = list(map(self._price_text.__getitem__, c.ticks[:n]))
        sizes = list(map(self._size_text.__getitem__, c.lots[:n]))
        sides = list(map(_SIDE_TEXT.__getitem__, c.ups[:n]))
        for a in range(0, n, self.max_batch):
            b = min(a + self.max_batch, n)
            ts = c.ts[a:b]
            payload = trades_codec.encode_columns(self.venue, symbol, ids[a:b], prices[a:b], sizes[a:b], sides[a:b],
                                                  ts, ts)  # fmt: skip
            yield WireBatch(self.venue, symbol, payload, b - a, ids[b - 1], ts[0], ts[-1])

    def _window_trades(self, state: _State, start_ns: int) -> tuple[list[Trade], list[BookDelta | BookSnapshot]]:
        columns, updates = self._window_columns(state, start_ns)
        if columns is None:
            return [], updates
        trades = [
            _trade(self.venue, state.spec.symbol, columns.first_id + i, t, tick, lot, up)
            for i, (t, tick, lot, up) in enumerate(
                zip(columns.ts, columns.ticks, columns.lots, columns.ups, strict=True)
            )
        ]
        return trades, updates

    def _window_columns(
        self, state: _State, start_ns: int
    ) -> tuple[TradeColumns | None, list[BookDelta | BookSnapshot]]:
        """One symbol's trades of the window as columns (None when it has none), and its book
        updates. The one place the trades are drawn: both paths above make theirs from these."""
        spec, rng, book = state.spec, self._rng, state.book
        count = int(rng.poisson(spec.trades_per_s * self.window_ns / 1e9))
        if count == 0:
            return None, book.window(start_ns, (), (), (), ()) if book is not None else []
        # Given their number, Poisson arrivals are uniform over the window.
        times = start_ns + np.sort(rng.integers(0, self.window_ns, size=count))
        gaps_s = np.diff(times, prepend=start_ns) / 1e9
        shocks = rng.standard_normal(count)
        log_prices = state.log_price + np.cumsum(spec.volatility * np.sqrt(gaps_s) * shocks)
        sizes = rng.lognormal(math.log(spec.median_size), spec.size_sigma, size=count)
        state.log_price = float(log_prices[-1])
        # Integer ticks and lots, clamped to one: the models want strictly positive values.
        ticks = np.maximum(np.rint(np.exp(log_prices) / _TICK), 1).astype(np.int64).tolist()
        lots = np.maximum(np.rint(sizes / _LOT), 1).astype(np.int64).tolist()
        ups = (shocks >= 0).tolist()
        first_id = state.next_id
        state.next_id += count
        ts = times.tolist()
        columns = TradeColumns(first_id, ts, ticks, lots, ups)
        return columns, book.window(start_ns, ts, ticks, lots, ups) if book is not None else []


class FixedPointText(dict[int, str]):
    """Integer units -> their decimal text at `places` places, as `format(Decimal(n).scaleb(-places),
    "f")` writes it for n >= 1 (123456 ticks at 2 places -> "1234.56"; tests/unit/test_simulation.py
    holds the two equal). A cache, since a random walk keeps revisiting the same few prices and
    sizes: a lookup is ~50 ns against ~400 ns to format; cleared past `max_entries`."""

    def __init__(self, places: int, max_entries: int = 200_000) -> None:
        super().__init__()
        self.places = places
        self.unit = 10**places
        self.max_entries = max_entries

    def __missing__(self, units: int) -> str:
        if len(self) >= self.max_entries:
            self.clear()
        whole, fraction = divmod(units, self.unit)
        text = f"{whole}.{fraction:0{self.places}d}"
        self[units] = text
        return text


def _trade(venue: str, symbol: str, trade_id: int, ts_ns: int, ticks: int, lots: int, up: bool) -> Trade:
    return trusted(
        Trade,
        {
            "venue": venue,
            "symbol": symbol,
            "event_ts_ns": ts_ns,
            "recv_ts_ns": ts_ns,  # nothing travels: received when it happens
            "schema_version": "trade.v1",
            "trade_id": str(trade_id),
            "price": Decimal(ticks).scaleb(_TICK_EXP),  # 123456 ticks -> 1234.56
            "size": Decimal(lots).scaleb(_LOT_EXP),
            "side": _BUY if up else _SELL,
        },
    )
