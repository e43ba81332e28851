"""Candle history import: validation of every bad input, derivation against hand-worked sums,
numpy over the recorded 1m file and the candle core itself, gap counting against the data's
README, Parquet = CSV, re-import identical, and the simulated warm history."""

from __future__ import annotations

import csv
import itertools
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.cli.history import import_into
from infra.config.settings import Settings
from schemas.codecs import candles as candle_codec
from schemas.events import Candle
from schemas.wire import TradeRow
from streams.core.candles import CandleBuilder
from streams.core.history import (
    COLUMNS,
    DERIVED,
    BadHistory,
    Bar,
    check_target,
    count_empty,
    count_gaps,
    derive,
    history_candles,
    parse_bars,
    simulated_history,
)
from streams.core.simulation import default_symbol
from streams.ingest.history import load_file, load_files, publish_history, publish_simulated_history
from streams.ingest.publisher import ListPublisher
from tests.shared_data import DATA

HISTORY = DATA / "history"
MIN = 60 * 10**9
HOUR = 3600 * 10**9
DAY = 86400 * 10**9
T0 = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z
NOW = T0 + 400 * DAY
HEADER = ",".join(COLUMNS)


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rows_of(*lines: str) -> list[tuple[int, list[str]]]:
    return [(i + 2, line.split(",")) for i, line in enumerate(lines)]


GOOD = (f"{iso(T0)},10,12,9,11,5", f"{iso(T0 + MIN)},11,11.5,10.5,11,0.25", f"{iso(T0 + 2 * MIN)},11,13,11,12.5,1")


def parse(*lines: str, interval: str = "1m", now: int = NOW) -> list[Bar]:
    return parse_bars("f.csv", rows_of(*lines), interval, now)


def test_good_rows_parse_to_exact_decimals() -> None:
    bars = parse(*GOOD)
    assert [b.open_ts_ns for b in bars] == [T0, T0 + MIN, T0 + 2 * MIN]
    assert bars[1] == Bar(T0 + MIN, Decimal("11"), Decimal("11.5"), Decimal("10.5"), Decimal("11"), Decimal("0.25"))


@pytest.mark.parametrize(("bad", "line", "reason"), [
    (f"{iso(T0 + 3 * MIN)},11,12,10", 5, "expected 6 fields"),
    (f"{iso(T0 + 3 * MIN)},11,12,10,x,1", 5, "close is not a decimal"),
    (f"{iso(T0 + 3 * MIN)},11,12,10,NaN,1", 5, "not a finite number"),
    ("2024-01-01 00:03,11,12,10,11,1", 5, "not in UTC"),
    ("yesterday,11,12,10,11,1", 5, "bad timestamp"),
    (f"{iso(T0 + 3 * MIN)},11,12,10,11,0.000000001", 5, "more than 8 decimal places"),
    (f"{iso(T0 + MIN)},11,12,10,11,1", 5, "not ascending"),
    (f"{iso(T0 + 2 * MIN)},11,12,10,11,1", 5, "duplicated"),
    (f"{iso(T0 + 3 * MIN + 10 * 10**9)},11,12,10,11,1", 5, "not aligned to 1m"),
    (f"{iso(T0 + 3 * MIN)},11,10,12,11,1", 5, "high 10 < low 12"),
    (f"{iso(T0 + 3 * MIN)},13,12,10,11,1", 5, "open 13 or close 11 outside"),
    (f"{iso(T0 + 3 * MIN)},11,12,10,9,1", 5, "open 11 or close 9 outside"),
    (f"{iso(T0 + 3 * MIN)},0,12,0,11,1", 5, "prices must be positive"),
    (f"{iso(T0 + 3 * MIN)},11,12,10,11,-1", 5, "negative volume"),
    (f"{iso(NOW)},11,12,10,11,1", 5, "in the future"),
    (f"{iso(NOW - 30 * 10**9)},11,12,10,11,1", 5, "not aligned"),
])
def test_every_bad_row_is_refused_with_line_and_reason(bad: str, line: int, reason: str) -> None:
    with pytest.raises(BadHistory) as caught:
        parse(*GOOD, bad)
    assert (caught.value.source, caught.value.line) == ("f.csv", line)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"f.csv:{line}: ")


