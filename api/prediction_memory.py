"""The latest forecast of each series, model and horizon, and the newest final candle of each
series and interval, kept in memory from the topics the API process consumes (an.predictions.v1
and the candle topics, api/ws/feed.py), in front of the store (docs/architecture.md, "the API is
a read model").

The same answers as infra/store/prediction_repository.py: per (model, horizon) the row with the
latest as-of time, a tie going to the interval that sorts first (its `ORDER BY as_of DESC,
interval ASC`); a re-emitted forecast of the same key replaces the held one (`FINAL` keeps the
last insert). Rows are built by the sink's own Arrow table (schemas/codecs/predictions.py), so
memory holds exactly the values the store holds (decimals at 8 places, floats as stored).

The consumer reads from the topics' end, so what was published before the process started is
the store's. The first read of a series loads the store's latest row of every model and horizon
once (`latest_each`), and after that memory is complete for the series: every later forecast
arrives on the topic. The newest final candle is kept the same way per series and interval.
Forecasts consumed but not yet stored are served at once, as the price route serves trades.

Readers run in the threadpool while the consumer writes on the event loop: one lock, held for a
few dict operations."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from infra.store.prediction_repository import SCORE_NAMES, PredictionRepository, PredictionRow, ScoreRow
from schemas.codecs import predictions as codec
from schemas.prediction import Prediction

Series = tuple[str, str]  # venue, symbol


def row_of(event: Prediction) -> PredictionRow:
    """The row the store will hold for `event` (through the sink's table)."""
    v = codec.predictions_table([event]).to_pylist()[0]

    def scores(prefix: str) -> ScoreRow:
        return ScoreRow(int(v[prefix + "scored"]), *(v[prefix + name] for name in SCORE_NAMES))

    return PredictionRow(
        v["model"], v["horizon"], v["interval"], event.event_ts_ns, event.target_ts_ns, v["model_version"],
        v["features_version"], v["price"], v["prediction"], v["log_return"], int(v["direction"]), v["confidence"],
        v["status"], int(v["remaining_candles"]), scores(""), scores("recent_"),
    )


def _newer(row: PredictionRow, held: PredictionRow | None) -> bool:
    if held is None:
        return True
    # the store's ORDER BY as_of DESC, interval ASC; an equal key is a re-insert, which replaces
    return (row.as_of_ns, _desc(row.interval)) >= (held.as_of_ns, _desc(held.interval))


def _desc(text: str) -> tuple[int, ...]:
    # sorts `text` descending inside an ascending tuple comparison
    return (*(-ord(c) for c in text), 0)


class LatestPredictions:
    def __init__(self) -> None:
        self._rows: dict[Series, dict[tuple[str, str], PredictionRow]] = {}
        self._loaded: set[Series] = set()  # series whose stored rows memory has taken in
        self._final_open: dict[tuple[str, str, str], int] = {}  # venue, symbol, interval -> open ns
        self._final_known: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # --- what the feed hands in --------------------------------------------------------------

    def apply(self, event: Any) -> None:
        """A consumed `prediction.v1` (outcomes on the same topic are not served from here)."""
        if isinstance(event, Prediction):
            self.offer((event.venue, event.symbol), [row_of(event)])

    def apply_final_candle(self, venue: str, symbol: str, interval: str, open_ns: int) -> None:
        self._offer_final((venue, symbol, interval), open_ns)

    def offer(self, series: Series, rows: Iterable[PredictionRow]) -> None:
        with self._lock:
            held = self._rows.setdefault(series, {})
            for row in rows:
                key = (row.model, row.horizon)
                if _newer(row, held.get(key)):
                    held[key] = row

    def _offer_final(self, key: tuple[str, str, str], open_ns: int | None) -> None:
        with self._lock:
            if open_ns is not None and open_ns >= self._final_open.get(key, open_ns):
                self._final_open[key] = open_ns

    # --- reads, store first once per series --------------------------------------------------

    def latest_each(self, store: PredictionRepository, symbol: str, venue: str) -> list[PredictionRow]:
        series = (venue, symbol)
        with self._lock:
            loaded = series in self._loaded
        if loaded:
            self.hits += 1
        else:
            self.misses += 1
            self.offer(series, store.latest_each(symbol, venue))
            with self._lock:
                self._loaded.add(series)
        with self._lock:
            held = self._rows.get(series, {})
            return [held[key] for key in sorted(held)]

    def latest(self, store: PredictionRepository, symbol: str, venue: str, model: str, horizon: str
               ) -> PredictionRow | None:
        return next((r for r in self.latest_each(store, symbol, venue) if (r.model, r.horizon) == (model, horizon)),
                    None)

    def last_final_open(self, store: PredictionRepository, symbol: str, venue: str, interval: str) -> int | None:
        key = (venue, symbol, interval)
        with self._lock:
            known = key in self._final_known
        if not known:
            self._offer_final(key, store.last_final_open(symbol, venue, interval))
            with self._lock:
                self._final_known.add(key)
        with self._lock:
            return self._final_open.get(key)


class MemoryPredictionRepository(PredictionRepository):
    """The prediction routes' repository in a served API: memory, the store behind it."""

    def __init__(self, store: PredictionRepository, memory: LatestPredictions) -> None:
        super().__init__(store.market)
        self.store = store
        self.memory = memory

    def latest(self, symbol: str, venue: str, model: str, horizon: str) -> PredictionRow | None:
        return self.memory.latest(self.store, symbol, venue, model, horizon)

    def latest_each(self, symbol: str, venue: str) -> list[PredictionRow]:
        return self.memory.latest_each(self.store, symbol, venue)

    def last_final_open(self, symbol: str, venue: str, interval: str) -> int | None:
        return self.memory.last_final_open(self.store, symbol, venue, interval)
