"""Replay of the recorded Binance captures (../shared/data/binance) into a ListPublisher."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from schemas.events import DeadLetter
from schemas.topics import BOOK, DEAD_LETTER, TRADES
from schemas.wire import TradeRow, decode_book_batch, decode_trade_batch
from schemas.wire_book import decode_book_message
from streams.ingest.publisher import ListPublisher, Published
from streams.ingest.replay import (
    CaptureFile,
    Pacer,
    ReplaySummary,
    capture_from_path,
    discover_captures,
    line_channel,
    replay,
)
from tests.shared_data import BINANCE

SPOT = [BINANCE / "spot_ethusdt_20240808.gz", BINANCE / "spot_ethusdt_20240809.gz"]
MINUTE_NS = 60 * 10**9


class FakeClock:
    """A clock that only moves when slept on."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def trade_rows(messages: list[Published]) -> dict[bytes, list[list[TradeRow]]]:
    """Decoded trade batches per key, in publish order."""
    batches: dict[bytes, list[list[TradeRow]]] = defaultdict(list)
    for m in messages:
        if m.topic == TRADES.name:
            venue, symbol, rows = decode_trade_batch(m.value)
            assert m.key == f"{venue}:{symbol}".encode()
            batches[m.key].append(rows)
    return batches


@pytest.fixture(scope="module")
def spot_replay() -> tuple[ReplaySummary, ListPublisher]:
    publisher = ListPublisher()
    summary = replay(SPOT, publisher, progress=False)
    return summary, publisher


def test_spot_replay_counts(spot_replay: tuple[ReplaySummary, ListPublisher]) -> None:
    summary, publisher = spot_replay
    assert summary.trades == 14515
    assert summary.book_updates == 3434 + 3036 + 1  # diffs and the one snapshot
    assert summary.tickers == 24077 + 34681
    assert summary.lines == 33618 + 46126
    assert (summary.dead_letters, summary.skipped) == (0, 0)
    assert summary.messages == len(publisher.messages)
    assert publisher.flushes == 1
    assert summary.last_trade_ids == {"binance:ETH-USDT": "1520553439"}
    assert {m.topic for m in publisher.messages} == {TRADES.name, BOOK.name}
    assert {m.key for m in publisher.messages} == {b"binance:ETH-USDT"}