def test_a_bar_not_closed_yet_is_refused() -> None:
    now = T0 + 3 * MIN + 30 * 10**9  # the minute at T0 + 3 min is still open
    with pytest.raises(BadHistory, match="not closed yet"):
        parse(*GOOD, f"{iso(T0 + 3 * MIN)},11,12,10,11,1", now=now)
    assert len(parse(*GOOD, now=T0 + 3 * MIN)) == 3  # closed exactly now: accepted


@pytest.mark.parametrize(("venue", "symbol", "interval", "where"), [
    ("nasdaq", "BTC-USDT", "1h", "--venue"), ("binance", "BTCUSDT", "1h", "--symbol"),
    ("binance", "BTC$USDT", "1h", "--symbol"), ("binance", "BTC-USDT", "2h", "--interval"),
])
def test_unknown_venue_or_malformed_symbol_is_refused_before_any_file_is_read(
        venue: str, symbol: str, interval: str, where: str) -> None:
    with pytest.raises(BadHistory) as caught:
        load_files([Path("/nonexistent/file.csv")], venue, symbol, interval, NOW)
    assert caught.value.source == where
    assert check_target("Binance", "btc-usdt", "1h") == ("binance", "BTC-USDT", "1h")
    assert check_target("sim", "ETH-USDT", "1m") == ("sim", "ETH-USDT", "1m")


def write_csv(path: Path, *lines: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_a_bad_file_publishes_nothing_even_when_the_bad_row_is_last(tmp_path: Path) -> None:
    good = write_csv(tmp_path / "good.csv", *GOOD)
    bad = write_csv(tmp_path / "bad.csv", *GOOD, f"{iso(T0 + 3 * MIN)},11,12,10,11,-1")
    publisher = ListPublisher()
    nowhere = Settings(clickhouse_url="http://127.0.0.1:9")  # type: ignore[call-arg]
    with pytest.raises(BadHistory) as caught:  # the store is never asked: nothing passed validation
        import_into(nowhere, [good, bad], "binance", "BTC-USDT", "1m", now_ns=NOW, publisher=publisher)
    assert (caught.value.source, caught.value.line) == (str(bad), 5)
    assert publisher.messages == [] and publisher.flushes == 0


def test_header_must_be_the_documented_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "h.csv", *GOOD, header="time,open,high,low,close,volume")
    with pytest.raises(BadHistory, match=r"h.csv:1: expected the columns"):
        load_file(path, "1m", NOW)


def test_parquet_with_string_or_typed_timestamps_reads_as_the_csv(tmp_path: Path) -> None:
    csv_bars = load_file(write_csv(tmp_path / "a.csv", *GOOD), "1m", NOW)
    cols = list(zip(*(line.split(",") for line in GOOD), strict=True))
    as_strings = pa.table({name: list(col) for name, col in zip(COLUMNS, cols, strict=True)})
    pq.write_table(as_strings, tmp_path / "s.parquet")
    typed = as_strings.set_column(0, COLUMNS[0], pa.array(
        [datetime.fromisoformat(t) for t in cols[0]], pa.timestamp("ms", tz="UTC")))
    typed = typed.set_column(5, "volume", pa.array([Decimal(v) for v in cols[5]], pa.decimal128(18, 8)))
    pq.write_table(typed, tmp_path / "t.parquet")
    assert load_file(tmp_path / "s.parquet", "1m", NOW) == csv_bars
    assert load_file(tmp_path / "t.parquet", "1m", NOW) == csv_bars


def test_parquet_rows_are_validated_with_their_row_number(tmp_path: Path) -> None:
    lines = [*GOOD, f"{iso(T0 + MIN)},11,12,10,11,1"]
    cols = list(zip(*(line.split(",") for line in lines), strict=True))
    pq.write_table(pa.table({name: list(col) for name, col in zip(COLUMNS, cols, strict=True)}), tmp_path / "b.pq")
    with pytest.raises(BadHistory, match=r"b.pq:5: .*not ascending"):
        load_file(tmp_path / "b.pq", "1m", NOW)


# --- candles and derivation --------------------------------------------------------------------


