"""Recordings of live feeds (`entasis connect --record`): file names and lines
(`streams.core.recording`), the writer's rotation at UTC midnight (`streams.ingest.recorder`),
the Coinbase and Kraken frame parsers, and the replay of a recording."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from ccxt.base.exchange import Exchange

from schemas import topics
from schemas.codecs.trades import decode_trades
from schemas.events import Side
from streams.core import recording
from streams.core.venues import coinbase, kraken
from streams.core.venues.ccxt_events import iso8601_ms
from streams.ingest.publisher import ListPublisher
from streams.ingest.recorder import Recorder
from streams.ingest.replay import capture_from_path, replay


def ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * 1_000_000_000


BEFORE_MIDNIGHT = ns(2026, 12, 3, 23, 59, 59) + 999_999_999
MIDNIGHT = ns(2026, 12, 4)

BINANCE_TRADE = b'{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"100.10","q":"0.5","T":1764806400000,"m":true}'
BINANCE_ACK = b'{"result":null,"id":1}'


def coinbase_trades(*trades: tuple[str, str]) -> bytes:
    """A market_trades frame; Coinbase lists an event's trades newest first."""
    wire = [
        {
            "trade_id": tid,
            "product_id": product,
            "price": "1.50",
            "size": "2",
            "side": "BUY",
            "time": f"2026-12-03T10:00:0{tid}.123456789Z",
        }
        for tid, product in trades
    ]
    return orjson.dumps({"channel": "market_trades", "sequence_num": 1, "events": [{"type": "update", "trades": wire}]})


def test_file_names_rotate_at_utc_midnight_and_parse_back() -> None:
    assert recording.file_name("binance-usdm", "ETH-USDT", BEFORE_MIDNIGHT) == "binance-usdm_eth-usdt_20261203.gz"
    assert recording.file_name("binance-usdm", "ETH-USDT", MIDNIGHT) == "binance-usdm_eth-usdt_20261204.gz"
    assert recording.file_name("kraken", None, MIDNIGHT) == "kraken_venue_20261204.gz"
    assert recording.parse_file_name("binance-usdm_eth-usdt_20261203.gz") == recording.RecordingName(
        "binance-usdm", "ETH-USDT", "20261203"
    )
    assert recording.parse_file_name("kraken_venue_20261204.gz") == recording.RecordingName("kraken", None, "20261204")
    # the Binance capture layout is no recording: its symbol slot has no `-`
    assert recording.parse_file_name("spot_ethusdt_20240808.gz") is None
    assert recording.parse_file_name("cm_ethusd_perp_20240809.gz") is None


def test_a_line_is_the_receive_time_and_the_frame_on_one_line() -> None:
    assert recording.line(5, BINANCE_TRADE) == b"5 " + BINANCE_TRADE + b"\n"
    assert recording.line(5, '{"a": 1}') == b'5 {"a": 1}\n'
    pretty = b'{\n  "a": [1,\n 2]\n}'
    assert recording.line(6, pretty) == b'6 {"a":[1,2]}\n'
    assert recording.line(7, b"not\njson").count(b"\n") == 1


