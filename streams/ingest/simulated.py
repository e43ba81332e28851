"""Publish the synthetic feed of `streams.core.simulation` onto the raw trades topic and, with
`books=True`, each symbol's simulated order book onto the raw book topic: one `book_batch.v1`
message per symbol and window (its diffs, and a whole snapshot every second), keyed like the
trades, encoded by the book topic's codec as a venue's connector does.

Two modes:
- as fast as possible, for benchmarks and tests: stops after `n_trades` (exactly) or
  `duration_s` of event time; the output depends only on symbols, seed and start time;
- paced: each window's batches are published once the wall clock has passed the window's
  end, so with `start_ns` = now, event time follows the wall clock (a trade is published at
  most one window, 50 ms by default, after its event time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from schemas.codecs.book import encode_book_batch
from schemas.symbols import stream_key
from schemas.topics import BOOK, TRADES
from streams.core.simulation import SIM_VENUE, BookBatch, SimSymbol, TradeSimulator, WireBatch, default_symbol
from streams.ingest.publisher import Publisher

WallNs = Callable[[], int]
Sleep = Callable[[float], None]


@dataclass
class SimSummary:
    trades: int = 0
    messages: int = 0  # trade messages
    book_messages: int = 0
    book_updates: int = 0  # diffs and snapshots
    first_event_ns: int | None = None
    last_event_ns: int | None = None
    last_trade_ids: dict[str, str] = field(default_factory=dict)  # by `venue:symbol`
    elapsed_s: float = 0.0

    @property
    def trades_per_s(self) -> float:
        return self.trades / self.elapsed_s if self.elapsed_s > 0 else 0.0


def run_simulator(
    simulator: TradeSimulator,
    publisher: Publisher,
    *,
    namespace: str = "",
    n_trades: int | None = None,
    duration_s: float | None = None,
    paced: bool = False,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
    wall_ns: WallNs = time.time_ns,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    summary: SimSummary | None = None,
) -> SimSummary:
    """Publish `simulator`'s batches until `n_trades`, `duration_s` of event time or
    `should_stop()`; unpaced runs need a limit, paced ones may run until stopped. `summary`:
    filled as the run goes (so a caller still has it when a publish raises), else a new one."""
    if not paced and n_trades is None and duration_s is None:
        raise ValueError("an unpaced simulation needs n_trades or duration_s")
    if n_trades is not None and n_trades < 0:
        raise ValueError("n_trades must not be negative")
    topic = TRADES.full_name(namespace)
    book_topic = BOOK.full_name(namespace)
    end_ns = simulator.now_ns + int(duration_s * 1e9) if duration_s is not None else None
    summary = summary if summary is not None else SimSummary()
    started = clock()
    with tqdm(unit=" trades", disable=not progress, mininterval=0.5, desc="simulated") as bar:
        while not _done(summary, simulator, n_trades, end_ns, should_stop):
            window = simulator.next_wire_window(None if n_trades is None else n_trades - summary.trades)
            if paced:
                _wait_until(simulator.now_ns, wall_ns, sleep)
            # a window's books first: the quotes a trade hits are published before the trade
            for book in window.books:
                _publish_book(publisher, book_topic, book, summary)
            for batch in window.trades:
                _publish(publisher, topic, batch, summary)
                bar.update(batch.n_trades)
    publisher.flush()
    summary.elapsed_s = clock() - started
    return summary


def simulate(
    publisher: Publisher,
    symbols: Sequence[str | SimSymbol],
    *,
    seed: int,
    start_ns: int | None = None,
    trades_per_s: float = 20.0,
    venue: str = SIM_VENUE,
    window_ms: float = 50.0,
    max_batch: int = 100,
    books: bool = False,
    book_gap_rate: float = 0.0,
    namespace: str = "",
    n_trades: int | None = None,
    duration_s: float | None = None,
    paced: bool = False,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
    wall_ns: WallNs = time.time_ns,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    summary: SimSummary | None = None,
) -> SimSummary:
    """Build a simulator for `symbols` (names get `default_symbol` at `trades_per_s`) and run
    it. `start_ns=None` starts at the wall clock, which a paced run needs. `books`: publish the
    order books too; `book_gap_rate`: the share of book diffs dropped, to exercise a consumer's
    gap detection."""
    specs = [s if isinstance(s, SimSymbol) else default_symbol(s, trades_per_s) for s in symbols]
    simulator = TradeSimulator(
        specs,
        seed=seed,
        start_ns=wall_ns() if start_ns is None else start_ns,
        venue=venue,
        window_ms=window_ms,
        max_batch=max_batch,
        books=books,
        book_gap_rate=book_gap_rate,
    )
    return run_simulator(
        simulator,
        publisher,
        namespace=namespace,
        n_trades=n_trades,
        duration_s=duration_s,
        paced=paced,
        should_stop=should_stop,
        progress=progress,
        wall_ns=wall_ns,
        sleep=sleep,
        clock=clock,
        summary=summary,
    )


def _done(
    summary: SimSummary,
    simulator: TradeSimulator,
    n_trades: int | None,
    end_ns: int | None,
    should_stop: Callable[[], bool] | None,
) -> bool:
    if n_trades is not None and summary.trades >= n_trades:
        return True
    if end_ns is not None and simulator.now_ns >= end_ns:
        return True
    return should_stop is not None and should_stop()


def _wait_until(target_ns: int, wall_ns: WallNs, sleep: Sleep) -> None:
    delay_s = (target_ns - wall_ns()) / 1e9
    if delay_s > 0:
        sleep(delay_s)


def _publish(publisher: Publisher, topic: str, batch: WireBatch, summary: SimSummary) -> None:
    key = stream_key(batch.venue, batch.symbol)
    publisher.publish(topic, key.encode(), batch.payload)
    summary.messages += 1
    summary.trades += batch.n_trades
    summary.last_trade_ids[key] = batch.last_id
    # Batches come symbol by symbol within a window, so event time is not monotonic across them.
    first, last = batch.first_ns, batch.last_ns
    summary.first_event_ns = first if summary.first_event_ns is None else min(summary.first_event_ns, first)
    summary.last_event_ns = last if summary.last_event_ns is None else max(summary.last_event_ns, last)


def _publish_book(publisher: Publisher, topic: str, book: BookBatch, summary: SimSummary) -> None:
    key = stream_key(book.venue, book.symbol)
    publisher.publish(topic, key.encode(), encode_book_batch(book.venue, book.symbol, book.updates))
    summary.book_messages += 1
    summary.book_updates += len(book.updates)
