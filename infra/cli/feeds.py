"""Runs a feed (replay or simulated) against the configured broker, and knows when what it
published is stored: `up` uses that to drain before it stops the embedded broker."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from infra.config.settings import Settings
from schemas import topics
from schemas.venues import Feed
from streams.ingest.publisher import KafkaPublisher, Publisher

DEFAULT_SIM_SYMBOLS = ("BTC-USDT", "ETH-USDT")


class FeedStopped(Exception):
    """Raised inside a feed when it was asked to stop (Ctrl-C)."""


@dataclass
class FeedResult:
    """What a feed published, by stream: enough to tell when all of it is stored."""

    trades_published: int = 0
    last_trade_ids: dict[str, str] = field(default_factory=dict)  # `venue:symbol` -> last trade id
    elapsed_s: float = 0.0
    detail: str = ""

    def __str__(self) -> str:
        rate = self.trades_published / self.elapsed_s if self.elapsed_s else 0.0
        return f"{self.trades_published} trades in {self.elapsed_s:.1f}s ({rate:,.0f}/s) {self.detail}".strip()


class TrackingPublisher:
    """Passes messages on, remembers the last trade id per stream, and stops on request."""

    def __init__(self, inner: Publisher, trades_topic: str, stop: threading.Event | None = None,
                 count_trades: bool = True):
        self.inner = inner
        self.trades_topic = trades_topic
        self.stop = stop
        # False when the feed counts its own trades (the simulator does): reading each message
        # back costs a JSON parse per trade, a seventh of a million-a-second feed.
        self.count_trades = count_trades
        self.result = FeedResult()

    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        if self.stop is not None and self.stop.is_set():
            raise FeedStopped
        self.inner.publish(topic, key, value)
        if self.count_trades and topic == self.trades_topic:
            rows = orjson.loads(value)["trades"]
            if rows:
                self.result.last_trade_ids[key.decode()] = str(rows[-1][0])
                self.result.trades_published += len(rows)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        (close or self.inner.flush)()


def _tracker(settings: Settings, stop: threading.Event | None, count_trades: bool = True) -> TrackingPublisher:
    trades_topic = topics.TRADES.full_name(settings.topic_namespace)
    return TrackingPublisher(KafkaPublisher.for_settings(settings), trades_topic, stop, count_trades)


def replay_into(settings: Settings, path: Path, speed: float | None = None, stop: threading.Event | None = None,
                progress: bool = True) -> FeedResult:
    from streams.ingest.replay import replay

    tracker = _tracker(settings, stop)
    started = time.monotonic()
    try:
        summary = replay([path], tracker, namespace=settings.topic_namespace, speed=speed, progress=progress)
        tracker.result.detail = (f"from {summary.lines} lines: {summary.book_updates} book updates, "
                                 f"{summary.tickers} tickers, {summary.dead_letters} dead letters")
    except FeedStopped:
        tracker.result.detail = "(stopped)"
    finally:
        tracker.close()
        tracker.result.elapsed_s = time.monotonic() - started
    return tracker.result


def live_into(settings: Settings, feeds: tuple[Feed, ...], stop: threading.Event,
              endpoint: str | None = None, record_dir: str | None = None) -> FeedResult:
    """The live connectors until `stop` is set; with `record_dir` (`--record`) they record every
    frame they receive there."""
    import asyncio

    from infra.cli.live import connector_config, connectors_for, metrics_address, run_connectors

    tracker = _tracker(settings, None)  # stopped through `stop`, not by raising inside a publish
    started = time.monotonic()
    connectors = connectors_for(feeds, tracker, connector_config(settings, endpoint, record_dir))
    try:
        asyncio.run(run_connectors(connectors, stop, metrics_at=metrics_address(settings)))
    finally:
        tracker.close()
        tracker.result.elapsed_s = time.monotonic() - started
        tracker.result.detail = "; ".join(f"{key}: {stats.trades} trades, {stats.books} books, "
                                          f"{stats.disconnects + stats.stale} outages, {stats.missing} missing"
                                          for c in connectors for key, stats in c.stats().items())
    return tracker.result


# A paced run publishes a message per symbol and window for the trades and one for the books. The
# embedded broker's cost grows with the batches it holds (docs/embedded.md), so a paced run takes
# 200 ms windows (4x fewer batches than 50 ms; a tick waits at most 200 ms for its message).
PACED_WINDOW_MS = 200.0


def simulate_into(settings: Settings, rate: float, seed: int, stop: threading.Event | None = None,
                  symbols: tuple[str, ...] = DEFAULT_SIM_SYMBOLS, count: int | None = None,
                  start_ns: int | None = None, book_gaps: float = 0.0) -> FeedResult:
    """Paced at `rate` trades/s per symbol, with every symbol's order book, until stopped; or
    `count` trades as fast as possible, without books (a throughput tool: the books cost ten
    times what the trades do). The same seed and `start_ns` give the same trades and books
    (None: start at the wall clock). `book_gaps`: the share of book diffs dropped."""
    from streams.ingest.simulated import SimSummary, simulate

    paced = count is None
    if book_gaps and not paced:
        raise ValueError("book gaps need the books of a paced simulation (no count)")
    tracker = _tracker(settings, stop, count_trades=False)
    summary = SimSummary()  # what was published, also when a publish raises FeedStopped
    started = time.monotonic()
    try:
        simulate(tracker, list(symbols), seed=seed, start_ns=start_ns, trades_per_s=rate,
                 books=paced, book_gap_rate=book_gaps, namespace=settings.topic_namespace,
                 n_trades=count, paced=paced, window_ms=PACED_WINDOW_MS if paced else 50.0,
                 should_stop=(lambda: stop.is_set()) if stop is not None else None, summary=summary)
        if paced:
            tracker.result.detail = f"and {summary.book_updates} book updates"
    except FeedStopped:
        tracker.result.detail = "(stopped)"
    finally:
        tracker.close()
        tracker.result.elapsed_s = time.monotonic() - started
        tracker.result.trades_published = summary.trades
        tracker.result.last_trade_ids = dict(summary.last_trade_ids)
    return tracker.result


def stored_streams(settings: Settings, result: FeedResult) -> set[str]:
    """The streams whose last published trade is in the database (the trade sink writes a
    partition in order, so the last trade stored means every earlier one is too)."""
    from infra.store.clickhouse import make_client

    client = make_client(settings)
    try:
        done = set()
        for key, trade_id in result.last_trade_ids.items():
            venue, symbol = key.split(":", 1)
            n = client.query(
                "SELECT count() FROM trades WHERE venue = {v:String} AND symbol = {s:String} AND trade_id = {t:String}",
                parameters={"v": venue, "s": symbol, "t": trade_id},
            ).result_rows[0][0]
            if n:
                done.add(key)
        return done
    finally:
        client.close()


def wait_until_stored(settings: Settings, result: FeedResult, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stored_streams(settings, result) >= set(result.last_trade_ids):
            return True
        time.sleep(0.2)
    return False
