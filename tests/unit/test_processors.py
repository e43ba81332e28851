"""The agents' decisions as pure processors, with hand-worked inputs and expected outputs."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from schemas.events import QualityKind
from schemas.risk import RiskMethod
from schemas.wire import TradeRow
from streams.core.book_processor import BookAgentConfig, BookMessageError, BookStream, check_items
from streams.core.candle_processor import CandleConfig, CandleProcessor
from streams.core.predict.engine import StreamPredictor
from streams.core.predict.features import Bar
from streams.core.predict_processor import PredictAgentConfig, PredictStream
from streams.core.predict_processor import Verdict as PredictVerdict
from streams.core.predict_processor import admit as predict_admit
from streams.core.predict_processor import candle_view as predict_view
from streams.core.risk_processor import CandleView, RiskAgentConfig, RiskStream, Verdict, admit
from tests.unit.test_orderbook import BASE_ASKS, BASE_BIDS, delta, snapshot

SEC = 10**9
T0 = 1_700_000_040 * SEC  # a minute boundary
HOUR = 3600 * SEC


def trade(trade_id: str, second: float, price: str, size: str) -> TradeRow:
    ts = T0 + int(second * SEC)
    return TradeRow(trade_id, Decimal(price), Decimal(size), "buy", ts, ts)


def test_candle_processor_emits_closed_minutes_and_reports_duplicates_and_late_trades() -> None:
    p = CandleProcessor("v", "A-B", CandleConfig(intervals=("1m",), idle_timeout_s=10.0), now=0.0)
    first = p.handle([trade("1", 1, "10", "1"), trade("2", 30, "12", "2"), trade("3", 45, "9", "0.5")], now=1.0)
    assert first.candles == [] and first.quality == []
    out = p.handle([trade("2", 30, "12", "2"), trade("4", 61, "11", "1")], now=2.0)
    (candle,) = out.candles  # the first minute closed by the trade at 61 s: 10, 12, 9, 9 and 3.5 traded
    assert (candle.open, candle.high, candle.low, candle.close, candle.volume, candle.trades) == (
        Decimal("10"), Decimal("12"), Decimal("9"), Decimal("9"), Decimal("3.5"), 3)
    assert [(q.kind, q.detail["trade_ids"]) for q in out.quality] == [(QualityKind.DUPLICATE_TRADE, ["2"])]
    late = p.handle([trade("5", 20, "50", "1")], now=2.0)  # for the closed (final) first minute
    assert late.candles == [] and [(q.kind, q.detail["trade_ids"]) for q in late.quality] == [
        (QualityKind.LATE_TRADE, ["5"])]
    assert (out.duplicates, late.late, p.last_trade_wall) == (1, 1, 2.0)
    assert p.on_idle(now=11.9) == []  # quiet for 9.9 s of wall time: not yet
    (idle,) = p.on_idle(now=62.0)  # 60 s of silence: event time has passed the second minute's end
    assert (idle.open_ts_ns, idle.close, idle.trades) == (T0 + 60 * SEC, Decimal("11"), 1)

    restored = CandleProcessor("v", "A-B", CandleConfig(intervals=("1m",)), now=0.0)
    restored.restore(p.to_state())
    assert restored.handle([trade("4", 61, "11", "1")], now=0.0).duplicates == 1  # the ids came along


def test_book_stream_publishes_throttled_tops_holds_the_last_change_and_stores_snapshots() -> None:
    counts: Counter[str] = Counter()
    book = BookStream("binance", "ETH-USDT", BookAgentConfig(top_depth=2, min_interval_ms=100), counts)
    out = book.handle([snapshot(10, BASE_BIDS, BASE_ASKS, ts=SEC)], now=0.0)
    assert [[(str(p), str(s)) for p, s in top.bids] for top in out.tops] == [[("100", "1"), ("99", "2")]]
    assert len(out.to_store) == 1 and out.to_store[0].last_update_id == 10  # first valid state of its bucket
    held = book.handle([delta(11, 11, [("100", "9")], ts=SEC + 50_000_000)], now=0.05)
    assert held.tops == [] and book.throttle.pending  # 50 ms after the last top: held
    assert book.flush_idle(now=0.9).tops == []  # quiet for 0.85 s, idle flush wants 1 s
    (late,) = book.flush_idle(now=1.05).tops
    assert [(str(p), str(s)) for p, s in late.bids] == [("100", "9"), ("99", "2")] and late.last_update_id == 11
    gap = book.handle([delta(13, 13, [("98", "1")], ts=2 * SEC)], now=2.0)  # update 12 is missing
    assert [q.detail["reason"] for q in gap.quality] == ["gap"] and gap.tops == []
    assert (counts["updates"], counts["tops_published"], counts["quality_events"]) == (3, 2, 1)


def test_book_messages_of_another_stream_or_venue_are_refused() -> None:
    with pytest.raises(BookMessageError, match="holds an item of binance:ETH-USDT"):
        check_items("binance", "BTC-USDT", [delta(1, 1)])
    with pytest.raises(BookMessageError, match="no order-book sequencing rules"):
        BookStream("nowhere", "ETH-USDT", BookAgentConfig(), Counter())


def risk_view(open_ns: int, close: str = "100", *, interval: str = "1h", final: bool = True) -> CandleView:
    return CandleView("bitstamp", "BTC-USD", interval, open_ns, Decimal(close), final, open_ns + HOUR + 5)


def test_risk_admits_final_candles_of_its_intervals_with_usable_closes() -> None:
    config = RiskAgentConfig(intervals=("1h",))
    assert admit(config, risk_view(0)) is Verdict.FOLD
    assert admit(config, risk_view(0, final=False)) is Verdict.SKIP
    assert admit(config, risk_view(0, interval="1m")) is Verdict.SKIP
    assert admit(config, risk_view(0, "0")) is Verdict.MALFORMED
    assert admit(config, risk_view(0, "NaN")) is Verdict.MALFORMED


def test_risk_stream_estimates_carry_the_candle_close_time_and_ignore_redeliveries() -> None:
    config = RiskAgentConfig(intervals=("1h",), window_days=2, min_days=1, methods=(RiskMethod.PARAMETRIC,))
    stream = RiskStream(config.core("1h"))
    closes = [100 * 1.001 ** ((i * 7) % 5) for i in range(60)]
    out = [stream.handle(risk_view(T0 + i * HOUR, f"{c:.4f}")) for i, c in enumerate(closes)]
    estimates = [e for batch in out if batch for e in batch]
    assert estimates and all(e.event_ts_ns == e.recv_ts_ns - 5 for e in estimates)  # open + 1h, not wall time
    assert stream.handle(risk_view(T0 + 10 * HOUR)) is None  # at or before the last candle


def predict_candle(open_ns: int, *, interval: str = "1h", final: bool = True, close: str = "101") -> dict[str, object]:
    return {"venue": "binance", "symbol": "BTC-USDT", "interval": interval, "open_ts_ns": open_ns, "open": "100",
            "high": "102", "low": "99", "close": close, "volume": "3", "is_final": final, "recv_ts_ns": open_ns + 1}


def test_predict_admits_and_finds_the_stored_candles_to_replay() -> None:
    config = PredictAgentConfig(models=("ensemble",), horizons=("1h",), min_scored=5, min_independent=1,
                                checkpoint_every_s=3 * 3600)
    assert predict_admit(config, predict_view(predict_candle(T0))) is PredictVerdict.FOLD
    assert predict_admit(config, predict_view(predict_candle(T0, final=False))) is PredictVerdict.SKIP
    assert predict_admit(config, predict_view(predict_candle(T0, interval="1m"))) is PredictVerdict.SKIP

    empty = PredictStream(config, StreamPredictor(config.core()))
    view = predict_view(predict_candle(T0 + 5 * HOUR))
    assert empty.missing(view, new=True) == (None, T0 + 5 * HOUR)  # bootstrap from the store
    assert empty.missing(view, new=False) is None and not empty.checkpoint_due()

    predictor = StreamPredictor(config.core())
    predictor.update(Bar.of(T0, "100", "102", "99", "101", "3"))
    stream = PredictStream(config, predictor)  # as loaded: checkpointed at T0
    assert stream.missing(predict_view(predict_candle(T0 + HOUR)), new=False) is None  # the next one
    assert stream.missing(view, new=False) == (T0, T0 + 5 * HOUR)  # hours 1-4 missing
    assert stream.redelivered(predict_view(predict_candle(T0)))
    folded = stream.handle(predict_view(predict_candle(T0 + HOUR)), [], None)
    assert (folded.folded, folded.redelivered) == (1, 0) and not stream.checkpoint_due()  # 1 h of 3
    stream.handle(predict_view(predict_candle(T0 + 3 * HOUR)), [], None)
    assert stream.checkpoint_due()  # 3 h after the checkpoint