def test_hand_worked_roll_up_of_three_minutes_into_five() -> None:
    out = history_candles(parse(*GOOD), "binance", "BTC-USDT", "1m")
    assert set(out) == {"1m", *DERIVED["1m"]}
    assert out["1h"] == out["1d"] == []  # three minutes do not cover an hour: no partial candle
    assert out["5m"] == []  # nor five minutes
    five = parse(*GOOD, f"{iso(T0 + 3 * MIN)},12.5,12.5,8,9,0", f"{iso(T0 + 4 * MIN)},9,9.5,8.5,9.25,2")
    (candle,) = history_candles(five, "binance", "BTC-USDT", "1m")["5m"]
    # by hand: open of the first minute, close of the last, extremes of the minutes with trades
    # (the zero-volume minute is no candle, so its low of 8 counts nowhere), summed volume
    assert (candle.open, candle.high, candle.low, candle.close, candle.volume) == (
        Decimal("10"), Decimal("13"), Decimal("8.5"), Decimal("9.25"), Decimal("8.25"))
    assert (candle.open_ts_ns, candle.trades, candle.revision, candle.is_final) == (T0, 4, 0, True)
    assert candle.event_ts_ns == T0 + 5 * MIN - 1


def test_only_coarser_intervals_are_derived() -> None:
    assert DERIVED == {"1m": ("5m", "1h", "1d"), "5m": ("1h", "1d"), "1h": ("1d",), "1d": ()}
    hours = history_candles(parse(f"{iso(T0)},1,2,1,2,1", interval="1h"), "binance", "A-B", "1h")["1h"]
    with pytest.raises(ValueError, match="cannot derive 1m from 1h"):
        derive(hours, "1m", T0, T0 + DAY)


def read_history(name: str, interval: str) -> list[Bar]:
    return load_file(HISTORY / name, interval, NOW + 10 * 365 * DAY)


def test_derived_hours_and_days_equal_numpy_over_the_recorded_minutes() -> None:
    bars = read_history("binanceus_btcusdt_1m.csv", "1m")
    out = history_candles(bars, "binance", "BTC-USDT", "1m")
    with (HISTORY / "binanceus_btcusdt_1m.csv").open() as f:
        table = np.array([row[1:] for row in list(csv.reader(f))[1:]], dtype=object)
    ohlcv = np.vectorize(Decimal)(table)  # exact decimals, straight from the file's strings
    for interval, per in (("1h", 60), ("1d", 1440), ("5m", 5)):
        o, h, low, c, v = (ohlcv[:, i].reshape(-1, per) for i in range(5))
        traded = v > 0
        keep = traded.any(axis=1)
        first = traded.argmax(axis=1)
        last = per - 1 - traded[:, ::-1].argmax(axis=1)
        rows = np.arange(len(o))
        high = np.where(traded, h, np.full_like(h, Decimal(0))).max(axis=1)
        low_ = np.where(traded, low, np.full_like(low, Decimal("Infinity"))).min(axis=1)
        want = np.stack([o[rows, first], high, low_, c[rows, last], v.sum(axis=1), traded.sum(axis=1)], axis=1)[keep]
        got = [(x.open, x.high, x.low, x.close, x.volume, x.trades) for x in out[interval]]
        assert [tuple(r) for r in want] == got, interval
        starts = [bars[0].open_ts_ns + i * per * MIN for i in np.flatnonzero(keep)]
        assert [x.open_ts_ns for x in out[interval]] == starts
    assert len(out["1m"]) == 30240 - 658  # the README: 658 zero-volume minutes, no candle for them


def trades_of(bar: Bar, first_id: int) -> list[TradeRow]:
    """Four trades that make `bar` (open, high, low, close at 0, 10, 20 and 50 s; the volume split)."""
    quarter = bar.volume / 4
    return [TradeRow(str(first_id + i), price, quarter, "buy", bar.open_ts_ns + s * 10**9, bar.open_ts_ns + s * 10**9)
            for i, (price, s) in enumerate(((bar.open, 0), (bar.high, 10), (bar.low, 20), (bar.close, 50)))]


