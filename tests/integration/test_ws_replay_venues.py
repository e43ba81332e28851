"""Issue 20's defect, on the recorded data: after a replay of ../shared/data/binance (as
`up --replay ../shared/data/binance` runs it), ETH-USDT trades from Binance spot (`binance`)
and from the USD-M perpetual (`binance-usdm`) reach the API's one Kafka consumer interleaved on
one topic. Two sockets subscribe to the `market` channel of ETH-USDT, one per venue, before the
replay starts; each must receive that venue's prices only, in the venue's own order.

Oracle: the capture files read here with gzip and json (no project parser): each venue's
`@trade` payloads in file order, `p` and `q`. A `market` message is one trade batch (or, for a
client that fell behind, a merge of several): its `price` is the last trade's and its `volume`
what the trades since the previous message traded. So the running sum of the messages' volumes
must hit the running sum of the venue's sizes exactly (Decimal) at a trade whose price is the
message's price, each message further along the venue's trades than the one before, the last
one at the venue's last trade, with the sums equal: every trade of the venue counted once, none
of the other venue's. And every message names the subscription's venue, with `seq` strictly
increasing.

A subscription that names a venue needs the venue known (seen on the feed, or stored): one
trade per venue is stored first, far before the recording and never published, so both
subscriptions can be made before the first replayed trade."""

from __future__ import annotations

import asyncio
import bisect
import gzip
import itertools
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.ws import MarketFeed, MarketHub
from infra.cli.feeds import replay_into
from infra.store.clickhouse import make_client
from infra.store.repository import MarketRepository
from tests.api.conftest import TRADE_COLUMNS, new_account, test_api_settings, token_for
from tests.api.test_ws_support import recv_json, send_json, serve
from tests.integration.conftest import Infra
from tests.integration.pipeline import prepare
from tests.shared_data import BINANCE

pytestmark = pytest.mark.integration

SYMBOL = "ETH-USDT"
CAPTURES = {  # venue id (streams/core/venues/binance.py VENUES) -> its ETH-USDT capture files, in order
    "binance": ("spot_ethusdt_20240808.gz", "spot_ethusdt_20240809.gz"),
    "binance-usdm": ("usdm_ethusdt_20240808.gz",),
}
SEED_NS = 1_704_067_200 * 10**9  # 2024-01-01: a stored trade long before the recording


class NoKeys:
    """Tokens only: no API keys are looked up."""

    def close(self) -> None:
        pass


def capture_trades(venue: str) -> list[tuple[Decimal, Decimal]]:
    """(price, size) of the venue's `@trade` payloads, in file order."""
    out = []
    for name in CAPTURES[venue]:
        with gzip.open(BINANCE / name, "rt") as f:
            for line in f:
                _, payload = line.split(" ", 1)
                msg = json.loads(payload)
                if msg.get("stream", "").endswith("@trade"):
                    out.append((Decimal(msg["data"]["p"]), Decimal(msg["data"]["q"])))
    return out


def check_in_order(venue: str, messages: list[dict[str, Any]], trades: list[tuple[Decimal, Decimal]]) -> None:
    assert messages, f"no message for {venue}"
    assert {m["exchange"] for m in messages} == {venue}
    assert {m["symbol"] for m in messages} == {SYMBOL}
    seqs = [m["seq"] for m in messages]
    assert seqs[0] >= 1 and all(a < b for a, b in itertools.pairwise(seqs)), seqs[:20]
    times = [datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")) for m in messages]
    assert times == sorted(times)
    cumulative = list(itertools.accumulate(size for _, size in trades))
    at, volume = -1, Decimal(0)
    for i, m in enumerate(messages):
        volume += Decimal(m["volume"])
        j = bisect.bisect_left(cumulative, volume)
        assert j < len(cumulative) and cumulative[j] == volume and j > at, (
            f"{venue} message {i} ({m}): its volume does not end at one of the venue's trades after trade {at}")
        assert Decimal(m["price"]) == trades[j][0], f"{venue} message {i}: price {m['price']}, trade {j} {trades[j]}"
        at = j
    assert at == len(trades) - 1 and volume == cumulative[-1]  # every trade of the venue, each once


async def collect(ws: Any, total: Decimal, replayed: asyncio.Event, quiet_s: float = 30.0) -> list[dict[str, Any]]:
    """Data messages until their volumes add up to `total`, or until the socket has been quiet for
    `quiet_s` after the replay ended (then what came is checked, and found short)."""
    out: list[dict[str, Any]] = []
    seen, quiet = Decimal(0), 0.0
    while seen < total:
        try:
            message = await recv_json(ws, timeout=1.0)
        except TimeoutError:
            quiet = quiet + 1.0 if replayed.is_set() else 0.0
            if quiet >= quiet_s:
                break
            continue
        assert "type" not in message, message  # no error, no second acknowledgement
        out.append(message)
        seen, quiet = seen + Decimal(message["volume"]), 0.0
    return out


async def test_each_venue_subscription_gets_that_venues_prices_only_in_order(infra: Infra, tmp_path: Path) -> None:
    settings = infra.settings(stale_feed_seconds=0)
    await asyncio.to_thread(prepare, settings)
    want = {venue: capture_trades(venue) for venue in CAPTURES}
    assert len(want["binance"]) == 14515 and len(want["binance-usdm"]) == 14076  # the data README's counts
    client = make_client(settings)
    client.insert("trades", [[venue, SYMBOL, "seed", Decimal("1"), Decimal("1"), "buy", SEED_NS, SEED_NS]
                             for venue in CAPTURES], column_names=TRADE_COLUMNS)
    client.close()

    repository = MarketRepository(lambda: make_client(settings), symbols_ttl_s=0)
    hub = MarketHub(slow_close_after_s=600.0)  # a slow test client conflates (the oracle allows it), never closes
    feed = MarketFeed(settings, hub)
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=NoKeys())  # type: ignore[arg-type]
    await feed.start()
    try:
        await asyncio.wait_for(feed.assigned.wait(), 60)
        async with serve(app, hub) as served, \
                served.connect(token_for(new_account("wsspot"))) as spot, \
                served.connect(token_for(new_account("wsusdm"))) as usdm:
            sockets = {"binance": spot, "binance-usdm": usdm}
            for venue, ws in sockets.items():
                await send_json(ws, {"action": "subscribe", "channel": "market", "symbols": [SYMBOL],
                                     "exchange": venue})
                ack = await recv_json(ws, timeout=30)
                assert ack["type"] == "subscribed" and ack["exchanges"] == {SYMBOL: venue}, ack
            totals = {venue: sum((q for _, q in trades), Decimal(0)) for venue, trades in want.items()}
            replayed = asyncio.Event()
            readers = {venue: asyncio.create_task(collect(ws, totals[venue], replayed))
                       for venue, ws in sockets.items()}
            result = await asyncio.to_thread(replay_into, settings, BINANCE, progress=False)  # every market at once
            replayed.set()
            assert result.last_trade_ids.keys() >= {f"{venue}:{SYMBOL}" for venue in CAPTURES}
            got = {venue: await task for venue, task in readers.items()}
            for ws in sockets.values():  # and nothing after the last trade
                with pytest.raises(TimeoutError):
                    await recv_json(ws, timeout=2)
        for venue, messages in got.items():
            check_in_order(venue, messages, want[venue])
        assert feed.bad_messages == 0
    finally:
        await feed.stop()
        repository.close()
