"""The book agent in Faust's test context, fed recorded Binance frames as the replay publishes them
(one diff, snapshot or ticker per message): top-N publications equal an independent replay's
book and are rate limited, the last change is not lost, periodic snapshots are stored, a dropped
diff gives a gap then a resync, and garbage goes to the dead letters."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import faust
import pytest

from infra.config.settings import Settings
from schemas.book_ticker import BookTicker
from schemas.events import BookDelta, BookSnapshot, DeadLetter, QualityEvent, QualityKind
from schemas.wire import encode_book_batch
from schemas.wire_book import encode_ticker_batch
from streams.agents.book import BookAgentConfig, BookWiring, register_book_agents
from tests.unit.test_orderbook import OracleBook, recorded

MS = 1_000_000
KEY = b"binance:ETH-USDT"
_app_ids = itertools.count()


def frames(events: Sequence[BookDelta | BookSnapshot | BookTicker]) -> list[bytes]:
    return [encode_ticker_batch(e.venue, e.symbol, [e]) if isinstance(e, BookTicker)
            else encode_book_batch(e.venue, e.symbol, [e]) for e in events]


def spot_head(diffs: int) -> list[BookDelta | BookSnapshot | BookTicker]:
    """The spot capture from its start to its `diffs`-th diff (tickers included)."""
    out: list[BookDelta | BookSnapshot | BookTicker] = []
    seen = 0
    for e in recorded("spot"):
        out.append(e)
        seen += isinstance(e, BookDelta)
        if seen == diffs:
            break
    return out


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.tops: list[BookSnapshot] = []
        self.quality: list[QualityEvent] = []
        self.letters: list[DeadLetter] = []
        self.stored: list[tuple[list[BookSnapshot], int]] = []
        self.now = 0.0
        app = faust.App(f"t-book-{next(_app_ids)}", broker="kafka://127.0.0.1:1", value_serializer="raw",
                        key_serializer="raw", store="memory://")

        async def emit_top(s: BookSnapshot) -> None:
            self.tops.append(s)

        async def emit_quality(q: QualityEvent) -> None:
            self.quality.append(q)

        async def emit_dead(d: DeadLetter) -> None:
            self.letters.append(d)

        async def store(snaps: Sequence[BookSnapshot], depth: int) -> None:
            self.stored.append((list(snaps), depth))

        self.wiring: BookWiring = register_book_agents(
            app, Settings(**settings), book_topic=app.topic("t.book"), book_top_topic=app.topic("t.top"),
            emit_quality=emit_quality, emit_dead_letter=emit_dead, store_snapshots=store, emit_top=emit_top,
            clock=lambda: self.now)

    async def run(self, messages: Sequence[bytes]) -> None:
        state = self.wiring.state
        async with self.wiring.agents["book"].test_context() as agent:
            for raw in messages:
                await agent.put(raw, key=KEY, wait=False)
            for _ in range(3000):  # until the agent has taken every message
                if state.messages == len(messages):
                    break
                await asyncio.sleep(0.01)
        assert state.messages == len(messages)


def oracle_tops(events: Sequence[Any], depth: int) -> dict[int, tuple[list[Any], list[Any]]]:
    """Top `depth` of an independent replay (dict book, README rules) after each diff, by update id."""
    snap_at = next(i for i, e in enumerate(events) if isinstance(e, BookSnapshot))
    oracle = OracleBook(events[snap_at])
    bids, asks = oracle.sides()
    tops = {oracle.last: (bids[:depth], asks[:depth])}
    for e in events:  # diffs before the snapshot line too: the oracle skips what the snapshot covers
        if isinstance(e, BookDelta) and e.last_update_id > oracle.last:
            oracle.apply(e)
            bids, asks = oracle.sides()
            tops[oracle.last] = (bids[:depth], asks[:depth])
    return tops


async def test_tops_equal_the_reference_are_rate_limited_and_the_last_change_is_kept() -> None:
    events = spot_head(600)  # about a minute of the spot capture
    h = Harness(book_top_depth=5, book_min_interval_ms=250, book_snapshot_every_s=10, book_store_batch=1)
    await h.run([b"{not json", *frames(events)])
    state = h.wiring.state

    want = oracle_tops(events, 100)
    assert len(h.tops) > 50
    for top in h.tops:
        bids, asks = want[top.last_update_id]
        assert (list(top.bids), list(top.asks)) == (bids[:5], asks[:5])
    # rate limit: at most one per 250 ms of event time
    gaps_ms = [(b.event_ts_ns - a.event_ts_ns) / MS for a, b in itertools.pairwise(h.tops)]
    assert min(gaps_ms) >= 250

    # The latest change is not lost: this capture ends with a change held by the rate limit; the
    # idle timer publishes it once the stream has been quiet for `idle_flush_ms` (1 s) of wall time.
    last_diff = max(e.last_update_id for e in events if isinstance(e, BookDelta))
    assert h.wiring.state.streams["binance:ETH-USDT"].throttle.pending
    n_tops = len(h.tops)
    h.now += 0.5
    await h.wiring.tick()
    assert len(h.tops) == n_tops  # not quiet long enough yet
    h.now += 0.5
    await h.wiring.tick()
    assert len(h.tops) == n_tops + 1
    final = want[last_diff]
    assert (list(h.tops[-1].bids), list(h.tops[-1].asks)) == (final[0][:5], final[1][:5])
    n_tops = len(h.tops)
    await h.wiring.tick()
    assert len(h.tops) == n_tops  # the idle flush publishes a held change once

    # stored snapshots: the first valid state of each 10 s bucket, top 100, equal to the reference
    stored = [s for batch, depth in h.stored for s in batch]
    assert {depth for _, depth in h.stored} == {100}
    buckets = [s.event_ts_ns // (10 * 10**9) for s in stored]
    assert len(stored) >= 5 and buckets == sorted(set(buckets))
    for s in stored:
        bids, asks = want[s.last_update_id]
        assert (list(s.bids), list(s.asks)) == (bids, asks) and len(s.bids) == 100

    # the exchange's own top agreed with the book every time it could be compared
    assert state.counts["tickers_checked"] > 50 and state.counts["tickers_mismatched"] == 0
    assert h.quality == []
    assert len(h.letters) == 1 and h.letters[0].raw_hex == b"{not json".hex()
    assert state.dead_letters == 1 and state.counts["tops_published"] == len(h.tops)


async def test_a_dropped_diff_gives_one_gap_then_a_resync_and_no_top_in_between() -> None:
    events = spot_head(400)
    deltas = [i for i, e in enumerate(events) if isinstance(e, BookDelta)]
    drop, resync_at, arrives_after = deltas[200], deltas[230], deltas[235]
    want = oracle_tops(events, 100)
    x = events[resync_at]
    assert isinstance(x, BookDelta)
    bids, asks = want[x.last_update_id]
    # A snapshot the exchange could have sent at X (its top 100 is all the agent keeps of it here).
    injected = BookSnapshot(venue=x.venue, symbol=x.symbol, event_ts_ns=x.event_ts_ns, recv_ts_ns=x.recv_ts_ns,
                            last_update_id=x.last_update_id, bids=tuple(bids), asks=tuple(asks))
    stream = events[:drop] + events[drop + 1 : arrives_after + 1] + [injected] + events[arrives_after + 1 :]
    h = Harness(book_top_depth=10, book_min_interval_ms=0)
    await h.run(frames(stream))

    assert [q.kind for q in h.quality] == [QualityKind.BOOK_GAP, QualityKind.BOOK_RESYNC]
    dropped = events[drop]
    assert isinstance(dropped, BookDelta)
    assert h.quality[0].detail["expected"] == dropped.first_update_id
    # no top from the invalid book: every top is at an id the book held while valid
    invalid = range(dropped.last_update_id, events[arrives_after].last_update_id)  # type: ignore[union-attr]
    assert not [t for t in h.tops if t.last_update_id in invalid]
    after = [t for t in h.tops if t.last_update_id >= events[arrives_after].last_update_id]  # type: ignore[union-attr]
    assert after, "the resynced book publishes again"
    for top in after:
        b, a = want[top.last_update_id]
        assert (list(top.bids), list(top.asks)) == (b[:10], a[:10])
    assert h.wiring.state.counts["tickers_mismatched"] == 0


async def test_garbage_and_foreign_messages_go_to_dead_letters_and_the_agent_goes_on() -> None:
    events = spot_head(20)
    eth = events[-1]
    assert isinstance(eth, BookDelta)
    other = eth.model_copy(update={"symbol": "BTC-USDT"})
    foreign_venue = eth.model_copy(update={"venue": "bitstamp"})
    garbage = [
        b"\x00\xff",
        b'{"schema":"trade_batch.v1","venue":"binance","symbol":"ETH-USDT","trades":[]}',
        b'{"schema":"book_batch.v1","venue":"binance","symbol":"ETH-USDT","updates":[{"bids":1}]}',
        encode_book_batch("binance", "ETH-USDT", [other]),  # an item of another stream
        encode_book_batch("bitstamp", "ETH-USDT", [foreign_venue]),  # no sequencing rules for it
    ]
    h = Harness()
    await h.run([*garbage, *frames(events)])
    assert len(h.letters) == len(garbage) == h.wiring.state.dead_letters
    assert [bytes.fromhex(d.raw_hex) for d in h.letters] == garbage
    assert h.tops and h.tops[-1].last_update_id == eth.last_update_id  # the good messages were all used


def test_config_from_settings_and_limits() -> None:
    c = BookAgentConfig.from_settings(Settings(book_top_depth=100, book_min_interval_ms=0))
    assert (c.top_depth, c.min_interval_ms, c.snapshot_every_s, c.snapshot_depth) == (100, 0, 10.0, 100)
    assert BookAgentConfig.from_settings(Settings()) == BookAgentConfig()
    with pytest.raises(ValueError, match="unrelated"):
        Settings(book_unrelated=1)
    with pytest.raises(ValueError):
        BookAgentConfig(top_depth=101)
    with pytest.raises(ValueError):
        BookAgentConfig(snapshot_every_s=0)