def test_derivation_equals_what_the_candle_core_builds_from_the_same_trades() -> None:
    bars = [b for b in read_history("binanceus_btcusd_1m.csv", "1m")[: 3 * 1440] if b.volume > 0]
    trades = [t for i, b in enumerate(bars) for t in trades_of(b, 4 * i)]
    built: dict[str, list[Candle]] = {}
    for interval in ("1m", "5m", "1h", "1d"):
        builder = CandleBuilder("binance", "BTC-USD", interval)
        built[interval] = [*builder.update(trades).candles, *builder.advance_to(bars[-1].open_ts_ns + DAY).candles]
    start, end = bars[0].open_ts_ns, bars[0].open_ts_ns + 3 * DAY
    for interval in ("5m", "1h", "1d"):
        derived = derive(built["1m"], interval, start, end)
        assert derived == built[interval], interval
    # and the imported candles themselves roll up to the core's OHLCV
    imported = history_candles(bars, "binance", "BTC-USD", "1m")
    for interval in ("5m", "1h"):
        core = [(c.open_ts_ns, c.open, c.high, c.low, c.close, c.volume) for c in built[interval]]
        mine = [(c.open_ts_ns, c.open, c.high, c.low, c.close, c.volume) for c in imported[interval]]
        assert mine == core[: len(mine)] and len(core) - len(mine) <= 1  # the last bucket may be cut


def test_gaps_and_empty_bars_of_the_recorded_files_match_their_readme() -> None:
    days = read_history("bitstamp_btcusd_1d.csv", "1d")
    assert (len(days), count_gaps(days, "1d")) == (1864, 12)
    hours = read_history("bitstamp_btcusd_1h.csv", "1h")
    assert (len(hours), count_gaps(hours, "1h"), count_empty(hours)) == (24943, 0, 4)
    out = history_candles(hours, "binance", "BTC-USD", "1h")
    assert len(out["1d"]) == 1038  # the README: 24943 hours = 1038 full UTC days
    assert count_gaps(parse(GOOD[0], GOOD[2]), "1m") == 1
    assert count_gaps([], "1m") == 0


# --- publishing and re-import -----------------------------------------------------------------


def test_publishing_uses_the_codec_topic_and_key_and_a_reimport_is_identical_or_skipped() -> None:
    bars = parse(*GOOD, f"{iso(T0 + 3 * MIN)},12.5,12.5,8,9,0", f"{iso(T0 + 4 * MIN)},9,9.5,8.5,9.25,2")
    first, again = ListPublisher(), ListPublisher()
    summary = publish_history(bars, "binance", "BTC-USDT", "1m", first, namespace="ns.")
    publish_history(bars, "binance", "BTC-USDT", "1m", again, namespace="ns.")
    assert first.messages == again.messages  # byte-identical: the sink's key collapses them
    assert {m.topic for m in first.messages} == {"ns.md.candles.1m.v1", "ns.md.candles.5m.v1"}
    assert {m.key for m in first.messages} == {b"binance:BTC-USDT"}
    decoded = [candle_codec.decode(m.value) for m in first.on_topic("ns.md.candles.1m.v1")]
    assert [c.open_ts_ns for c in decoded] == [T0, T0 + MIN, T0 + 2 * MIN, T0 + 4 * MIN]
    assert all(c.is_final and c.revision == 0 for c in decoded)
    assert (summary.bars, summary.gaps, summary.empty, summary.imported, summary.skipped) == (
        5, 0, 1, {"1m": 4, "5m": 1, "1h": 0, "1d": 0}, {"1m": 0, "5m": 0, "1h": 0, "1d": 0})

    stored = {(m.topic.split(".")[3], candle_codec.decode(m.value).open_ts_ns) for m in first.messages}
    asked: list[tuple[str, str, str, int, int]] = []

    def store(venue: str, symbol: str, interval: str, lo: int, hi: int) -> set[int]:
        asked.append((venue, symbol, interval, lo, hi))
        return {ts for iv, ts in stored if iv == interval and lo <= ts <= hi}

    third = ListPublisher()
    summary = publish_history(bars, "binance", "BTC-USDT", "1m", third, namespace="ns.", stored=store)
    assert third.messages == [] and summary.imported == {"1m": 0, "5m": 0, "1h": 0, "1d": 0}
    assert summary.skipped == {"1m": 4, "5m": 1, "1h": 0, "1d": 0}
    assert asked == [("binance", "BTC-USDT", "1m", T0, T0 + 4 * MIN), ("binance", "BTC-USDT", "5m", T0, T0)]


# --- the simulated warm history ---------------------------------------------------------------


