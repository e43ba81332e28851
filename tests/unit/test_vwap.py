"""Rolling VWAP over recorded Binance.US BTC/USDT 1m candles, against numpy over the same rows."""

from __future__ import annotations

import csv
import itertools
from datetime import datetime
from decimal import Decimal

import numpy as np

from schemas.events import Candle, Interval
from streams.core.vwap import RollingVwap
from tests.shared_data import DATA

MIN = 60 * 10**9
WINDOW = 15


def recorded_rows(count: int = 600) -> list[dict[str, str]]:
    """The first `count` minutes, with a 30-minute hole (longer than the window) and every 11th
    minute dropped, as minutes without trades have no candle."""
    with (DATA / "history" / "binanceus_btcusdt_1m.csv").open() as f:
        rows = list(itertools.islice(csv.DictReader(f), count))
    return [r for i, r in enumerate(rows) if not 100 <= i < 130 and i % 11 != 5]


def to_candle(r: dict[str, str], *, final: bool = True, interval: Interval = Interval.M1) -> Candle:
    open_ns = int(datetime.fromisoformat(r["timestamp_utc_iso"].replace("Z", "+00:00")).timestamp()) * 10**9
    return Candle(venue="binanceus", symbol="BTC-USDT", interval=interval, open_ts_ns=open_ns,
                  open=Decimal(r["open"]), high=Decimal(r["high"]), low=Decimal(r["low"]), close=Decimal(r["close"]),
                  volume=Decimal(r["volume"]), trades=1, first_trade_id="f", last_trade_id="l", revision=0,
                  is_final=final, event_ts_ns=open_ns + MIN - 1, recv_ts_ns=open_ns + MIN + 7)


def numpy_vwap(rows: list[dict[str, str]], window: int = WINDOW) -> list[tuple[int, float, float, int]]:
    """(as-of ns, vwap, volume, candles) per row whose window holds volume: Σ typical × volume /
    Σ volume over the rows that opened within `window` minutes up to it, in float64."""
    t = np.array([int(datetime.fromisoformat(r["timestamp_utc_iso"].replace("Z", "+00:00")).timestamp())
                  for r in rows], dtype=np.int64) * 10**9
    h, lo, c, v = (np.array([float(r[k]) for r in rows]) for k in ("high", "low", "close", "volume"))
    typical = (h + lo + c) / 3
    out = []
    for i in range(len(rows)):
        inside = (t > t[i] - window * MIN) & (t <= t[i])
        volume = v[inside].sum()
        if volume > 0:
            out.append((int(t[i]) + MIN, float((typical[inside] * v[inside]).sum() / volume), float(volume),
                        int(inside.sum())))
    return out


def test_vwap_equals_numpy_over_a_time_window_with_holes() -> None:
    rows = recorded_rows()
    vwap = RollingVwap(WINDOW)
    events = [e for e in (vwap.handle(to_candle(r)) for r in rows) if e is not None]
    expected = numpy_vwap(rows)
    assert [(e.event_ts_ns, e.candles) for e in events] == [(ts, n) for ts, _, _, n in expected]
    np.testing.assert_allclose([float(e.vwap) for e in events], [x for _, x, _, _ in expected], rtol=1e-9)
    np.testing.assert_allclose([float(e.volume) for e in events], [x for _, _, x, _ in expected], rtol=1e-12)
    # right after the hole the window holds one candle; a full one lacks the dropped 11th minute
    assert min(e.candles for e in events) == 1 and max(e.candles for e in events) == WINDOW - 1
    assert all(e.window_minutes == WINDOW and e.recv_ts_ns == e.event_ts_ns + 7 for e in events)


def test_only_new_final_one_minute_candles_count() -> None:
    rows = recorded_rows(40)
    vwap = RollingVwap(WINDOW)
    first = [vwap.handle(to_candle(r)) for r in rows[:20]]
    assert vwap.handle(to_candle(rows[10])) is None  # a re-delivery
    assert vwap.handle(to_candle(rows[20], final=False)) is None
    assert vwap.handle(to_candle(rows[20], interval=Interval.M5)) is None
    again = RollingVwap(WINDOW)
    assert [again.handle(to_candle(r)) for r in rows[:20]] == first  # deterministic: same events
