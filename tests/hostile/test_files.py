"""Files from outside against hostile content (issue 18, hostile-input tier): recorded captures and
recordings (`entasis replay`), the recorder's own helpers (streams/core/recording.py), and candle
history files (`entasis history import`, CSV).

- A replay of any bytes never raises: every line either becomes events that decode on their topic,
  or a dead letter carrying the line's raw bytes; a gzip file cut short or corrupted ends like a
  truncated one.
- The recorder's helpers never raise on a frame from the network (they run inside the connector's
  receive loop, before ccxt): `frame_symbol` is None or a valid symbol, `line` writes one line that
  reads back as the frame.
- A history file of any content is imported or refused with `BadHistory` (file, line, reason);
  what it imports publishes as candles their topic's decoder accepts."""

from __future__ import annotations

import contextlib
import gzip
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.codecs import book, candles, dead_letters, trades
from schemas.limits import MAX_TIME_NS, symbol_problem
from streams.core.history import BadHistory, history_candles, parse_bars
from streams.core.recording import frame_symbol, line, parse_file_name
from streams.core.venues.binance import split_line
from streams.ingest.history import load_file
from streams.ingest.publisher import ListPublisher
from streams.ingest.replay import replay
from tests.hostile.strategies import HOSTILE, JSON, SCALARS, dumps, mutated
from tests.hostile.test_venues import COINBASE, DEPTH_SPOT, KRAKEN, TRADE

FILES = settings(HOSTILE, suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)

# --- replays ---------------------------------------------------------------------------------

RECV = 1_723_161_600_000_000_000


def replayed(path: Path) -> ListPublisher:
    """Replay one file; check what came out: valid events, or dead letters with the raw line."""
    publisher = ListPublisher()
    summary = replay([path], publisher, progress=False)
    for message in publisher.messages:
        if message.topic == "md.trades.v1":
            trades.decode(message.value)
        elif message.topic == "md.book.v1":
            book.decode(message.value)
        else:
            assert message.topic == "md.deadletter.v1"
            letter = dead_letters.decode(message.value)
            assert letter.source == str(path) and letter.raw_hex
    assert summary.dead_letters == len(publisher.on_topic("md.deadletter.v1"))
    return publisher


LINES = st.lists(
    st.one_of(
        st.binary(max_size=80),
        JSON.map(lambda v: b"%d %s" % (RECV, dumps(v))),
        mutated(TRADE).map(lambda m: b"%d %s" % (RECV, dumps(m))),
        mutated({"stream": "ethusdt@depth@100ms", "data": DEPTH_SPOT}).map(lambda m: b"%d %s" % (RECV, dumps(m))),
        st.sampled_from([b"%d %s" % (RECV, dumps(TRADE)), b"9" * 5000 + b" {}", b"%d {}" % 2**64, b"-5 {}"]),
    ),
    max_size=12,
)


@example(lines=[b"9" * 5000 + b" " + dumps(TRADE)], compress=False)
@example(lines=[b"%d %s" % (2**63, dumps(TRADE))], compress=True)
@FILES
@given(lines=LINES, compress=st.booleans())
def test_a_binance_capture_of_any_lines_replays_or_dead_letters(tmp_path: Path, lines: list[bytes],
                                                                  compress: bool) -> None:
    body = b"\n".join(lines)
    path = tmp_path / "spot_ethusdt_20240808.gz"
    path.write_bytes(gzip.compress(body) if compress else body)
    publisher = replayed(path)
    letters = [bytes.fromhex(dead_letters.decode(m.value).raw_hex) for m in publisher.on_topic("md.deadletter.v1")]
    for letter in letters:  # each is one of the file's lines (up to the size cap), never an invention
        assert any(raw.rstrip(b"\r").startswith(letter) for raw in body.split(b"\n"))


@pytest.mark.parametrize(("name", "sample"), [("coinbase_btc-usd_20240809.gz", COINBASE),
                                              ("kraken_btc-usd_20240809.gz", KRAKEN)])
@FILES
@given(data=st.data())
def test_a_recording_of_hostile_frames_replays_or_dead_letters(tmp_path: Path, name: str, sample: dict[str, Any],
                                                              data: st.DataObject) -> None:
    frames = data.draw(st.lists(mutated(sample) | JSON, max_size=6))
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"".join(line(RECV + i, dumps(f)) for i, f in enumerate(frames))))
    replayed(path)