def test_simulated_history_is_seeded_valid_and_ends_at_the_live_feed_start() -> None:
    end = T0 + 37 * HOUR + 17 * MIN + 5 * 10**9  # mid-minute, mid-hour
    spec = default_symbol("BTC-USDT")
    h = simulated_history(spec, seed=7, end_ns=end, days=90)
    assert h == simulated_history(spec, seed=7, end_ns=end, days=90)
    assert h.hours != simulated_history(spec, seed=8, end_ns=end, days=90).hours
    midnight = T0 + DAY
    assert (h.hours[0].open_ts_ns, len(h.hours)) == (midnight - 90 * DAY, 89 * 24)
    assert (h.minutes[0].open_ts_ns, h.minutes[-1].open_ts_ns) == (midnight - DAY, T0 + 37 * HOUR + 16 * MIN)
    assert count_gaps(h.hours, "1h") == count_gaps(h.minutes, "1m") == 0
    assert h.hours[-1].open_ts_ns + HOUR == h.minutes[0].open_ts_ns  # one series, no seam
    assert h.minutes[-1].close == spec.start_price  # the live feed continues from its last close
    # every bar passes the importer's own checks
    for bars, interval in ((h.hours, "1h"), (h.minutes, "1m")):
        lines = [f"{iso(b.open_ts_ns)},{b.open},{b.high},{b.low},{b.close},{b.volume}" for b in bars]
        assert parse(*lines, interval=interval, now=end) == bars
    # hourly closes are a random walk with the feed's volatility: ~0.0005 per √s, so per hour
    r = np.diff(np.log([float(b.close) for b in h.hours]))
    assert 0.8 < float(np.std(r)) / (0.0005 * 60) < 1.2
    out = history_candles(h.minutes, "sim", "BTC-USDT", "1m")
    assert len(out["1d"]) == 1 and len(out["1h"]) == 24 + 13  # the whole hours of yesterday and today


def test_the_warm_default_publishes_final_candles_that_the_live_feed_continues() -> None:
    end = T0 + 10 * DAY + 5 * HOUR + 30 * MIN + 7 * 10**9
    out = ListPublisher()
    summaries = publish_simulated_history(out, ["BTC-USDT", "ETH-USDT"], end_ns=end, days=90, seed=7, namespace="w.")
    assert [(s.venue, s.symbol, s.interval) for s in summaries] == [
        ("sim", "BTC-USDT", "1h"), ("sim", "BTC-USDT", "1m"), ("sim", "ETH-USDT", "1h"), ("sim", "ETH-USDT", "1m")]
    hours = [candle_codec.decode(m.value) for m in out.on_topic("w.md.candles.1h.v1")]
    btc_hours = [c for c in hours if c.symbol == "BTC-USDT"]
    assert len(btc_hours) == 89 * 24 + 24 + 5  # 89 days as hours, then yesterday's and today's whole hours
    assert btc_hours[0].open_ts_ns == T0 + 10 * DAY - 90 * DAY
    steps = [b.open_ts_ns - a.open_ts_ns for a, b in itertools.pairwise(btc_hours)]
    assert steps == [HOUR] * (len(btc_hours) - 1)  # one gap-free hourly series across the seam, in event-time order
    minutes = [candle_codec.decode(m.value) for m in out.on_topic("w.md.candles.1m.v1") if m.key == b"sim:BTC-USDT"]
    assert minutes[-1].open_ts_ns + MIN <= end < minutes[-1].open_ts_ns + 2 * MIN
    # the live simulated feed starts at `end` from its start price: the last close
    assert minutes[-1].close == default_symbol("BTC-USDT").start_price
    assert all(c.is_final and c.revision == 0 and c.venue == "sim" for c in hours + minutes)
    days = [candle_codec.decode(m.value) for m in out.on_topic("w.md.candles.1d.v1") if m.key == b"sim:ETH-USDT"]
    assert len(days) == 90  # 89 from the hours, yesterday from the minutes; today is not over
    again = ListPublisher()
    publish_simulated_history(again, ["BTC-USDT", "ETH-USDT"], end_ns=end, days=90, seed=7, namespace="w.")
    assert again.messages == out.messages


def test_the_history_commands_are_registered() -> None:
    from infra.cli.main import parser

    args = parser().parse_args(["history", "import", "a.csv", "b.parquet", "--venue", "binance", "--symbol",
                                "BTC-USDT", "--interval", "1h"])
    assert (args.files, args.venue, args.symbol, args.interval) == (["a.csv", "b.parquet"], "binance", "BTC-USDT", "1h")
    args = parser().parse_args(["history", "simulate", "--days", "90"])
    assert (args.days, args.seed, args.symbols) == (90, 7, ["BTC-USDT", "ETH-USDT"])
