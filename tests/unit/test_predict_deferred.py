"""A stream's models are built on their first prediction or lesson (`engine._Deferred`): a fresh
stream imports neither torch nor river until its features fill, and a model built late predicts
exactly what one built with the stream does (the oracle: the same stream with its models built
at once, through `_make_model`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.core.predict import engine
from streams.core.predict.engine import PredictConfig, StreamPredictor
from tests.unit.test_predict_engine import ar1_bars

ROOT = Path(__file__).resolve().parents[2]


def test_a_fresh_stream_imports_no_model_library_before_its_features_fill() -> None:
    code = """
import sys
from decimal import Decimal
from streams.core.predict.engine import PredictConfig, StreamPredictor
from streams.core.predict.features import Bar
p = StreamPredictor(PredictConfig())
H = 3600 * 10**9
updates = [p.update(Bar(i * H, 100.0 + i, 102.0 + i, 99.0 + i, 101.0 + i, 5.0, Decimal(101 + i))) for i in range(5)]
assert all(f.prediction is None for u in updates for f in u.forecasts)  # still warming up
assert {f.model_version for u in updates for f in u.forecasts} == {m.version for m in p.models.values()}
print('torch' in sys.modules, 'river' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("model", ["ensemble", "lstm"])
def test_a_model_built_late_forecasts_what_one_built_at_once_does(model: str) -> None:
    config = PredictConfig(models=(model,), horizons=("1h", "4h"))
    bars = ar1_bars(0.4, 260, seed=5)
    late = StreamPredictor(config)
    at_once = StreamPredictor(config)
    n = len(at_once.features.config.names)
    at_once.models = {m: engine._make_model(m, config, n) for m in config.models}
    assert late.models[model].version == at_once.models[model].version
    late_out = [(f.horizon, f.prediction, f.confidence) for b in bars for f in late.update(b).forecasts]
    once_out = [(f.horizon, f.prediction, f.confidence) for b in bars for f in at_once.update(b).forecasts]
    assert any(p is not None for _, p, _ in once_out)  # the series is long enough to forecast
    assert late_out == once_out
