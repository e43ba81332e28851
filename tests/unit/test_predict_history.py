"""`confidence` on recorded data (docs/decisions.md, "Risk and predictions": one calibrated meaning):
the Bitstamp BTC/USD hourly history in ../shared/data/history, replayed candle by candle
through the engine exactly as the agent folds them. BTC hourly returns leave a linear model
little to find, so the honest outcome is: no skill claimed (the served forecast stays within a
hair of no-change), and a confidence that matches the hit rate it achieves, bin by bin.
The full tables (both models, every series) are in tests/bench/bench_predict.py."""

from __future__ import annotations

import csv
from datetime import datetime

import pytest

from streams.core.predict.engine import READY, PredictConfig, StreamPredictor
from streams.core.predict.features import Bar
from streams.core.predict.lstm import limit_torch_threads
from tests.shared_data import DATA

HOURLY = DATA / "history" / "bitstamp_btcusd_1h.csv"


def hourly_bars(last: int) -> list[Bar]:
    with HOURLY.open() as f:
        rows = list(csv.DictReader(f))[-last:]
    return [
        Bar.of(int(datetime.fromisoformat(r["timestamp_utc_iso"].replace("Z", "+00:00")).timestamp()) * 10**9,
               r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in rows
    ]


@pytest.fixture(scope="module")
def bars() -> list[Bar]:
    return hourly_bars(2500)


def test_ensemble_confidence_is_calibrated_on_btc_hourly_history(bars: list[Bar]) -> None:
    predictor = StreamPredictor(PredictConfig(models=("ensemble",)))
    served = []
    for bar in bars:
        served += [f.confidence for f in predictor.update(bar).forecasts if f.status == READY and f.confidence]
    for h, ece_limit in (("1h", 0.04), ("4h", 0.04), ("1d", 0.07)):
        s = predictor.tracks[("ensemble", h)].score.snapshot()
        assert s.scored > 2400, h
        assert s.calibration_error is not None and s.calibration_error < ece_limit, h
        assert s.mean_confidence == pytest.approx(s.hit_rate, abs=0.03), h
        assert s.skill is not None and s.skill > -0.01, h  # never materially worse than no-change
    assert max(served) < 0.65


def test_lstm_confidence_is_calibrated_on_btc_hourly_history(bars: list[Bar]) -> None:
    limit_torch_threads(1)
    predictor = StreamPredictor(PredictConfig(models=("lstm",), horizons=("1h",)))
    for bar in bars[-1000:]:
        predictor.update(bar)
    s = predictor.tracks[("lstm", "1h")].score.snapshot()
    assert s.calibration_error is not None and s.calibration_error < 0.05
    assert s.mean_confidence == pytest.approx(s.hit_rate, abs=0.04)
    assert s.skill is not None and s.skill > -0.02
