"""`entasis connect --record DIR` against the exchange doubles, for every live venue: the
connector records the frames it receives, and `entasis replay` of that recording (into an
isolated namespace, as `--run-id` does) publishes the trades the live run published.

Oracle: the live run's own published trades (what the connector put on the trade topic, from
ccxt's parsing of the frames); the replay reads the recording through our parsers, never
through ccxt, so the two paths share no parsing code. Receive times are left out of the
comparison: the recorder stamps a frame when it arrives, the connector when ccxt hands it the
trades, a moment later."""

from __future__ import annotations

import gzip
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from infra.dev.exchange_double.binance import BinanceDouble
from infra.dev.exchange_double.coinbase import CoinbaseDouble
from infra.dev.exchange_double.kraken import KrakenDouble
from infra.dev.exchange_double.server import VenueDouble
from schemas import topics
from schemas.codecs.trades import decode_trades
from streams.core.recording import utc_day
from streams.ingest.publisher import ListPublisher
from streams.ingest.replay import replay
from tests.double.harness import FAST, connected, wait_until
from tests.double.test_binance_connector import printed_trade_ids
from tests.double.test_coinbase_kraken_connectors import coinbase_printed, kraken_printed
from tests.shared_data import BINANCE, DATA

CAPTURES = DATA / "cryptofeed"
RUN_NAMESPACE = "run-rec."  # where the replay publishes: not the live run's topics


def binance() -> VenueDouble:
    return BinanceDouble(BINANCE, "spot", speed=10.0, max_frames=3_000)


def coinbase() -> VenueDouble:
    return CoinbaseDouble(CAPTURES, speed=6.0)


def kraken() -> VenueDouble:
    return KrakenDouble(CAPTURES, speed=6.0)


CASES = {
    "binance": (binance, "binance:ETH-USDT", ["binance:ETH-USDT"]),
    "coinbase": (coinbase, "coinbase:SKL-USD,coinbase:DASH-BTC", ["coinbase:SKL-USD", "coinbase:DASH-BTC"]),
    "kraken": (kraken, "kraken:XMR-USD,kraken:SC-EUR", ["kraken:XMR-USD", "kraken:SC-EUR"]),
}

PRINTED = {  # what each double printed, by stream key: the live run is complete once it has all of it
    "binance": lambda run: {"binance:ETH-USDT": printed_trade_ids(run)},
    "coinbase": lambda run: {f"coinbase:{p}": coinbase_printed(run, p) for p in ("SKL-USD", "DASH-BTC")},
    "kraken": lambda run: {f"kraken:{s.replace('/', '-')}": kraken_printed(run, s) for s in ("XMR/USD", "SC/EUR")},
}

Row = tuple[str, str, str, Any, Any, str, int]


def trades_on(publisher: ListPublisher, topic: str) -> dict[str, list[Row]]:
    """Per stream key, the published trades in order, without their receive times."""
    out: dict[str, list[Row]] = {}
    for message in publisher.messages:
        if message.topic != topic:
            continue
        for t in decode_trades(message.value):
            out.setdefault(f"{t.venue}:{t.symbol}", []).append(
                (t.venue, t.symbol, t.trade_id, t.price, t.size, str(t.side), t.event_ts_ns)
            )
    return out


async def record(tmp_path: Path, venue: str) -> dict[str, list[Row]]:
    make, feeds, keys = CASES[venue]
    config = replace(FAST, record_dir=str(tmp_path))
    async with connected(make(), feeds, config) as run:
        run.double.play()
        await run.double.finished.wait()
        printed = PRINTED[venue](run)
        await wait_until(lambda: all(run.trade_ids(k) == printed[k] for k in keys), 30, "every printed trade published")
    return trades_on(run.publisher, topics.TRADES.full_name(""))


@pytest.mark.parametrize("venue", sorted(CASES))
async def test_a_replayed_recording_publishes_the_live_runs_trades(tmp_path: Path, venue: str) -> None:
    live = await record(tmp_path, venue)
    _, _, keys = CASES[venue]
    assert sorted(live) == sorted(keys) and all(live[k] for k in keys)

    names = sorted(p.name for p in tmp_path.iterdir())
    day = r"\d{8}"
    for key in keys:
        v, symbol = key.split(":")
        assert any(re.fullmatch(rf"{v}_{symbol.lower()}_{day}\.gz", n) for n in names), names
    # every line: `<recv_ns> <frame>`, the day of the name the UTC day of the receive times
    for path in tmp_path.iterdir():
        with gzip.open(path, "rb") as handle:
            lines = handle.read().splitlines()
        assert lines
        for line in lines:
            head, _, frame = line.partition(b" ")
            assert head.isdigit() and frame[:1] in (b"{", b"[")
            assert path.name.endswith(f"_{utc_day(int(head))}.gz")

    replayed = ListPublisher()
    summary = replay([tmp_path], replayed, namespace=RUN_NAMESPACE, progress=False)
    assert summary.dead_letters == 0
    assert not replayed.on_topic(topics.TRADES.full_name(""))  # nothing on the live run's topics
    got = trades_on(replayed, topics.TRADES.full_name(RUN_NAMESPACE))
    for key in keys:
        assert got.get(key) == live[key], key
    assert sorted(got) == sorted(keys)