def test_spot_replay_trades_rebuild_the_reference_candles(spot_replay: tuple[ReplaySummary, ListPublisher]) -> None:
    _, publisher = spot_replay
    [batches] = trade_rows(publisher.messages).values()
    rows = [row for batch in batches for row in batch]
    assert len(rows) == 14515
    assert all(1 <= len(batch) <= 100 for batch in batches)
    ids = [int(r.trade_id) for r in rows]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous, in order, across 08 -> 09

    by_minute: dict[int, list[TradeRow]] = defaultdict(list)
    for row in rows:
        by_minute[row.event_ts_ns // MINUTE_NS * MINUTE_NS].append(row)
    with (BINANCE / "spot_ethusdt_candles_1m.csv").open() as fh:
        reference = list(csv.DictReader(fh))
    assert len(by_minute) == len(reference) == 12
    for ref, (_, minute_rows) in zip(reference, sorted(by_minute.items()), strict=True):
        prices = [r.price for r in minute_rows]
        assert len(minute_rows) == int(ref["trades"])
        assert format(minute_rows[0].price, "f") == ref["open"]
        assert format(minute_rows[-1].price, "f") == ref["close"]
        assert max(prices) == Decimal(ref["high"])
        assert min(prices) == Decimal(ref["low"])
        assert sum((r.size for r in minute_rows), Decimal(0)) == Decimal(ref["volume"])


def test_spot_replay_batches_respect_the_span(spot_replay: tuple[ReplaySummary, ListPublisher]) -> None:
    _, publisher = spot_replay
    [batches] = trade_rows(publisher.messages).values()
    assert all(b[-1].event_ts_ns - b[0].event_ts_ns <= 50_000_000 for b in batches)
    # The batches really carry several trades when trades come in bursts.
    assert max(len(b) for b in batches) > 10


def test_spot_replay_book_messages_keep_the_diff_sequence(spot_replay: tuple[ReplaySummary, ListPublisher]) -> None:
    _, publisher = spot_replay
    book = publisher.on_topic(BOOK.name)
    assert len(book) == 3434 + 3036 + 1 + 24077 + 34681  # one message per exchange frame
    diffs = []
    for message in book:
        _, _, items = decode_book_message(message.value)
        assert len(items) == 1
        if items[0].schema_version == "book_delta.v1":
            diffs.append(items[0])
    # Spot diffs chain by U == previous u + 1 over the whole recording (README).
    assert all(b.first_update_id == a.last_update_id + 1 for a, b in itertools.pairwise(diffs))
    [snapshot_message] = [m for m in book if b'"book_snapshot.v1"' in m.value]
    _, _, [snapshot] = decode_book_batch(snapshot_message.value)
    assert snapshot.last_update_id == 35346513512


def test_a_directory_replays_all_captures_in_per_stream_order() -> None:
    publisher = ListPublisher()
    summary = replay([BINANCE], publisher, channels=["trade"], progress=False)
    assert summary.trades == 6106 + 8409 + 14076 + 1732 + 1863
    assert summary.skipped == 232713 - summary.trades
    batches = trade_rows(publisher.messages)
    assert set(batches) == {b"binance:ETH-USDT", b"binance-usdm:ETH-USDT", b"binance-coinm:ETH-USD"}
    for key, stream_batches in batches.items():
        assert all(1 <= len(b) <= 100 for b in stream_batches)
        ids = [int(r.trade_id) for b in stream_batches for r in b]
        assert ids == list(range(ids[0], ids[0] + len(ids))), key
        assert summary.last_trade_ids[key.decode()] == str(ids[-1])


def test_discovery_reads_names_and_skips_other_files() -> None:
    captures = discover_captures([BINANCE, SPOT[0]])  # the file twice: once only
    assert [(c.market, c.symbol, c.date) for c in captures] == [
        ("cm", "ETHUSD_PERP", "20240808"),
        ("cm", "ETHUSD_PERP", "20240809"),
        ("spot", "ETHUSDT", "20240808"),
        ("spot", "ETHUSDT", "20240809"),
        ("usdm", "ETHUSDT", "20240808"),
    ]
    assert captures[0].venue == "binance-coinm"
    with pytest.raises(ValueError, match="not a capture name"):
        capture_from_path(BINANCE / "spot_ethusdt_candles_1m.csv")
    with pytest.raises(FileNotFoundError):
        discover_captures([BINANCE / "nope.gz"])


def test_namespace_prefixes_every_topic(tmp_path: Path) -> None:
    path = write_capture(tmp_path / "spot_ethusdt_20240808.gz", [*first_lines(SPOT[0], 300), b"garbage"])
    publisher = ListPublisher()
    replay([path], publisher, namespace="replay-7.", progress=False)
    assert {m.topic for m in publisher.messages} == {
        TRADES.full_name("replay-7."),
        BOOK.full_name("replay-7."),
        DEAD_LETTER.full_name("replay-7."),
    }


# --- malformed lines -----------------------------------------------------------------------


def first_lines(path: Path, n: int) -> list[bytes]:
    with gzip.open(path, "rb") as fh:
        return [fh.readline().rstrip(b"\n") for _ in range(n)]


def write_capture(path: Path, lines: list[bytes], compress: bool = True) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def count_trades(lines: list[bytes]) -> int:
    return sum(1 for line in lines if json.loads(line.split(b" ", 1)[1]).get("stream", "").endswith("@trade"))


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_malformed_lines_go_to_the_dead_letter_topic(tmp_path: Path, compress: bool) -> None:
    good = first_lines(SPOT[0], 300)
    no_prefix = b"this is not a capture line"
    bad_json = good[99].split(b" ", 1)[0] + b' {"stream":"ethusdt@trade","data":{'
    unknown = good[149].split(b" ", 1)[0] + b' {"stream":"ethusdt@aggTrade","data":{}}'
    lines = [*good[:50], no_prefix, *good[50:100], bad_json, *good[100:150], unknown, *good[150:]]
    name = "spot_ethusdt_20240808" + (".gz" if compress else "")
    path = write_capture(tmp_path / name, lines, compress)

    publisher = ListPublisher()
    summary = replay([path], publisher, progress=False)

    assert summary.dead_letters == 3
    assert summary.lines == len(lines)
    assert summary.trades == count_trades(good) == 41  # the rest went on
    letters = publisher.on_topic(DEAD_LETTER.name)
    assert [m.key for m in letters] == [str(path).encode()] * 3
    decoded = [DeadLetter.model_validate_json(m.value) for m in letters]
    assert [bytes.fromhex(d.raw_hex) for d in decoded] == [no_prefix, bad_json, unknown]
    assert all(d.venue == "binance" and d.symbol == "ETH-USDT" and d.source == str(path) for d in decoded)
    assert "recv_ns" in decoded[0].error
    assert "invalid JSON" in decoded[1].error
    assert "unknown stream" in decoded[2].error
    # A line without a time is filed under the time of the line before it.
    assert decoded[0].recv_ts_ns == int(good[49].split(b" ", 1)[0])
    assert decoded[1].recv_ts_ns == int(good[99].split(b" ", 1)[0])


def test_plain_and_gzip_captures_replay_identically(tmp_path: Path) -> None:
    lines = first_lines(SPOT[0], 500)
    outputs = []
    for compress, directory in ((True, "gz"), (False, "plain")):
        (tmp_path / directory).mkdir()
        path = write_capture(tmp_path / directory / "spot_ethusdt_20240808.gz", lines, compress)
        publisher = ListPublisher()
        replay([path], publisher, progress=False)
        outputs.append(publisher.messages)
    assert outputs[0] == outputs[1]


# --- pacing ----------------------------------------------------------------------------------


def exchange_times_ms(path: Path) -> list[int]:
    """Per line, the exchange time that should drive pacing; spot tickers and the spot
    snapshot have none."""
    times = []
    for line in first_lines(path, 2000):
        obj: Any = json.loads(line.split(b" ", 1)[1])
        data = obj.get("data", obj)
        if data.get("e") == "trade":
            times.append(data["T"])
        elif "E" in data:
            times.append(data["E"])
    return times


def test_pacing_follows_exchange_time_on_a_fake_clock(tmp_path: Path) -> None:
    path = write_capture(tmp_path / "spot_ethusdt_20240808.gz", first_lines(SPOT[0], 2000))
    clock = FakeClock()
    paced = ListPublisher()
    summary = replay([path], paced, speed=4.0, clock=clock, sleep=clock.sleep, progress=False)

    times = exchange_times_ms(path)
    expected_s = (max(times) - times[0]) / 1000 / 4.0
    # The clock moves only in sleeps, which end exactly when each new max event time is due.
    assert sum(clock.sleeps) == pytest.approx(expected_s, rel=1e-9)
    assert summary.elapsed_s == pytest.approx(expected_s, rel=1e-9)
    assert len(clock.sleeps) > 100

    unpaced_clock = FakeClock()
    unpaced = ListPublisher()
    replay([path], unpaced, clock=unpaced_clock, sleep=unpaced_clock.sleep, progress=False)
    assert unpaced_clock.sleeps == []
    assert paced.messages == unpaced.messages  # speed changes timing, never content


def test_pacer_never_sleeps_for_events_behind_the_max() -> None:
    clock = FakeClock(0.0)
    pacer = Pacer(2.0, clock, clock.sleep)
    pacer.wait_for(10 * 10**9)  # origin
    pacer.wait_for(12 * 10**9)
    assert clock.now == pytest.approx(1.0)
    pacer.wait_for(11 * 10**9)  # late: no wait
    clock.now += 5.0  # fell behind: no wait either
    pacer.wait_for(13 * 10**9)
    assert clock.sleeps == [pytest.approx(1.0)]
    with pytest.raises(ValueError):
        Pacer(0.0)


def test_line_channel_classifies_without_decoding() -> None:
    lines = first_lines(SPOT[0], 10)
    assert [line_channel(line) for line in lines[:6]] == [
        "bookTicker",
        "depth",
        "bookTicker",
        "bookTicker",
        "depth",
        "depth",
    ]
    assert line_channel(b'1 {"stream":"x@aggTrade","data":{}}') is None
    assert line_channel(b"garbage") is None


def test_unknown_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="channels"):
        replay(SPOT, ListPublisher(), channels=["trades"], progress=False)


def test_a_capture_file_can_be_named_explicitly(tmp_path: Path) -> None:
    path = write_capture(tmp_path / "whatever.log", first_lines(SPOT[0], 300), compress=False)
    publisher = ListPublisher()
    summary = replay([CaptureFile(path, "spot", "ETHUSDT")], publisher, progress=False)
    assert summary.trades == 41
    assert summary.book_updates >= 1  # the snapshot got its symbol from the CaptureFile
