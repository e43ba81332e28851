"""All SQL the prediction endpoints run: the latest stored forecast of a model and horizon, the
latest of every model and horizon (for the scores), and the newest final candle (to tell a
prediction agent that has fallen behind).

`PredictionRepository` owns no database clients: it runs its queries through the app's market
repository (same per-thread clients, same symbol cache), so wiring the prediction routes needs
nothing but the router. Every user value is a server-side parameter (`{name:Type}`); times
cross the boundary as integer nanoseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from decimal import Decimal
from typing import Any, NamedTuple

from infra.store.repository import MarketRepository
from streams.core.predict.scoring import ScoreSnapshot

# The stored scores are the agent's ScoreSnapshot, column for column after `scored`.
ScoreRow = ScoreSnapshot
SCORE_NAMES = tuple(f.name for f in fields(ScoreSnapshot))[1:]


class PredictionRow(NamedTuple):
    model: str
    horizon: str
    interval: str
    as_of_ns: int
    target_ns: int
    model_version: str
    features_version: str
    price: Decimal
    prediction: Decimal | None
    log_return: float | None
    direction: int
    confidence: float | None
    status: str
    remaining_candles: int
    scores: ScoreRow
    recent: ScoreRow


_COLUMNS = f"""
    model, horizon, interval, toUnixTimestamp64Nano(as_of), toUnixTimestamp64Nano(target_ts), model_version,
    features_version, price, prediction, log_return, direction, confidence, status, remaining_candles,
    scored, {", ".join(SCORE_NAMES)},
    recent_scored, {", ".join("recent_" + n for n in SCORE_NAMES)}
"""

# Ties on as-of time (two agents on different candle intervals) go to the finer interval's row.
_LATEST_SQL = f"""
SELECT {_COLUMNS}
FROM predictions FINAL
WHERE venue = {{venue:String}} AND symbol = {{symbol:String}} AND model = {{model:String}}
  AND horizon = {{horizon:String}}
ORDER BY as_of DESC, interval ASC
LIMIT 1
"""

_LATEST_EACH_SQL = f"""
SELECT {_COLUMNS}
FROM predictions FINAL
WHERE venue = {{venue:String}} AND symbol = {{symbol:String}}
ORDER BY model, horizon, as_of DESC, interval ASC
LIMIT 1 BY model, horizon
"""

# No FINAL: revisions of a candle share its open time, so max() is the same without it.
_LAST_FINAL_OPEN_SQL = """
SELECT toUnixTimestamp64Nano(max(open_ts)), count()
FROM candles
WHERE venue = {venue:String} AND symbol = {symbol:String} AND interval = {interval:String} AND is_final = 1
"""


def _row(values: Sequence[Any]) -> PredictionRow:
    v = list(values)
    n = len(SCORE_NAMES) + 1
    scores, recent = v[14:14 + n], v[14 + n:14 + 2 * n]
    return PredictionRow(
        str(v[0]), str(v[1]), str(v[2]), int(v[3]), int(v[4]), str(v[5]), str(v[6]), v[7], v[8], v[9], int(v[10]),
        v[11], str(v[12]), int(v[13]), ScoreRow(int(scores[0]), *scores[1:]), ScoreRow(int(recent[0]), *recent[1:]),
    )


class PredictionRepository:
    def __init__(self, market: MarketRepository) -> None:
        self.market = market

    def latest(self, symbol: str, venue: str, model: str, horizon: str) -> PredictionRow | None:
        rows = self.market._rows(_LATEST_SQL, {"symbol": symbol, "venue": venue, "model": model, "horizon": horizon})
        return _row(rows[0]) if rows else None

    def latest_each(self, symbol: str, venue: str) -> list[PredictionRow]:
        """The newest row of every model and horizon of the series, ordered by model, horizon."""
        return [_row(r) for r in self.market._rows(_LATEST_EACH_SQL, {"symbol": symbol, "venue": venue})]

    def last_final_open(self, symbol: str, venue: str, interval: str) -> int | None:
        """Open time of the newest final candle of the series, None when there is none."""
        rows = self.market._rows(_LAST_FINAL_OPEN_SQL, {"symbol": symbol, "venue": venue, "interval": interval})
        if not rows or int(rows[0][1]) == 0:
            return None
        return int(rows[0][0])