@pytest.mark.parametrize(
    ("venue", "frame", "symbol"),
    [
        ("binance", BINANCE_TRADE, "BTC-USDT"),
        ("binance-coinm", b'{"stream":"ethusd_perp@depth","data":{"e":"depthUpdate","s":"ETHUSD_PERP"}}', "ETH-USD"),
        ("binance", BINANCE_ACK, None),
        ("binance", b'[{"s":"BTCUSDT"},{"s":"ETHUSDT"}]', None),  # several symbols: the venue file
        ("coinbase", coinbase_trades(("1", "SKL-USD")), "SKL-USD"),
        ("coinbase", coinbase_trades(("1", "SKL-USD"), ("2", "DASH-BTC")), None),
        ("coinbase", b'{"channel":"heartbeats","events":[{"current_time":"x"}]}', None),
        ("kraken", b'{"channel":"book","type":"update","data":[{"symbol":"XMR/USD","checksum":1}]}', "XMR-USD"),
        ("kraken", b'{"method":"subscribe","success":true,"result":{"channel":"trade","symbol":"SC/EUR"}}', "SC-EUR"),
        ("kraken", b'{"channel":"heartbeat"}', None),
        ("kraken", b"garbage{", None),
    ],
)
def test_each_frame_goes_to_its_symbols_file_or_the_venue_file(venue: str, frame: bytes, symbol: str | None) -> None:
    assert recording.frame_symbol(venue, frame) == symbol


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-03T10:00:01.123456789Z",
        "2026-12-03T10:00:01Z",
        "2026-12-03T10:00:01.5Z",
        "2019-08-14T20:42:27.265Z",
    ],
)
def test_iso_times_read_as_ccxt_reads_them(text: str) -> None:
    # the oracle is ccxt's own parser: the live connector's trade times come from it
    assert iso8601_ms(text) == Exchange.parse8601(text)


def test_iso_times_refuse_what_is_no_utc_time() -> None:
    assert iso8601_ms("yesterday") is None
    assert iso8601_ms(None) is None
    assert iso8601_ms("2026-13-03T10:00:01Z") is None


def test_coinbase_frames_give_their_trades_oldest_first() -> None:
    trades = coinbase.recorded_trades(orjson.loads(coinbase_trades(("2", "SKL-USD"), ("1", "SKL-USD"))), 99)
    assert [t.trade_id for t in trades] == ["1", "2"]
    first = trades[0]
    assert (first.venue, first.symbol, first.price, first.size, first.side) == (
        "coinbase",
        "SKL-USD",
        Decimal("1.50"),
        Decimal("2"),
        Side.BUY,
    )
    assert first.event_ts_ns == ns(2026, 12, 3, 10, 0, 1) + 123_000_000 and first.recv_ts_ns == 99
    assert coinbase.recorded_trades({"channel": "l2_data", "events": []}, 1) == []


def test_kraken_frames_give_their_trades() -> None:
    frame = {
        "channel": "trade",
        "type": "update",
        "data": [
            {
                "symbol": "XMR/USD",
                "side": "sell",
                "price": 354.11,
                "qty": 0.5,
                "ord_type": "limit",
                "trade_id": 4,
                "timestamp": "2021-04-17T16:49:02.557000Z",
            }
        ],
    }
    [trade] = kraken.recorded_trades(frame, 1)
    assert (trade.symbol, trade.trade_id, trade.price, trade.size, trade.side) == (
        "XMR-USD",
        "4",
        Decimal("354.11"),
        Decimal("0.5"),
        Side.SELL,
    )
    assert trade.event_ts_ns == 1618678142557 * 1_000_000


def read_lines(path: Path) -> list[bytes]:
    with gzip.open(path, "rb") as handle:
        return handle.read().splitlines()


def test_the_recorder_writes_one_file_per_symbol_and_day(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "binance")
    recorder.write(BEFORE_MIDNIGHT, BINANCE_TRADE)
    recorder.write(BEFORE_MIDNIGHT, BINANCE_ACK)
    recorder.write(MIDNIGHT, BINANCE_TRADE)
    recorder.close()
    # a restarted connector appends to the day's file
    again = Recorder(tmp_path, "binance")
    again.write(MIDNIGHT + 1, BINANCE_TRADE)
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "binance_btc-usdt_20261203.gz",
        "binance_btc-usdt_20261204.gz",
        "binance_venue_20261203.gz",
    ]
    assert read_lines(tmp_path / "binance_btc-usdt_20261203.gz") == [b"%d %s" % (BEFORE_MIDNIGHT, BINANCE_TRADE)]
    assert read_lines(tmp_path / "binance_btc-usdt_20261204.gz") == [
        b"%d %s" % (MIDNIGHT, BINANCE_TRADE),
        b"%d %s" % (MIDNIGHT + 1, BINANCE_TRADE),
    ]
    assert read_lines(tmp_path / "binance_venue_20261203.gz") == [b"%d %s" % (BEFORE_MIDNIGHT, BINANCE_ACK)]


