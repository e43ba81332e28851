"""The Coinbase (Advanced Trade) and Kraken (WebSocket v2) connectors against their doubles,
playing the cryptofeed captures. Neither venue's book check is done by ccxt 4.5.90 (it ignores
Coinbase's `sequence_num`, and its Kraken checksum check is off and cannot run), so these
tests are where the connector's own checks prove themselves: a skipped book frame must turn
into `book_gap`, then a fresh snapshot (`book_resync`), and a book equal to the venue's.

Oracles: what the double played (its trades) and its own books."""

from __future__ import annotations

from decimal import Decimal

import pytest

from infra.dev.exchange_double.coinbase import CoinbaseDouble
from infra.dev.exchange_double.kraken import KrakenDouble
from tests.double.harness import Run, connected, play_until, wait_until
from tests.shared_data import DATA

CAPTURES = DATA / "cryptofeed"
COINBASE_FEEDS = "coinbase:SKL-USD,coinbase:DASH-BTC"
KRAKEN_FEEDS = "kraken:XMR-USD,kraken:SC-EUR"
SPEED = 6.0  # the 31 s captures in about 5 s
DEPTH = 20  # levels compared


def coinbase_printed(run: Run, product: str) -> list[str]:
    assert isinstance(run.double, CoinbaseDouble)
    return [str(t.wire["trade_id"]) for t in run.double.trades.get(product, [])]


def coinbase_book(run: Run, product: str) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    assert isinstance(run.double, CoinbaseDouble)
    book = run.double.books[product]
    return ([(Decimal(p), Decimal(q)) for p, q in book.levels("bid", DEPTH)],
            [(Decimal(p), Decimal(q)) for p, q in book.levels("offer", DEPTH)])


def kraken_printed(run: Run, symbol: str) -> list[str]:
    assert isinstance(run.double, KrakenDouble)
    return [str(t.trade_id) for t in run.double.trades.get(symbol, [])]


def kraken_book(run: Run, symbol: str) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    assert isinstance(run.double, KrakenDouble)
    book = run.double.books[symbol]
    return ([(lv.price, lv.qty) for lv in book.bids.top(DEPTH).values()],
            [(lv.price, lv.qty) for lv in book.asks.top(DEPTH).values()])


def published_top(run: Run, key: str) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    last = run.books(key)[-1]
    return list(last.bids[:DEPTH]), list(last.asks[:DEPTH])


async def settle(run: Run, expected: dict[str, tuple[list[str], object]]) -> None:
    """Playback over; every feed's trades published and its last book equal to the venue's."""
    await run.double.finished.wait()
    for key, (trades, book) in expected.items():
        await wait_until(lambda key=key, trades=trades: run.trade_ids(key) == trades, 20,  # type: ignore[misc]
                         f"{key}: the printed trades")
        await wait_until(lambda key=key, book=book: bool(run.books(key)) and published_top(run, key) == book,  # type: ignore[misc]
                         20, f"{key}: the venue's book")


def coinbase_expected(run: Run) -> dict[str, tuple[list[str], object]]:
    return {f"coinbase:{p}": (coinbase_printed(run, p), coinbase_book(run, p)) for p in ("SKL-USD", "DASH-BTC")}


def kraken_expected(run: Run) -> dict[str, tuple[list[str], object]]:
    return {f"kraken:{s.replace('/', '-')}": (kraken_printed(run, s), kraken_book(run, s))
            for s in ("XMR/USD", "SC/EUR")}


@pytest.mark.parametrize("fault", ["none", "drop", "skip", "garbage"])
async def test_coinbase_connector_recovers_every_trade_and_the_venues_books(fault: str) -> None:
    async with connected(CoinbaseDouble(CAPTURES, speed=SPEED), COINBASE_FEEDS) as run:
        await play_until(run, 0.5)
        {"none": lambda: None, "drop": run.double.drop, "skip": lambda: run.double.skip(1),
         "garbage": lambda: run.double.garbage(2)}[fault]()
        await run.double.finished.wait()
        expected = coinbase_expected(run)
        assert sum(len(trades) for trades, _ in expected.values()) == 52 + 15 + 2  # every match, and each last_match
        await settle(run, expected)
        kinds = run.kinds("coinbase:SKL-USD")
        if fault == "drop":
            assert kinds[:3] == ["feed_connected", "feed_disconnected", "feed_connected"] and "book_resync" in kinds
        elif fault == "skip":
            # the hole in `sequence_num` breaks every book on the socket: all resync from snapshots
            assert len(run.double.faults.skipped) == 1
            assert kinds[:2] == ["feed_connected", "book_gap"] and "book_resync" in kinds
            assert "message" in dict(run.quality("coinbase:SKL-USD"))["book_gap"]["error"]
        elif fault == "garbage":
            assert len(run.dead_letters()) == 2 and kinds == ["feed_connected"]
        else:
            assert kinds == ["feed_connected"] and run.dead_letters() == []


async def skip_until_a_gap(run: Run) -> None:
    """Kraken's checksum covers the top 10 levels only: a skipped update deeper in the 100
    subscribed is invisible to it (and to any client). Skip one update at a time until one
    that moves the top 10 is gone."""
    for _ in range(20):
        skipped = len(run.double.faults.skipped)
        run.double.skip(1)

        def one_more_skipped(n: int = skipped) -> bool:
            return len(run.double.faults.skipped) > n or run.double.finished.is_set()

        await wait_until(one_more_skipped, 10, "an update skipped")
        try:
            await wait_until(lambda: "book_gap" in run.kinds(), 0.5, "book_gap")
            return
        except AssertionError:
            continue
    raise AssertionError("20 skipped book updates and no checksum mismatch")


@pytest.mark.parametrize("fault", ["none", "drop", "skip"])
async def test_kraken_connector_checks_checksums_and_recovers(fault: str) -> None:
    async with connected(KrakenDouble(CAPTURES, speed=SPEED), KRAKEN_FEEDS) as run:
        await play_until(run, 0.3)
        if fault == "skip":
            await skip_until_a_gap(run)
        elif fault == "drop":
            run.double.drop()
        await run.double.finished.wait()
        expected = kraken_expected(run)
        assert sum(len(trades) for trades, _ in expected.values()) >= 1
        await settle(run, expected)
        kinds = run.kinds("kraken:XMR-USD") + run.kinds("kraken:SC-EUR")
        if fault == "skip":
            gaps = [d for k, d in run.quality() if k == "book_gap"]
            assert gaps and all("checksum" in d["error"] for d in gaps)
            assert "book_resync" in kinds
        elif fault == "drop":
            assert "feed_disconnected" in kinds and "book_resync" in kinds
        else:
            assert kinds == ["feed_connected", "feed_connected"]
