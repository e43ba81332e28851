"""`entasis history backfill` through real ccxt against the exchange double's OHLCV routes
(Binance `klines`, Coinbase `candles`, Kraken `OHLC`): several venues in one call, interrupted by
a venue that starts refusing, resumed with only what is missing, and the double's history
consistent with its recorded feed at the joint.

Oracles: the double's request log (what was asked), the candles published (what a store would
hold), and for the joint the recorded capture itself read with plain gzip + json and the
reference candles `../shared/data/binance/spot_ethusdt_candles_1m.csv`, which share no code with
the double."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import random
import threading
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from infra.cli.history import backfill_feeds_into
from infra.config.settings import Settings
from infra.dev.exchange_double.binance import BinanceDouble
from infra.dev.exchange_double.coinbase import CoinbaseDouble
from infra.dev.exchange_double.kraken import KrakenDouble
from infra.dev.exchange_double.server import ExchangeDouble, VenueDouble
from schemas.codecs import candles as candle_codec
from schemas.events import INTERVAL_NS
from schemas.topics import CANDLES
from streams.core.backoff import Backoff
from streams.ingest.backfill import iso
from streams.ingest.publisher import ListPublisher
from streams.ingest.venues.ccxt_client import plain_exchange
from tests.shared_data import BINANCE, DATA, SPOT_FILES, reference_candles

HOUR_NS = INTERVAL_NS["1h"]
DAY_NS = INTERVAL_NS["1d"]
FEEDS = [("binance", "ETH-USDT"), ("coinbase", "SKL-USD"), ("kraken", "XMR-USD")]


class Store:
    """The final candles published, by (feed, interval) -> open time -> candle: what the candle
    sink would store; answers the backfill's "what is stored" question."""

    def __init__(self) -> None:
        self.candles: dict[tuple[str, str, str], dict[int, Any]] = {}

    def take(self, publisher: ListPublisher) -> None:
        for m in publisher.messages:
            c = candle_codec.decode(m.value)
            self.candles.setdefault((c.venue, c.symbol, c.interval.value), {})[c.open_ts_ns] = c

    def __call__(self, venue: str, symbol: str, interval: str, first: int, last: int) -> set[int]:
        return {t for t in self.candles.get((venue, symbol, interval), {}) if first <= t <= last}