def test_a_failing_disk_stops_the_recording_not_the_feed(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "binance")
    (tmp_path / "binance_btc-usdt_20261203.gz").mkdir()  # cannot be opened as a file
    recorder.write(BEFORE_MIDNIGHT, BINANCE_TRADE)  # no exception
    assert recorder.failed
    recorder.close()


def test_a_recording_replays_its_trades_once_and_skips_acks(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "coinbase")
    recorder.write(10, b'{"channel":"subscriptions","events":[{"subscriptions":{}}]}')
    recorder.write(11, coinbase_trades(("2", "SKL-USD"), ("1", "SKL-USD")))
    recorder.write(12, coinbase_trades(("3", "SKL-USD"), ("2", "SKL-USD")))  # a re-sent trade: 2
    recorder.close()
    assert capture_from_path(tmp_path / "coinbase_skl-usd_19700101.gz").venue == "coinbase"
    published = ListPublisher()
    summary = replay([tmp_path], published, namespace="r1.", progress=False)
    trades = [t for m in published.on_topic(topics.TRADES.full_name("r1.")) for t in decode_trades(m.value)]
    assert [(t.trade_id, t.recv_ts_ns) for t in trades] == [("1", 11), ("2", 11), ("3", 12)]
    assert summary.dead_letters == 0 and summary.trades == 3


def test_a_malformed_frame_of_a_symbols_file_is_a_dead_letter(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "kraken_xmr-usd_20261203.gz", "wb") as handle:
        handle.write(b'5 {"channel":"trade","data":[{"symbol":"XMR/USD","price":"x"}]}\n')
    published = ListPublisher()
    summary = replay([tmp_path], published, progress=False)
    assert summary.dead_letters == 1 and summary.trades == 0


@pytest.mark.parametrize("command", ["connect", "up"])
def test_record_is_an_argument_handed_to_the_connectors_config(command: str, tmp_path: Path) -> None:
    from infra.cli import live
    from infra.cli.main import parser
    from infra.config.settings import Settings

    args = parser().parse_args([command, "--record", str(tmp_path / "rec")])
    assert args.record == str(tmp_path / "rec")
    assert live.connector_config(Settings(), None, args.record).record_dir == str(tmp_path / "rec")
    # nothing is left behind for the next connectors of the process: parsing set no global
    assert live.connector_config(Settings()).record_dir is None


def test_up_with_nothing_live_to_record_refuses_record(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.cli.main import main

    monkeypatch.delenv("ENTASIS_VENUES", raising=False)  # no live venue: the simulated feed

    code = main(["up", "--record", str(tmp_path / "rec"), "--data-dir", str(tmp_path / "data")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing to record" in err and "simulated feed" in err
    assert not (tmp_path / "rec").exists() and not (tmp_path / "data").exists()  # nothing started


def test_a_recording_cut_short_replays_what_was_flushed(tmp_path: Path) -> None:
    """A connector killed (SIGKILL) mid-file leaves a gzip member without its end; the lines
    flushed before still replay, the cut line is dropped, nothing raises."""
    recorder = Recorder(tmp_path, "coinbase", flush_every_s=0.0)  # every frame flushed
    recorder.write(11, coinbase_trades(("1", "SKL-USD")))
    recorder.write(12, coinbase_trades(("2", "SKL-USD")))
    recorder.flush()
    [path] = list(tmp_path.iterdir())
    whole = path.read_bytes()  # never closed: as the killed process left it
    path.write_bytes(whole + b"\x00\x01")  # and a few bytes of a block it had begun
    with pytest.raises(EOFError), gzip.open(path) as handle:  # what gzip itself makes of it
        handle.read()
    published = ListPublisher()
    summary = replay([tmp_path], published, progress=False)
    assert summary.trades == 2 and summary.dead_letters == 0
