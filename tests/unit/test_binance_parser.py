"""The Binance parser on recorded raw lines (../shared/data/binance), checked against the
same lines read independently with plain gzip + json."""

from __future__ import annotations

import contextlib
import gzip
import json
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.book_ticker import BookTicker
from schemas.events import BookDelta, BookSnapshot, Side, Trade
from schemas.text_memo import MAX_TEXTS
from streams.core.venues.binance import (
    VENUES,
    ParseError,
    parse_line,
    parse_message,
    parse_payload,
    split_line,
    venue_of,
)
from tests.level_keys_oracle import assert_keys_of_texts

BINANCE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "binance"
pytestmark = pytest.mark.skipif(not BINANCE.is_dir(), reason=f"recorded data not found at {BINANCE}")

MS = 1_000_000

# (file, market, Binance symbol, venue, our symbol)
FILES = [
    ("spot_ethusdt_20240808.gz", "spot", "ETHUSDT", "binance", "ETH-USDT"),
    ("usdm_ethusdt_20240808.gz", "usdm", "ETHUSDT", "binance-usdm", "ETH-USDT"),
    ("cm_ethusd_perp_20240808.gz", "cm", "ETHUSD_PERP", "binance-coinm", "ETH-USD"),
]
FILE_IDS = [f[1] for f in FILES]

# From ../shared/data/README.md: lines per kind, and the snapshot of each 08 file.
KIND_COUNTS = {
    "spot_ethusdt_20240808.gz": {"Trade": 6106, "BookDelta": 3434, "BookTicker": 24077, "BookSnapshot": 1},
    "spot_ethusdt_20240809.gz": {"Trade": 8409, "BookDelta": 3036, "BookTicker": 34681},
    "usdm_ethusdt_20240808.gz": {"Trade": 14076, "BookDelta": 6586, "BookTicker": 53992, "BookSnapshot": 1},
    "cm_ethusd_perp_20240808.gz": {"Trade": 1732, "BookDelta": 22909, "BookTicker": 15812, "BookSnapshot": 1},
    "cm_ethusd_perp_20240809.gz": {"Trade": 1863, "BookDelta": 16246, "BookTicker": 19751},
}
SNAPSHOT_IDS = {"spot": 35346513512, "usdm": 5123107856276, "cm": 1007198635066}


def raw_lines(name: str) -> list[bytes]:
    with gzip.open(BINANCE / name, "rb") as fh:
        return fh.read().splitlines()


def recorded(name: str, wanted: Callable[[dict[str, Any]], bool], limit: int = 50) -> Iterator[tuple[bytes, int, Any]]:
    """(raw line, receive ns, decoded JSON) of the first `limit` lines `wanted` accepts,
    decoded with the standard library, independently of the parser."""
    found = 0
    for line in raw_lines(name):
        head, body = line.split(b" ", 1)
        obj = json.loads(body)
        if wanted(obj):
            yield line, int(head), obj
            found += 1
            if found == limit:
                return


