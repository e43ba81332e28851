"""`entasis history backfill` (streams/ingest/backfill.py) against a fake ccxt exchange: paged
`fetch_ohlcv`, retries on rate limits, a clear error that keeps what was fetched, and a resumed
run that fetches only what is missing.

Oracle: the fake venue's own bars (written here, not by the code under test), and what a store
would hold: the open times of the final candles published."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

import pytest
from ccxt.base.errors import RateLimitExceeded

from schemas.codecs import candles as candle_codec
from schemas.topics import CANDLES
from streams.core.backoff import Backoff
from streams.core.history import BadHistory
from streams.ingest.backfill import backfill_history, missing_runs
from streams.ingest.publisher import ListPublisher

H = 3_600_000  # ms
NOW_MS = 1_764_806_400_000 + 30 * 60_000  # 2025-12-04T00:30Z: the 00:00 bar is still open
FIRST_MS = NOW_MS - 30 * 60_000 - 3 * 24 * H  # 2025-12-01T00:00Z: three days of 1h bars before it


class FakeVenue:
    """A ccxt-like exchange serving 1h bars from FIRST_MS to the open one, `limit` a page; it
    refuses with RateLimitExceeded on the calls listed in `refuse` (by call number, from 1)."""

    def __init__(self, refuse: set[int] | None = None, refuse_from: int | None = None) -> None:
        self.bars = [
            [t, 100.0 + i, 101.5 + i, 99.25 + i, 100.5 + i, 0.125 * (1 + i % 7)]
            for i, t in enumerate(range(FIRST_MS, NOW_MS, H))
        ]
        self.calls: list[tuple[str, str, int, int]] = []
        self.refuse = refuse or set()
        self.refuse_from = refuse_from

    async def fetch_ohlcv(self, symbol: str, timeframe: str, since: int, limit: int) -> list[list[Any]]:
        self.calls.append((symbol, timeframe, since, limit))
        n = len(self.calls)
        if n in self.refuse or (self.refuse_from is not None and n >= self.refuse_from):
            raise RateLimitExceeded("binance 429 Too Many Requests")
        return [b for b in self.bars if b[0] >= since][:limit]


class Store:
    """The open times of the final candles published, as the candle sink would store them."""

    def __init__(self) -> None:
        self.open_ns: dict[str, set[int]] = {}

    def take(self, publisher: ListPublisher) -> None:
        for m in publisher.messages:
            candle = candle_codec.decode(m.value)
            self.open_ns.setdefault(candle.interval, set()).add(candle.open_ts_ns)

    def __call__(self, venue: str, symbol: str, interval: str, first: int, last: int) -> set[int]:
        return {t for t in self.open_ns.get(interval, set()) if first <= t <= last}


def published(publisher: ListPublisher, interval: str = "1h") -> list[Any]:
    topic = CANDLES[interval].full_name("")
    return [candle_codec.decode(m.value) for m in publisher.messages if m.topic == topic]


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def run(venue: FakeVenue, publisher: ListPublisher, store: Store | None = None, **kw: Any) -> Any:
    return asyncio.run(
        backfill_history(
            venue,
            kw.pop("name", "binance"),
            kw.pop("symbol", "BTC-USDT"),
            "1h",
            3,
            publisher,
            now_ns=NOW_MS * 1_000_000,
            stored=store,
            limit=kw.pop("limit", 20),
            sleep=no_sleep,
            backoff=Backoff(1.0, 30.0, random.Random(1)),
            **kw,
        )
    )


def test_pages_through_the_range_and_imports_every_closed_bar() -> None:
    venue, publisher = FakeVenue(), ListPublisher()
    result = run(venue, publisher)
    candles = published(publisher)
    expected = [b for b in venue.bars if b[0] + H <= NOW_MS]  # the open bar is not a final candle
    assert len(expected) == 72
    assert [c.open_ts_ns // 1_000_000 for c in candles] == [b[0] for b in expected]
    first = candles[0]
    assert (first.open, first.high, first.low, first.close) == (
        Decimal("100.0"),
        Decimal("101.5"),
        Decimal("99.25"),
        Decimal("100.5"),
    )
    assert result.fetched.pages == 4 and result.error is None  # 72 bars, 20 a page
    assert all(call[:2] == ("BTC/USDT", "1h") for call in venue.calls)
    assert published(publisher, "1d")  # derived, as an import derives


def test_rate_limits_are_retried_with_backoff() -> None:
    venue, publisher = FakeVenue(refuse={2, 3}), ListPublisher()
    result = run(venue, publisher)
    assert result.error is None and result.fetched.retries == 2
    assert len(published(publisher)) == 72


def test_a_venue_that_keeps_refusing_names_itself_and_the_missing_range_and_keeps_what_came() -> None:
    venue, publisher = FakeVenue(refuse_from=3), ListPublisher()
    result = run(venue, publisher, retries=2)
    assert result.error is not None
    message = str(result.error)
    assert message.startswith("binance refused the candles of BTC-USDT (RateLimitExceeded")
    # two pages (40 bars) came: the rest, from the 41st bar to the open one, is missing
    assert "still missing: [2025-12-02T16:00:00Z, 2025-12-04T00:00:00Z)" in message
    assert len(published(publisher)) == 40


def test_an_interrupted_backfill_resumes_with_only_what_is_missing() -> None:
    store = Store()
    first = ListPublisher()
    run(FakeVenue(refuse_from=3), first, store, retries=0)
    store.take(first)
    venue, second = FakeVenue(), ListPublisher()
    result = run(venue, second, store)
    assert result.error is None
    # the first call asks for the day of the first missing bar, whole (its first 16 hours are stored)
    assert venue.calls[0][2] == FIRST_MS + 24 * H
    assert len(published(second)) == 32  # the stored hours are not published again
    assert [c.open_ts_ns // 1_000_000 for c in published(second, "1d")] == [FIRST_MS + 24 * H, FIRST_MS + 48 * H]
    store.take(second)
    assert len(store.open_ns["1h"]) == 72
    # a third run finds nothing missing and asks the venue nothing
    third = FakeVenue()
    assert run(third, ListPublisher(), store).runs == [] and third.calls == []


@pytest.mark.parametrize(
    ("kw", "where"),
    [
        ({"name": "nasdaq"}, "--venue"),
        ({"name": "simulated"}, "--venue"),  # known, but no live venue to fetch from
        ({"symbol": "BTCUSDT"}, "--symbol"),
    ],
)
def test_bad_targets_are_refused_before_anything_is_fetched(kw: dict[str, Any], where: str) -> None:
    venue, publisher = FakeVenue(), ListPublisher()
    with pytest.raises(BadHistory) as err:
        run(venue, publisher, **kw)
    assert err.value.source == where
    assert venue.calls == [] and publisher.messages == []


def test_missing_runs_are_the_gaps_of_the_grid() -> None:
    assert missing_runs(0, 10, 2, set()) == [(0, 10)]
    assert missing_runs(1, 10, 2, {2, 4}) == [(6, 10)]
    assert missing_runs(0, 10, 2, {0, 4, 8}) == [(2, 4), (6, 8)]
    assert missing_runs(0, 10, 2, {0, 2, 4, 6, 8}) == []


def test_the_command_refuses_an_unknown_venue_before_asking_the_store(capsys: pytest.CaptureFixture[str]) -> None:
    from infra.cli.main import main

    code = main(["history", "backfill", "--venue", "nasdaq", "--symbol", "BTC-USDT", "--days", "1", "--quiet"])
    assert code == 2
    assert "unknown venue 'nasdaq'" in capsys.readouterr().err