@contextlib.contextmanager
def serving(*venues: VenueDouble) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """The double on its own event loop in a thread (the backfill runs `asyncio.run` itself)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    double = ExchangeDouble(venues)
    try:
        url = asyncio.run_coroutine_threadsafe(double.start(), loop).result(120)
        yield url, loop
    finally:
        asyncio.run_coroutine_threadsafe(double.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def call(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """Run `fn(*args)` on the double's loop (faults are the double's state)."""

    async def run() -> None:
        fn(*args)

    asyncio.run_coroutine_threadsafe(run(), loop).result(10)


def backfill(url: str, store: Store, days: int, feeds: list[tuple[str, str]] = FEEDS) -> tuple[Any, ListPublisher]:
    publisher = ListPublisher()
    jobs = backfill_feeds_into(Settings(), feeds, "1h", days, endpoint=url, publisher=publisher, stored=store,
                               progress=False, retries=1, backoff=Backoff(0.01, 0.02, random.Random(1)))
    store.take(publisher)
    return jobs, publisher


def published(publisher: ListPublisher, venue: str, interval: str = "1h") -> list[Any]:
    topic = CANDLES[interval].full_name("")
    return [c for c in (candle_codec.decode(m.value) for m in publisher.messages if m.topic == topic)
            if c.venue == venue]


def doubles() -> tuple[BinanceDouble, CoinbaseDouble, KrakenDouble]:
    cryptofeed = DATA / "cryptofeed"
    return BinanceDouble(BINANCE, "spot", max_frames=3_000), CoinbaseDouble(cryptofeed), KrakenDouble(cryptofeed)


def test_several_venues_in_one_call_interrupted_then_resumed_with_only_what_is_missing() -> None:
    binance, coinbase, kraken = doubles()
    store = Store()
    with serving(binance, coinbase, kraken) as (url, loop):
        # Binance serves one page (1000 bars) and then refuses: the first run ends with its error
        call(loop, binance.throttle, 10_000, 1)
        jobs, first = backfill(url, store, days=90)
        by_venue = {job.venue: job for job in jobs}
        failed = by_venue["binance"].result
        assert failed is not None and failed.error is not None
        message = str(failed.error)  # ccxt reads Binance's -1003 as DDoSProtection, a rate limit
        assert message.startswith("binance refused the candles of ETH-USDT (DDoSProtection: binance 429")
        first_missing_iso = failed.error.missing[0][0]
        assert f"still missing: [{iso(first_missing_iso)}, " in message
        assert len(published(first, "binance")) == 1000  # what was fetched stays
        # the others were fetched at the same time, whole; Kraken serves its last 720 bars only (the
        # last of them still open)
        assert by_venue["coinbase"].ok and len(published(first, "coinbase")) == 90 * 24
        assert by_venue["kraken"].ok and len(published(first, "kraken")) == 719
        kraken_result = by_venue["kraken"].result
        assert kraken_result is not None and kraken_result.unserved  # said, not an error
        asked_before = {name: len(v.ohlcv_requests) for name, v in (("b", binance), ("c", coinbase), ("k", kraken))}

        call(loop, binance.throttle, 0)
        jobs, second = backfill(url, store, days=90)
        assert all(job.ok for job in jobs), [line for job in jobs for line in job.lines()]
        # only Binance had anything missing: it asks from the day of its first missing bar on
        resumed = binance.ohlcv_requests[asked_before["b"]:]
        first_missing = sorted(c.open_ts_ns for c in published(first, "binance"))[-1] + HOUR_NS
        assert resumed and resumed[0][2] * 1_000_000 == first_missing - first_missing % DAY_NS
        assert len(coinbase.ohlcv_requests) == asked_before["c"]
        assert len(published(second, "binance")) == 90 * 24 - 1000  # no stored hour published again
        assert not published(second, "coinbase")
        assert len(kraken.ohlcv_requests) > asked_before["k"]  # what it never serves is asked again, in vain

    hours = sorted(store.candles[("binance", "ETH-USDT", "1h")])
    assert len(hours) == 90 * 24 and all(b - a == HOUR_NS for a, b in itertools.pairwise(hours))
    # every whole UTC day has its 1d candle, the one the interruption cut in two included
    days = sorted(store.candles[("binance", "ETH-USDT", "1d")])
    whole = [d for d in range(hours[0] - hours[0] % DAY_NS, hours[-1], DAY_NS) if d >= hours[0] and
             d + DAY_NS <= hours[-1] + HOUR_NS]
    assert days == whole
    for day in days:
        parts = [store.candles[("binance", "ETH-USDT", "1h")][day + i * HOUR_NS] for i in range(24)]
        d = store.candles[("binance", "ETH-USDT", "1d")][day]
        assert (d.open, d.close, d.high, d.low) == (parts[0].open, parts[-1].close, max(p.high for p in parts),
                                                    min(p.low for p in parts))
    # a third run asks nobody anything
    with serving(*doubles()) as (url, _):
        jobs, third = backfill(url, store, days=90, feeds=FEEDS[:2])
    assert not third.messages and all(job.result is not None and job.result.runs == [] for job in jobs)


def first_recorded_trade() -> tuple[int, Decimal]:
    """The first `@trade` of the spot capture after its depth snapshot (where the double's
    recording starts), read with gzip + json."""
    seen_snapshot = False
    for path in SPOT_FILES:
        with gzip.open(path, "rt") as f:
            for line in f:
                msg = json.loads(line.split(" ", 1)[1])
                if "lastUpdateId" in msg:
                    seen_snapshot = True
                elif seen_snapshot and msg["data"].get("e") == "trade":
                    return msg["data"]["T"] * 1_000_000, Decimal(msg["data"]["p"])
    raise AssertionError("no trade in the capture")


def test_the_history_leads_into_the_recorded_feed_and_then_is_the_recorded_feed() -> None:
    joint_ns, joint_price = first_recorded_trade()
    joint_minute = joint_ns - joint_ns % 60_000_000_000
    binance = BinanceDouble(BINANCE, "spot", speed=None)

    async def fetch(url: str, since_ms: int, limit: int) -> list[list[Any]]:
        exchange = plain_exchange("binance", url)
        try:
            rows: list[list[Any]] = await exchange.fetch_ohlcv("ETH/USDT", "1m", since_ms, limit)
            return rows
        finally:
            await exchange.close()

    with serving(binance) as (url, loop):
        before = asyncio.run(fetch(url, joint_minute // 1_000_000 - 120 * 60_000, 1000))
        # before playing, the double's clock is its recording's start: the history ends at the joint
        assert before[-1][0] * 1_000_000 <= joint_minute
        last_closed = [r for r in before if r[0] * 1_000_000 + 60_000_000_000 <= joint_minute][-1]
        assert Decimal(repr(last_closed[4])) == joint_price  # the last generated close is the first recorded trade
        assert len(before) >= 120 and all(b[0] - a[0] == 60_000 for a, b in itertools.pairwise(before))
        call(loop, binance.play)
        asyncio.run_coroutine_threadsafe(binance.finished.wait(), loop).result(120)
        after = asyncio.run(fetch(url, joint_minute // 1_000_000 - 120 * 60_000, 1000))
    assert after[: len(before) - 1] == before[:-1]  # what was history stays history
    # every whole minute after the joint is the recorded trades' candle (the reference file)
    served = {r[0] * 1_000_000: r for r in after}
    reference = reference_candles()
    checked = 0
    for ref in reference[1:-1]:  # the first minute starts before the double's recording, the last is open
        t = int(datetime.fromisoformat(ref["minute_start_utc_iso"].replace("Z", "+00:00")).timestamp()) * 10**9
        row = served[t]
        assert [Decimal(repr(v)) for v in row[1:6]] == [Decimal(ref[k]) for k in ("open", "high", "low", "close",
                                                                                     "volume")], ref
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("bad", ["nasdaq:BTC-USDT", "binance:BTCUSDT", "sim:BTC-USDT"])
def test_a_bad_feed_is_refused_before_any_venue_is_asked(bad: str) -> None:
    from streams.core.history import BadHistory

    venue, symbol = bad.split(":")
    binance, publisher = BinanceDouble(BINANCE, "spot", max_frames=100), ListPublisher()
    with serving(binance) as (url, _), pytest.raises(BadHistory):
        backfill_feeds_into(Settings(), [("binance", "ETH-USDT"), (venue, symbol)], "1h", 5, endpoint=url,
                            publisher=publisher, stored=Store(), progress=False)
    assert not binance.ohlcv_requests and not publisher.messages
