"""`ensemble`: river online learners hedged by an exponentially weighted average (river's
`EWARegressor`, the Hedge algorithm), one ensemble per horizon. Pure logic.

Members (all on the scale-free features of `features.py`, all predicting the log return over
the horizon in volatility units):
- `NoChange`: always 0, the naive forecast itself. Hedge moves its weight towards the members
  with the smallest past squared error, so where nothing beats no-change the ensemble becomes
  no-change instead of serving noise: the honest default is a member, not an afterthought;
- Bayesian linear regression (exact recursive ridge regression; river's
  `BayesianLinearRegression`), once with infinite memory and once forgetting (smoothing 0.998,
  an effective memory of ~500 bars) for regimes that drift;
- a Hoeffding tree regressor with linear leaves (adaptive leaf prediction) for what is not
  linear, e.g. reversal after large moves only.

Learning is delayed by the horizon (see `engine.py`): a forecast's features are kept until its
outcome is known, then every member learns from them, after Hedge has scored them.

Hedge scores each member on the prediction it made WHEN THE FORECAST WAS ISSUED, kept until the
outcome is known (`HedgeRegressor`). river's `EWARegressor.learn_one` instead scores the
member's prediction at learning time; with a horizon of h bars the member has by then learned
the h − 1 previous targets, which share h − 1 of their h bar returns with the one being scored,
so members that chase recent targets (a tree's leaf means) win weight on information from after
the forecast: on a pure random walk, a 1d ensemble gave all its weight to the tree that way.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

from river import base, ensemble, linear_model, optim, tree

from streams.core.predict import versions
from streams.core.predict.features import Features

MODEL_VERSION = versions.ENSEMBLE


class NoChange(base.Regressor):
    """The no-change forecast as a river regressor: a log return of 0, learns nothing."""

    def learn_one(self, x: dict[Any, Any], y: Any) -> None:
        return None

    def predict_one(self, x: dict[Any, Any]) -> float:
        return 0.0


def _members() -> list[base.Regressor]:
    return [
        NoChange(),
        linear_model.BayesianLinearRegression(alpha=1.0, beta=1.0),
        linear_model.BayesianLinearRegression(alpha=1.0, beta=1.0, smoothing=0.998),
        tree.HoeffdingTreeRegressor(
            grace_period=300, max_depth=4, leaf_prediction="adaptive",
            leaf_model=linear_model.LinearRegression(optimizer=optim.SGD(0.005), l2=0.01, intercept_lr=0.0),
        ),
    ]


class HedgeRegressor(ensemble.EWARegressor):
    """river's exponentially weighted average, with the weights updated from the members'
    issue-time predictions (see the module docstring); `predict_one` is river's."""

    def member_predictions(self, x: dict[Any, Any]) -> list[float]:
        return [float(m.predict_one(x)) for m in self]

    def learn_issued(self, x: dict[Any, Any], y: float, issued: Sequence[float]) -> None:
        total = 0.0
        for i, y_pred in enumerate(issued):
            self.weights[i] *= math.exp(-self.learning_rate * self.loss(y_true=y, y_pred=y_pred))
            total += self.weights[i]
        if total > 0.0:
            self.weights = [w / total for w in self.weights]
        else:  # every weight underflowed: start the race again rather than predict 0 forever
            self.weights = [1.0 / len(self.weights)] * len(self.weights)
        for model in self:
            model.learn_one(x, y)


class EnsembleModel:
    """One Hedge ensemble per horizon (in bars). `learning_rate` is Hedge's η on squared errors
    of targets in volatility units (≈ unit variance): a member that is worse by 0.05 per bar
    loses a factor e in weight in ~1000 bars, so weights move on evidence, not on luck."""

    name = "ensemble"
    version = MODEL_VERSION

    def __init__(self, horizons: Sequence[int], learning_rate: float = 0.02) -> None:
        self.models = {h: HedgeRegressor(_members(), learning_rate=learning_rate) for h in horizons}
        # members' predictions of the forecasts in flight, by horizon: (bar index, predictions)
        self.issued: dict[int, deque[tuple[int, list[float]]]] = {h: deque() for h in horizons}

    def predict(self, index: int, features: Features) -> dict[int, float]:
        out = {}
        x = features.values
        for h, m in self.models.items():
            members = m.member_predictions(x)
            self.issued[h].append((index, members))
            out[h] = sum(w * p for w, p in zip(m.weights, members, strict=True))
        return out

    def learn(self, examples: Sequence[tuple[int, int, Features, float]]) -> None:
        """(horizon, bar index at issue, features at issue, realised target) per example."""
        for h, index, features, target in examples:
            queue = self.issued[h]
            while queue and queue[0][0] < index:
                queue.popleft()  # dropped by the engine (a gap): never to be scored
            if queue and queue[0][0] == index:
                self.models[h].learn_issued(features.values, target, queue.popleft()[1])

    def reset(self) -> None:
        """A gap in the data: the forecasts in flight are dropped; the learners hold no sequence state."""
        for queue in self.issued.values():
            queue.clear()

    def weights(self, horizon: int) -> list[float]:
        return list(self.models[horizon].weights)
