"""TradeBatcher: order, size and span invariants on arbitrary interleavings."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Side, Trade
from streams.core.batching import TradeBatch, TradeBatcher

MS = 1_000_000
STREAMS = [("binance", "ETH-USDT"), ("binance-usdm", "ETH-USDT"), ("binance", "BTC-USDT")]


def trade(stream: int, trade_id: int, event_ns: int) -> Trade:
    venue, symbol = STREAMS[stream]
    return Trade(
        venue=venue,
        symbol=symbol,
        event_ts_ns=event_ns,
        recv_ts_ns=event_ns,
        trade_id=str(trade_id),
        price=Decimal("1"),
        size=Decimal("1"),
        side=Side.BUY,
    )


# Each step: (stream, ms since the previous line, ms of extra exchange-time jitter); lines
# of other streams carry no trade (stream 3), like the tickers between trades in a capture.
steps = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(0, 20)),
    max_size=300,
)


@settings(max_examples=200, deadline=None, database=None)
@given(steps=steps, max_batch=st.integers(1, 12), span_ms=st.sampled_from([0, 1, 10, 50]))
def test_batches_keep_stream_order_size_and_span(
    steps: list[tuple[int, int, int]], max_batch: int, span_ms: int
) -> None:
    batcher = TradeBatcher(max_batch=max_batch, max_span_ms=span_ms)
    clock = 0
    last_event = [0, 0, 0]
    next_id = [1, 1, 1]
    sent: dict[tuple[str, str], list[str]] = {s: [] for s in STREAMS}
    added_at: dict[tuple[str, str, str], int] = {}
    out: list[tuple[int, TradeBatch]] = []  # (clock when emitted, batch)

    for stream, gap_ms, jitter_ms in steps:
        clock += gap_ms * MS
        out.extend((clock, b) for b in batcher.expire(clock))
        # Every batch still open after expire() was opened within the span.
        assert all(clock - o.opened_clock_ns <= span_ms * MS for o in batcher._open.values())
        if stream == 3:
            continue
        last_event[stream] = max(last_event[stream], clock + jitter_ms * MS)
        t = trade(stream, next_id[stream], last_event[stream])
        next_id[stream] += 1
        sent[STREAMS[stream]].append(t.trade_id)
        added_at[(t.venue, t.symbol, t.trade_id)] = clock
        out.extend((clock, b) for b in batcher.add(t, clock))
    out.extend((clock, b) for b in batcher.flush())
    assert batcher.pending == 0

    got: dict[tuple[str, str], list[str]] = {s: [] for s in STREAMS}
    for _, batch in out:
        assert 1 <= len(batch.trades) <= max_batch
        assert all((t.venue, t.symbol) == (batch.venue, batch.symbol) for t in batch.trades)
        assert batch.trades[-1].event_ts_ns - batch.trades[0].event_ts_ns <= span_ms * MS
        got[(batch.venue, batch.symbol)].extend(t.trade_id for t in batch.trades)
    assert got == sent  # nothing lost, duplicated or reordered within a stream


def test_a_full_batch_goes_out_at_once() -> None:
    batcher = TradeBatcher(max_batch=2, max_span_ms=50)
    assert batcher.add(trade(0, 1, 0), 0) == []
    [batch] = batcher.add(trade(0, 2, 0), 0)
    assert [t.trade_id for t in batch.trades] == ["1", "2"]


def test_a_trade_beyond_the_span_starts_a_new_batch() -> None:
    batcher = TradeBatcher(max_batch=100, max_span_ms=50)
    batcher.add(trade(0, 1, 0), 0)
    batcher.add(trade(0, 2, 50 * MS), 0)
    [batch] = batcher.add(trade(0, 3, 50 * MS + 1), 0)
    assert [t.trade_id for t in batch.trades] == ["1", "2"]
    assert batcher.pending == 1


def test_a_quiet_stream_is_flushed_by_another_streams_clock() -> None:
    batcher = TradeBatcher(max_batch=100, max_span_ms=50)
    batcher.add(trade(0, 1, 0), 0)
    batcher.add(trade(1, 1, 30 * MS), 30 * MS)
    assert batcher.expire(50 * MS) == []
    [batch] = batcher.expire(50 * MS + 1)
    assert batch.venue == "binance" and batch.trades[0].trade_id == "1"
    [batch] = batcher.expire(81 * MS)
    assert batch.venue == "binance-usdm"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        TradeBatcher(max_batch=0)
    with pytest.raises(ValueError):
        TradeBatcher(max_span_ms=-1)
