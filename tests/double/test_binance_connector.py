"""The Binance connector (ccxt.pro `binance` / `binanceusdm`) against the Binance double
playing the recorded captures, with faults: whatever the double does to the connection, every
trade the exchange printed is published exactly once and in id order, the book published last
equals the exchange's book, and the quality events say what happened.

The oracle is the double itself: what it played is what the exchange printed (its trade
frames), and its own book is the exchange's book; neither is computed by connector code."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from infra.cli.live import stats_line
from infra.dev.exchange_double.binance import BinanceDouble
from tests.double.harness import FAST, Run, connected, decimals, play_until, wait_until
from tests.shared_data import BINANCE

SPOT = "binance:ETH-USDT"
USDM = "binance-usdm:ETH-USDT"
FRAMES = 5_000  # about the first 50 s of the capture, some 800 trades
# x real time: the 50 s play in 5 s. Faster would squeeze more market into the second that a
# reconnect takes (ccxt spaces Binance subscriptions 250 ms apart and paces REST calls by
# their weight), past the 1000 trades Binance's public REST keeps for the backfill.
SPEED = 10.0


def spot(speed: float = SPEED, frames: int = FRAMES) -> BinanceDouble:
    return BinanceDouble(BINANCE, "spot", speed=speed, max_frames=frames)


def printed_trade_ids(run: Run) -> list[str]:
    """Every trade the exchange printed during the playback, in its order."""
    return [str(r.message["t"]) for r in run.double.recording if r.message.get("e") == "trade"]


async def finish(run: Run, key: str) -> None:
    await run.double.finished.wait()
    expected = len(printed_trade_ids(run))
    await wait_until(lambda: len(run.trade_ids(key)) >= expected, 30, "every printed trade published")
    await wait_until(lambda: bool(run.books(key)) and run.books(key)[-1].last_update_id == _book(run).last_id,
                     10, "the final book published")


def _book(run: Run):  # type: ignore[no-untyped-def]
    assert isinstance(run.double, BinanceDouble)
    return run.double.books["ETHUSDT"]


def assert_exactly_the_printed_trades(run: Run, key: str) -> None:
    printed = printed_trade_ids(run)
    published = run.trade_ids(key)
    assert len(printed) > 500
    assert published == printed  # none lost, none twice, same order
    assert [int(i) for i in printed] == list(range(int(printed[0]), int(printed[0]) + len(printed)))  # no exchange gap


def assert_book_is_the_exchanges(run: Run, key: str) -> None:
    last = run.books(key)[-1]
    bids, asks = _book(run).top(100)
    assert last.last_update_id == _book(run).last_id
    assert list(last.bids) == decimals(bids) and list(last.asks) == decimals(asks)


async def test_clean_run_publishes_every_trade_once_and_the_exchanges_book() -> None:
    async with connected(spot(), SPOT) as run:
        await play_until(run, 0.0)
        await finish(run, SPOT)
        assert_exactly_the_printed_trades(run, SPOT)
        assert_book_is_the_exchanges(run, SPOT)
        assert run.kinds(SPOT) == ["feed_connected"]
        # prices and sizes are the exchange's numbers
        rows = {str(r[0]): r for r in run.trade_rows(SPOT)}
        first = next(r.message for r in run.double.recording if r.message.get("e") == "trade")
        assert Decimal(rows[str(first["t"])][1]) == Decimal(first["p"])
        assert Decimal(rows[str(first["t"])][2]) == Decimal(first["q"])
        assert rows[str(first["t"])][3] == ("sell" if first["m"] else "buy")


async def test_dropped_connection_reconnects_backfills_and_resyncs_the_book() -> None:
    async with connected(spot(), SPOT) as run:
        await play_until(run, 0.4)
        assert run.double.drop() == 1
        await finish(run, SPOT)
        assert_exactly_the_printed_trades(run, SPOT)
        assert_book_is_the_exchanges(run, SPOT)
        assert run.kinds(SPOT) == ["feed_connected", "feed_disconnected", "feed_connected", "book_resync"]
        stats = run.connector.stats()[SPOT]
        assert stats.backfilled > 0  # the trades printed while it was away came from REST
        assert stats_line(run.connector).startswith(
            f"binance: binance:ETH-USDT up: {len(printed_trade_ids(run))} trades ({stats.backfilled} backfilled, "
            "0 missing)")
        recovery_ms = (stats.connected_at[1] - stats.disconnected_at[0]) * 1000
        print(f"recovery after a dropped connection: {recovery_ms:.0f} ms, {stats.backfilled} trades backfilled")


async def test_stalled_socket_is_given_up_marked_stale_and_recovered() -> None:
    async with connected(spot(), SPOT, replace(FAST, stale_after_s=1.5)) as run:
        await play_until(run, 0.3)
        assert run.double.stall() == 1
        await finish(run, SPOT)
        assert_exactly_the_printed_trades(run, SPOT)
        assert_book_is_the_exchanges(run, SPOT)
        kinds = run.kinds(SPOT)
        assert kinds[:4] == ["feed_connected", "feed_stale", "feed_connected", "book_resync"]
        stale = dict(run.quality(SPOT))["feed_stale"]
        assert stale["silent_s"] >= 1.5


async def test_outage_longer_than_the_venues_trade_window_is_reported_as_an_exact_trade_gap() -> None:
    """Binance serves the last 1000 trades without an API key: what fell out of that window
    while the venue was down cannot be fetched, and the connector says exactly what is missing."""
    async with connected(spot(speed=100, frames=20_000), SPOT) as run:
        await play_until(run, 0.1)
        run.double.down()
        assert isinstance(run.double, BinanceDouble)
        played = run.double.trades["ETHUSDT"]
        printed_before = len(played)
        await wait_until(lambda: run.double.finished.is_set() or len(played) > 2000 + printed_before, 30,
                         "2000 trades printed while down")
        run.double.up()
        await run.double.finished.wait()
        printed = printed_trade_ids(run)
        await wait_until(lambda: run.trade_ids(SPOT)[-1:] == printed[-1:], 30, "the last trade published")
        published = run.trade_ids(SPOT)
        lost = [i for i in printed if i not in set(published)]
        assert 0 < len(lost) < len(printed) - 1000
        assert [int(i) for i in lost] == list(range(int(lost[0]), int(lost[0]) + len(lost)))  # one hole
        assert [i for i in printed if i not in set(lost)] == published  # the rest once, in order
        gaps = [d for k, d in run.quality(SPOT) if k == "trade_gap"]
        assert gaps == [{"after_trade_id": str(int(lost[0]) - 1), "next_trade_id": str(int(lost[-1]) + 1),
                         "missing": len(lost)}]
        assert run.connector.stats()[SPOT].missing == len(lost)


async def test_skipped_depth_update_is_a_book_gap_then_a_resync_and_trades_are_untouched() -> None:
    async with connected(spot(), SPOT) as run:
        await play_until(run, 0.4)
        run.double.skip(1)
        await finish(run, SPOT)
        assert len(run.double.faults.skipped) == 1
        assert_exactly_the_printed_trades(run, SPOT)
        assert_book_is_the_exchanges(run, SPOT)
        assert run.kinds(SPOT) == ["feed_connected", "book_gap", "book_resync"]
        # nothing was published from the broken book: every book published before the gap is
        # older than the skipped update, every one after it is from the fresh snapshot on
        skipped = run.double.faults.skipped[0].message
        ids = [b.last_update_id for b in run.books(SPOT)]
        assert ids == sorted(ids)
        assert not any(skipped["U"] <= i for i in ids[: ids.index(next(i for i in ids if i >= skipped["u"]))])


async def test_garbage_frames_go_to_dead_letters_and_lose_nothing() -> None:
    async with connected(spot(), SPOT) as run:
        await play_until(run, 0.4)
        run.double.garbage(4)
        await finish(run, SPOT)
        assert run.double.faults.garbage_sent == 4
        letters = run.dead_letters()
        assert len(letters) == 4 and all(d["venue"] == "binance" and d["source"].startswith("ws:") for d in letters)
        assert run.connector.malformed_frames == 4
        assert_exactly_the_printed_trades(run, SPOT)
        assert_book_is_the_exchanges(run, SPOT)
        assert run.kinds(SPOT) == ["feed_connected"]


async def test_venue_down_then_back_is_disconnected_then_connected_with_nothing_lost() -> None:
    async with connected(spot(), SPOT) as run:
        await play_until(run, 0.3)
        run.double.down()
        await wait_until(lambda: "feed_disconnected" in run.kinds(SPOT), 10, "feed_disconnected")
        await wait_until(lambda: run.double.played >= len(run.double.recording) * 0.5, 30, "the market moving on")
        run.double.up()
        await finish(run, SPOT)
        assert_exactly_the_printed_trades(run, SPOT)
        assert_book_is_the_exchanges(run, SPOT)
        assert run.kinds(SPOT)[:4] == ["feed_connected", "feed_disconnected", "feed_connected", "book_resync"]


@pytest.mark.parametrize("fault", ["drop", "skip"])
async def test_usdm_futures_recover_the_same_way(fault: str) -> None:
    double = BinanceDouble(BINANCE, "usdm", speed=SPEED, max_frames=FRAMES)
    async with connected(double, USDM) as run:
        await play_until(run, 0.4)
        if fault == "drop":
            run.double.drop()
        else:
            run.double.skip(1)
        await finish(run, USDM)
        assert_exactly_the_printed_trades(run, USDM)
        assert_book_is_the_exchanges(run, USDM)
        expected_kinds = {"drop": ["feed_connected", "feed_disconnected", "feed_connected", "book_resync"],
                          "skip": ["feed_connected", "book_gap", "book_resync"]}
        assert run.kinds(USDM) == expected_kinds[fault]


async def test_a_venue_alive_but_silent_is_retried_ever_less_often() -> None:
    """After the recording the double answers (snapshots) but sends nothing: each stall in a
    row doubles the limit (1.5 s, 3 s, 6 s...) instead of a restart every 1.5 s."""
    async with connected(spot(speed=100, frames=2000), SPOT, replace(FAST, stale_after_s=1.5)) as run:
        await play_until(run, 0.0)
        await finish(run, SPOT)
        await wait_until(lambda: run.kinds(SPOT).count("feed_stale") >= 2, 20, "two stalls")
        silent = [d["silent_s"] for k, d in run.quality(SPOT) if k == "feed_stale"]
        assert 1.5 <= silent[0] < 2.9 and 3.0 <= silent[1] < 5.5  # a fixed limit would give 1.5 again