@example(blob=b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage that is no deflate stream", cut=0)
@FILES
@given(blob=st.binary(max_size=200), cut=st.integers(0, 400))
def test_a_corrupted_or_cut_gzip_capture_ends_like_a_truncated_one(tmp_path: Path, blob: bytes, cut: int) -> None:
    good = gzip.compress(b"%d %s\n" % (RECV, dumps(TRADE)) * 3)
    for content in (blob, good[:cut] + blob, good[:cut], good + blob):
        path = tmp_path / "spot_ethusdt_20240808.gz"
        path.write_bytes(content)
        replayed(path)


# --- the recorder's helpers -------------------------------------------------------------------


@example(venue="coinbase", frame=dumps({"events": 5}))
@example(venue="coinbase", frame=dumps({"events": [{"trades": 5}]}))
@HOSTILE
@given(venue=st.sampled_from(["binance", "binance-usdm", "coinbase", "kraken", "sim"]),
       frame=st.one_of(st.binary(max_size=120), JSON.map(dumps), mutated(COINBASE).map(dumps),
                       mutated(KRAKEN).map(dumps), mutated({"stream": "ethusdt@trade", "data": TRADE}).map(dumps)))
def test_frame_symbol_never_raises(venue: str, frame: bytes) -> None:
    symbol = frame_symbol(venue, frame)
    assert symbol is None or symbol_problem(symbol) is None


@HOSTILE
@given(recv_ns=st.integers(0, MAX_TIME_NS), frame=st.binary(max_size=120) | st.text(max_size=60))
def test_a_recorded_line_is_one_line_that_reads_back(recv_ns: int, frame: bytes | str) -> None:
    written = line(recv_ns, frame)
    assert written.endswith(b"\n") and written.count(b"\n") == 1 and b"\r" not in written[:-1]
    got_ns, body = split_line(written[:-1])
    assert got_ns == recv_ns
    raw = frame.encode() if isinstance(frame, str) else frame
    if b"\n" not in raw and b"\r" not in raw:
        assert body == raw  # unchanged; a frame with line breaks is re-serialised (or escaped)


@HOSTILE
@given(name=st.text(max_size=40))
def test_recording_names_parse_or_are_none(name: str) -> None:
    parsed = parse_file_name(name)
    assert parsed is None or parsed.symbol is None or symbol_problem(parsed.symbol) is None


# --- candle history files ---------------------------------------------------------------------

HEADER = "timestamp_utc_iso,open,high,low,close,volume"
GOOD_ROW = ["2024-08-08T00:00:00Z", "2683.8", "2690", "2680.5", "2689.99", "12.5"]
NOW = 1_900_000_000 * 10**9


def imported(bars: list[Any]) -> None:
    """Bars that passed become candles their topic's decoder takes (nothing dead-lettered later)."""
    for candle_list in history_candles(bars, "binance", "ETH-USDT", "1m").values():
        for candle in candle_list:
            candles.decode(candles.encode(candle))


@example(rows=[["2024-08-08T00:00:00Z", "1e30", "1e30", "1e30", "1e30", "1"]])
@example(rows=[["0001-01-01T00:00:00Z", "1", "1", "1", "1", "1"]])
@example(rows=[["2024-08-08T00:00:00Z", "1", "1", "1", "1", "1e31"]])
@HOSTILE
@given(rows=st.lists(st.one_of(
    st.lists(SCALARS.map(lambda v: v if isinstance(v, str) else json.dumps(v)), max_size=7),
    st.tuples(*(st.sampled_from([v, "", "-1", "1e30", "NaN", "1.123456789", "2024-08-08T00:00:00+01:00"])
                for v in GOOD_ROW)).map(list),
), max_size=5))
def test_history_rows_import_or_are_refused_by_line(rows: list[list[str]]) -> None:
    try:
        bars = parse_bars("f.csv", list(enumerate(rows, 2)), "1m", NOW)
    except BadHistory as exc:
        assert exc.source == "f.csv" and exc.line is not None
        return
    imported(bars)


@FILES
@given(content=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: (HEADER + "\n" + t).encode()))
def test_a_history_file_of_any_content_imports_or_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "candles.csv"
    path.write_bytes(content)
    with contextlib.suppress(BadHistory):
        imported(load_file(path, "1m", NOW))


def test_a_good_history_row_imports() -> None:
    [bar] = parse_bars("f.csv", [(2, GOOD_ROW)], "1m", NOW)
    assert bar.close == Decimal("2689.99")
    imported([bar])