def on_stream(suffix: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: obj.get("stream", "").split("@", 1)[-1].startswith(suffix)


def only(line: bytes, market: str, symbol: str | None = None) -> Any:
    events = parse_line(line, market, symbol)  # type: ignore[arg-type]
    assert len(events) == 1
    return events[0]


@pytest.mark.parametrize(("name", "market", "binance_symbol", "venue", "symbol"), FILES, ids=FILE_IDS)
def test_trades_match_the_recorded_fields(name: str, market: str, binance_symbol: str, venue: str, symbol: str) -> None:
    sides = set()
    for line, recv_ns, obj in recorded(name, on_stream("trade")):
        data = obj["data"]
        trade = only(line, market)
        assert isinstance(trade, Trade)
        assert (trade.venue, trade.symbol) == (venue, symbol)
        assert trade.trade_id == str(data["t"])
        assert trade.event_ts_ns == data["T"] * MS
        assert trade.recv_ts_ns == recv_ns
        # The exchange's strings, unchanged.
        assert format(trade.price, "f") == data["p"]
        assert format(trade.size, "f") == data["q"]
        assert trade.side is (Side.SELL if data["m"] else Side.BUY)
        sides.add(trade.side)
    assert sides == {Side.BUY, Side.SELL}


@pytest.mark.parametrize(("name", "market", "binance_symbol", "venue", "symbol"), FILES, ids=FILE_IDS)
def test_depth_updates_match_the_recorded_fields(
    name: str, market: str, binance_symbol: str, venue: str, symbol: str
) -> None:
    for line, recv_ns, obj in recorded(name, on_stream("depth")):
        data = obj["data"]
        delta = only(line, market)
        assert isinstance(delta, BookDelta)
        assert (delta.venue, delta.symbol) == (venue, symbol)
        assert delta.event_ts_ns == data["E"] * MS
        assert delta.recv_ts_ns == recv_ns
        assert (delta.first_update_id, delta.last_update_id) == (data["U"], data["u"])
        assert delta.prev_update_id == (None if market == "spot" else data["pu"])
        assert [[format(p, "f"), format(q, "f")] for p, q in delta.bids] == data["b"]
        assert [[format(p, "f"), format(q, "f")] for p, q in delta.asks] == data["a"]
        assert_keys_of_texts(delta, data["b"], data["a"])


@pytest.mark.parametrize(("name", "market", "binance_symbol", "venue", "symbol"), FILES, ids=FILE_IDS)
def test_the_snapshot_matches_the_recorded_body(
    name: str, market: str, binance_symbol: str, venue: str, symbol: str
) -> None:
    [(line, recv_ns, body)] = recorded(name, lambda obj: "lastUpdateId" in obj, limit=1)
    snapshot = only(line, market, binance_symbol)
    assert isinstance(snapshot, BookSnapshot)
    assert (snapshot.venue, snapshot.symbol) == (venue, symbol)
    assert snapshot.last_update_id == body["lastUpdateId"] == SNAPSHOT_IDS[market]
    # Spot snapshots carry no exchange time: the receive time stands in.
    assert snapshot.event_ts_ns == (recv_ns if market == "spot" else body["E"] * MS)
    assert len(snapshot.bids) == len(snapshot.asks) == 1000
    assert [[format(p, "f"), format(q, "f")] for p, q in snapshot.bids] == body["bids"]
    assert [[format(p, "f"), format(q, "f")] for p, q in snapshot.asks] == body["asks"]
    assert_keys_of_texts(snapshot, body["bids"], body["asks"])
    assert snapshot.bids[0][0] < snapshot.asks[0][0]


def test_a_snapshot_without_a_symbol_needs_one_from_the_caller() -> None:
    [(line, _, _)] = recorded("spot_ethusdt_20240808.gz", lambda obj: "lastUpdateId" in obj, limit=1)
    with pytest.raises(ParseError, match="symbol"):
        parse_line(line, "spot")


def test_a_coinm_snapshot_names_its_own_symbol() -> None:
    [(line, _, _)] = recorded("cm_ethusd_perp_20240808.gz", lambda obj: "lastUpdateId" in obj, limit=1)
    assert only(line, "cm").symbol == "ETH-USD"


@pytest.mark.parametrize(("name", "market", "binance_symbol", "venue", "symbol"), FILES, ids=FILE_IDS)
def test_book_tickers_match_the_recorded_fields(
    name: str, market: str, binance_symbol: str, venue: str, symbol: str
) -> None:
    for line, recv_ns, obj in recorded(name, on_stream("bookTicker")):
        data = obj["data"]
        ticker = only(line, market)
        assert isinstance(ticker, BookTicker)
        assert (ticker.venue, ticker.symbol) == (venue, symbol)
        assert ticker.update_id == data["u"]
        assert ticker.recv_ts_ns == recv_ns
        # Spot tickers carry no time at all.
        assert ticker.event_ts_ns == (recv_ns if market == "spot" else data["E"] * MS)
        assert [format(v, "f") for v in (ticker.bid_price, ticker.bid_size, ticker.ask_price, ticker.ask_size)] == [
            data["b"],
            data["B"],
            data["a"],
            data["A"],
        ]


@pytest.mark.parametrize("name", sorted(KIND_COUNTS))
def test_every_line_parses_into_the_documented_kinds(name: str) -> None:
    market = name.split("_", 1)[0]
    symbol = "ETHUSD_PERP" if market == "cm" else "ETHUSDT"
    kinds = Counter(type(e).__name__ for line in raw_lines(name) for e in parse_line(line, market, symbol))  # type: ignore[arg-type]
    assert kinds == KIND_COUNTS[name]


@pytest.mark.parametrize(("name", "market", "binance_symbol", "venue", "symbol"), FILES, ids=FILE_IDS)
def test_parsed_events_are_what_the_validating_models_build(
    name: str, market: str, binance_symbol: str, venue: str, symbol: str
) -> None:
    """The parser skips pydantic validation; validating what it built must change nothing."""
    lines = raw_lines(name)
    sample = lines[::7] + [line for line in lines if b"lastUpdateId" in line[:40]]
    for line in sample:
        for event in parse_line(line, market, binance_symbol):  # type: ignore[arg-type]
            validated = type(event).model_validate(event.model_dump())
            assert validated == event
            assert validated.model_dump(mode="json") == event.model_dump(mode="json")


def test_a_live_message_parses_like_the_recorded_line() -> None:
    [(line, recv_ns, obj)] = recorded("usdm_ethusdt_20240808.gz", on_stream("trade"), limit=1)
    body = line.split(b" ", 1)[1]
    from_line = parse_line(line, "usdm")
    assert parse_message(body.decode(), "usdm", recv_ns) == from_line
    assert parse_payload(obj, "usdm", recv_ns) == from_line
    # A single raw stream sends the payload without the envelope.
    assert parse_message(json.dumps(obj["data"]), "usdm", recv_ns) == from_line


def test_a_raw_spot_book_ticker_without_envelope_is_recognised() -> None:
    [(_, recv_ns, obj)] = recorded("spot_ethusdt_20240808.gz", on_stream("bookTicker"), limit=1)
    [ticker] = parse_payload(obj["data"], "spot", recv_ns)
    assert isinstance(ticker, BookTicker)
    assert ticker.update_id == obj["data"]["u"]


def test_venues_and_symbols() -> None:
    assert VENUES == {"spot": "binance", "usdm": "binance-usdm", "cm": "binance-coinm"}
    assert venue_of("cm") == "binance-coinm"
    with pytest.raises(ParseError, match="market"):
        venue_of("margin")


# --- malformed input -----------------------------------------------------------------------

TRADE = {
    "stream": "ethusdt@trade",
    "data": {
        "e": "trade",
        "E": 1723161255612,
        "s": "ETHUSDT",
        "t": 1520538925,
        "p": "2683.80000000",
        "q": "0.00200000",
        "T": 1723161255611,
        "m": True,
        "M": True,
    },
}
DEPTH = {
    "stream": "ethusdt@depth@0ms",
    "data": {
        "e": "depthUpdate",
        "E": 1723161256303,
        "T": 1723161256302,
        "s": "ETHUSDT",
        "U": 5123107832349,
        "u": 5123107837896,
        "pu": 5123107832175,
        "b": [["2671.65", "20.506"]],
        "a": [["2733.70", "0.000"]],
    },
}


def line_of(msg: Any, recv_ns: int = 1723161254340863867) -> bytes:
    return str(recv_ns).encode() + b" " + orjson.dumps(msg)


def with_data(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = {k: v for k, v in base["data"].items() if k not in changes or changes[k] is not ...}
    data.update({k: v for k, v in changes.items() if v is not ...})
    return {"stream": base["stream"], "data": data}


def test_the_hand_written_samples_parse() -> None:
    trade = only(line_of(TRADE), "spot")
    assert (trade.trade_id, trade.side, trade.event_ts_ns) == ("1520538925", Side.SELL, 1723161255611 * MS)
    delta = only(line_of(DEPTH), "usdm")
    assert delta.asks == ((Decimal("2733.70"), Decimal("0.000")),)


@pytest.mark.parametrize(
    ("line", "market", "message"),
    [
        (b"1723161254340863867 {not json", "spot", "invalid JSON"),
        (b"1723161254340863867 ", "spot", "invalid JSON"),
        (b'{"stream":"ethusdt@trade"}', "spot", "recv_ns"),
        (b"-5 {}", "spot", "recv_ns"),
        (b"12ab {}", "spot", "recv_ns"),
        (b"1723161254340863867 [1, 2]", "spot", "JSON object"),
        (b'1723161254340863867 {"result":null,"id":1}', "spot", "unknown message"),
        (line_of({"stream": "ethusdt@aggTrade", "data": TRADE["data"]}), "spot", "unknown stream"),
        (line_of({"stream": "ethusdt@depth20@100ms", "data": DEPTH["data"]}), "usdm", "unknown stream"),
        (line_of({"stream": "ethusdt@trade", "data": [1]}), "spot", "envelope"),
        (line_of(TRADE), "margin", "unknown Binance market"),
        (line_of(with_data(TRADE, p=...)), "spot", "missing field 'p'"),
        (line_of(with_data(TRADE, T=...)), "spot", "missing field 'T'"),
        (line_of(with_data(TRADE, s=...)), "spot", "missing field 's'"),
        (line_of(with_data(TRADE, p="abc")), "spot", "trade"),
        (line_of(with_data(TRADE, p="0")), "spot", "trade"),
        (line_of(with_data(TRADE, q="-1.5")), "spot", "trade"),
        (line_of(with_data(TRADE, p="NaN")), "spot", "trade"),
        (line_of(with_data(TRADE, p="Infinity")), "spot", "trade"),
        (line_of(with_data(TRADE, p=2683.8)), "spot", "trade"),
        (line_of(with_data(TRADE, p=None)), "spot", "trade"),
        (line_of(with_data(TRADE, t="1520538925")), "spot", "trade"),
        (line_of(with_data(TRADE, m="true")), "spot", "trade"),
        (line_of(with_data(TRADE, T=1.5)), "spot", "trade"),
        (line_of(with_data(TRADE, s="XYZ")), "spot", "not a Binance symbol"),
        (line_of(with_data(TRADE, s="E$USDT")), "spot", "not a Binance symbol"),
        (line_of(with_data(TRADE, s=7)), "spot", "symbol"),
        (line_of(with_data(DEPTH, U=...)), "usdm", "missing field 'U'"),
        (line_of(with_data(DEPTH, pu=...)), "usdm", "missing field 'pu'"),
        (line_of(with_data(DEPTH, E="now")), "usdm", "E must be"),
        (line_of(with_data(DEPTH, U=5123107837897)), "usdm", "U .* is after u"),
        (line_of(with_data(DEPTH, b=[["2671.65"]])), "usdm", "level"),
        (line_of(with_data(DEPTH, b=[["2671.65", "x"]])), "usdm", "decimal"),
        (line_of(with_data(DEPTH, a=[["-1", "1"]])), "usdm", "decimal"),
        (line_of(with_data(DEPTH, a={"2671.65": "1"})), "usdm", "list"),
        (line_of({"lastUpdateId": 1, "bids": [], "asks": []}), "usdm", "missing field 'E'"),
        (line_of({"lastUpdateId": "1", "bids": [], "asks": [], "symbol": "ETHUSD_PERP", "E": 1}), "cm", "lastUpdateId"),
        (line_of({"lastUpdateId": 1, "bids": [], "symbol": "ETHUSD_PERP", "E": 1}), "cm", "missing field 'asks'"),
        (
            line_of({"stream": "ethusdt@bookTicker", "data": {"u": 1, "s": "ETHUSDT", "b": "1", "B": "1", "a": "1"}}),
            "spot",
            "'A'",
        ),
    ],
)
def test_malformed_input_raises_parse_error(line: bytes, market: str, message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        parse_line(line, market, "ETHUSDT")  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_a_bad_receive_time_is_refused() -> None:
    with pytest.raises(ParseError, match="receive time"):
        parse_payload(TRADE, "spot", -1)


def test_split_line() -> None:
    assert split_line(b"12 {}") == (12, b"{}")
    with pytest.raises(ParseError):
        split_line(b"{}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    field=st.sampled_from(sorted(TRADE["data"]) + sorted(DEPTH["data"]) + ["stream", "data"]),
    value=json_values,
    market=st.sampled_from(["spot", "usdm", "cm"]),
    base=st.sampled_from([TRADE, DEPTH]),
)
def test_any_corrupted_field_gives_events_or_parse_error(field: str, value: Any, market: str, base: Any) -> None:
    msg = {"stream": base["stream"], "data": dict(base["data"])}
    if field in ("stream", "data"):
        msg[field] = value
    else:
        msg["data"][field] = value
    try:
        events = parse_line(line_of(msg), market, "ETHUSDT")  # type: ignore[arg-type]
    except ParseError:
        return
    for event in events:  # whatever passes must be a valid event
        type(event).model_validate(event.model_dump())


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_events_or_parse_error(raw: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_line(b"1 " + raw, "spot", "ETHUSDT")


def test_level_values_read_before_never_let_a_bad_level_through() -> None:
    """The parser remembers level values it has checked, by their text: a size of 0 (a removal)
    read first must not make a price of 0 acceptable, nor a checked value a bad one of another
    type or with more places; whatever it remembers, a level reads as a fresh parse would."""
    def depth(bids: list[list[Any]]) -> bytes:
        return line_of(with_data(DEPTH, b=bids, a=[]))

    first = only(depth([["2671.65", "0"], ["2671.66", "0.00000000"]]), "usdm")
    assert first.bids == ((Decimal("2671.65"), Decimal(0)), (Decimal("2671.66"), Decimal(0)))
    for bad in (["0", "1"], ["0.00000000", "1"], ["2671.65", "-0.5"], ["2671.650000001", "1"],
                ["2671.65", "0.000000001"], [2671.65, "1"], ["2671.65", 0], [["2671.65"], "1"], ["NaN", "1"]):
        with pytest.raises(ParseError, match="level"):
            parse_line(depth([["2671.65", "1"], bad]), "usdm", "ETHUSDT")
    again = only(depth([["2671.65", "0"], ["1e3", "1"]]), "usdm")
    assert again.bids == ((Decimal("2671.65"), Decimal(0)), (Decimal("1000"), Decimal(1)))
    assert str(again.bids[1][0]) == "1E+3"  # the exchange's text, as Decimal reads it


def test_the_remembered_level_values_stay_bounded() -> None:
    from streams.core.venues import binance

    many = [[f"{1 + i / 1e6:.6f}", f"{i / 1e8:.8f}"] for i in range(MAX_TEXTS + 1000)]
    parsed = only(line_of(with_data(DEPTH, b=many, a=[])), "usdm")
    assert len(binance._LEVEL_PRICES) <= MAX_TEXTS
    assert len(binance._LEVEL_SIZES) <= MAX_TEXTS
    # read in full all the same, each value as Decimal reads its text (digits and exponent)
    assert [(p.as_tuple(), s.as_tuple()) for p, s in parsed.bids] == [
        (Decimal(p).as_tuple(), Decimal(s).as_tuple()) for p, s in many]
