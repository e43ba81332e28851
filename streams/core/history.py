"""Candle history from files: parse and validate rows, turn bars into final candles, derive
the coarser intervals, count gaps, and generate a seeded simulated history. Pure: rows come in
as values (the reading is `streams.ingest.history`), candles go out as `Candle` events.

A file's row is one bar of `timestamp_utc_iso,open,high,low,close,volume`: the bar's OPEN time
in UTC, prices and volume as decimal strings, ascending. Imported bars become the final candles
the pipeline would have built from the same trades (docs/topics.md, `md.candles.*`):
- revision 0, `is_final` true: what the candle core emits with the default zero grace, so the
  candle sink's key (open time, `version = revision * 2 + is_final`) makes a re-import collapse
  into the rows it already wrote;
- `event_ts_ns` = `recv_ts_ns` = the bar's last nanosecond: no trade times are known, and a
  derived value, never the wall clock, keeps a re-import byte-identical;
- `trades` = 1 per bar (a file has no trade count; the schema needs at least one) and no trade
  ids;
- a bar with zero volume is no candle: the pipeline builds none for a window without trades,
  and every consumer reads a missing bar as an unchanged price (streams/core/risk.py).
Coarser intervals are derived only from finer ones (1m -> 5m, 1h, 1d; 5m -> 1h, 1d; 1h -> 1d),
with the candle core's roll-up rules (`streams.core.candles`: open of the earliest, close of the
latest, extreme high and low, summed volume and trades), and only for buckets the file covers
from start to end: a bucket cut by the file's first or last bar would be a partial candle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import numpy as np

from schemas.events import INTERVAL_NS, Candle, Interval
from schemas.limits import MAX_PRICE, MAX_TIME_NS, decimal_problem, price_problem
from schemas.symbols import normalize_symbol
from streams.core.simulation import SIM_VENUE, SimSymbol
from streams.core.venues.registry import VENUES

COLUMNS = ("timestamp_utc_iso", "open", "high", "low", "close", "volume")
DERIVED: dict[str, tuple[str, ...]] = {"1m": ("5m", "1h", "1d"), "5m": ("1h", "1d"), "1h": ("1d",), "1d": ()}
KNOWN_VENUES = frozenset({*VENUES, SIM_VENUE})
MAX_PLACES = 8  # the store keeps Decimal(38, 8): more places would be rounded silently
DAY_NS = INTERVAL_NS["1d"]
_PRICE_FIELDS = ("open", "high", "low", "close")


class BadHistory(ValueError):
    """A file (or a request) that cannot be imported: where, and why."""

    def __init__(self, source: str, line: int | None, reason: str):
        self.source, self.line, self.reason = source, line, reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class Bar:
    open_ts_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


def check_target(venue: str, symbol: str, interval: str) -> tuple[str, str, str]:
    """The (venue, symbol, interval) of an import, normalised; BadHistory before anything is read."""
    name = venue.strip().lower()
    if name not in KNOWN_VENUES:
        raise BadHistory("--venue", None, f"unknown venue {venue!r}; known: {', '.join(sorted(KNOWN_VENUES))}")
    try:
        sym = normalize_symbol(symbol)
    except ValueError:
        raise BadHistory("--symbol", None, f"malformed symbol {symbol!r}: expected BASE-QUOTE, e.g. BTC-USDT") from None
    if interval not in INTERVAL_NS:
        raise BadHistory("--interval", None, f"unknown interval {interval!r}; known: {', '.join(INTERVAL_NS)}")
    return name, sym, interval


def check_header(source: str, names: Sequence[str]) -> None:
    if tuple(n.strip() for n in names) != COLUMNS:
        raise BadHistory(source, 1, f"expected the columns {','.join(COLUMNS)}, got {','.join(names)}")


def parse_time(value: object) -> int:
    """Nanoseconds since the epoch of an ISO 8601 UTC time (`2024-01-01T00:00:00Z`), or of an
    integer that already is one (a Parquet timestamp column)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    when = datetime.fromisoformat(value.strip())
    if when.utcoffset() is None or when.utcoffset().total_seconds() != 0:  # type: ignore[union-attr]
        raise ValueError(f"timestamp {value!r} is not in UTC (expected a Z suffix)")
    seconds = int(when.replace(tzinfo=UTC).timestamp())
    return seconds * 10**9 + when.microsecond * 1000


def parse_decimal(name: str, value: object) -> Decimal:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name} is not a finite number: {value!r}")
        value = repr(value)  # the shortest string that reads back as this float
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{name} is not a decimal number: {value!r}") from None
    else:
        raise ValueError(f"{name} is not a decimal number: {value!r}")
    if not number.is_finite():
        raise ValueError(f"{name} is not a finite number: {value!r}")
    exponent = number.as_tuple().exponent
    too_fine = isinstance(exponent, int) and -exponent > MAX_PLACES
    if too_fine and number != number.quantize(Decimal(1).scaleb(-MAX_PLACES)):
        raise ValueError(f"{name} {value!r} has more than {MAX_PLACES} decimal places")
    return number


def parse_bar(row: Sequence[object]) -> Bar:
    """One row as a bar; ValueError says what is wrong with it on its own."""
    if len(row) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} fields, got {len(row)}")
    try:
        ts = parse_time(row[0])
    except ValueError as exc:
        raise ValueError(f"bad timestamp: {exc}") from None
    o, h, low, c, v = (parse_decimal(name, value) for name, value in zip(COLUMNS[1:], row[1:], strict=True))
    if not 0 <= ts <= MAX_TIME_NS - DAY_NS:  # the bar and its last nanosecond, within int64 ns
        raise ValueError(f"timestamp {row[0]!r} is before 1970 or past what int64 nanoseconds hold")
    if min(o, h, low, c) <= 0:
        raise ValueError("prices must be positive")
    if h < low:
        raise ValueError(f"high {h} < low {low}")
    if not (low <= o <= h and low <= c <= h):
        raise ValueError(f"open {o} or close {c} outside [low {low}, high {h}]")
    if v < 0:
        raise ValueError(f"negative volume {v}")
    # what the candle topics and the store hold (schemas.limits): refused here, by line, rather
    # than dead-lettered one candle at a time after the import said it published them
    if problem := (price_problem(h) or decimal_problem(v, "volume", MAX_PRICE, allow_zero=True)):
        raise ValueError(problem)
    return Bar(ts, o, h, low, c, v)


def parse_bars(source: str, rows: Iterable[tuple[int, Sequence[object]]], interval: str, now_ns: int) -> list[Bar]:
    """Every row of one file, checked; BadHistory at the first bad one (file, line, reason).

    `rows` are (line number, fields). A bar must be on the interval's grid, after the one
    before it, and closed by `now_ns` (an open bar cannot be a final candle)."""
    step = INTERVAL_NS[interval]
    bars: list[Bar] = []
    for line, row in rows:
        try:
            bar = parse_bar(row)
        except ValueError as exc:
            raise BadHistory(source, line, str(exc)) from None
        if bar.open_ts_ns % step:
            raise BadHistory(source, line, f"{_iso(bar.open_ts_ns)} is not aligned to {interval}")
        if bars and bar.open_ts_ns <= bars[-1].open_ts_ns:
            what = "duplicated" if bar.open_ts_ns == bars[-1].open_ts_ns else "not ascending"
            raise BadHistory(source, line,
                             f"timestamp {_iso(bar.open_ts_ns)} {what} (previous {_iso(bars[-1].open_ts_ns)})")
        if bar.open_ts_ns + step > now_ns:
            raise BadHistory(source, line, f"bar {_iso(bar.open_ts_ns)} is in the future or not closed yet")
        bars.append(bar)
    return bars


def merge_files(files: Sequence[tuple[str, list[Bar]]]) -> list[Bar]:
    """Bars of several files of one series, by open time. A bar in two files must be the same
    bar (re-importing overlapping files is harmless); two different bars for one time are refused."""
    by_time: dict[int, tuple[str, Bar]] = {}
    for source, bars in files:
        for bar in bars:
            seen = by_time.get(bar.open_ts_ns)
            if seen is not None and seen[1] != bar:
                raise BadHistory(source, None, f"bar {_iso(bar.open_ts_ns)} differs from the one in {seen[0]}")
            by_time[bar.open_ts_ns] = (source, bar)
    return [by_time[ts][1] for ts in sorted(by_time)]


def count_gaps(bars: Sequence[Bar], interval: str) -> int:
    """Bars missing between the first and the last (a file's rows are ascending and unique)."""
    if not bars:
        return 0
    return (bars[-1].open_ts_ns - bars[0].open_ts_ns) // INTERVAL_NS[interval] + 1 - len(bars)


def count_empty(bars: Sequence[Bar]) -> int:
    """Bars with zero volume: no trade, hence no candle."""
    return sum(1 for b in bars if b.volume == 0)


def bar_candle(bar: Bar, venue: str, symbol: str, interval: str) -> Candle:
    last_ns = bar.open_ts_ns + INTERVAL_NS[interval] - 1
    return Candle(
        venue=venue, symbol=symbol, event_ts_ns=last_ns, recv_ts_ns=last_ns, interval=Interval(interval),
        open_ts_ns=bar.open_ts_ns, open=bar.open, high=bar.high, low=bar.low, close=bar.close, volume=bar.volume,
        trades=1, first_trade_id="", last_trade_id="", revision=0, is_final=True,
    )


def roll_up(parts: Sequence[Candle], interval: str) -> Candle:
    """One candle of `interval` from the finer final candles of its bucket, in time order: the
    candle core's merge rules (`streams.core.candles`)."""
    first, last = parts[0], parts[-1]
    step = INTERVAL_NS[interval]
    return Candle(
        venue=first.venue, symbol=first.symbol, event_ts_ns=last.event_ts_ns,
        recv_ts_ns=max(p.recv_ts_ns for p in parts), interval=Interval(interval),
        open_ts_ns=first.open_ts_ns - first.open_ts_ns % step, open=first.open,
        high=max(p.high for p in parts), low=min(p.low for p in parts), close=last.close,
        volume=sum((p.volume for p in parts), Decimal(0)), trades=sum(p.trades for p in parts),
        first_trade_id=first.first_trade_id, last_trade_id=last.last_trade_id, revision=0, is_final=True,
    )


def derive(candles: Sequence[Candle], interval: str, covered_from_ns: int, covered_to_ns: int) -> list[Candle]:
    """Candles of `interval` rolled up from finer `candles` (ascending), for the buckets that lie
    wholly inside [covered_from_ns, covered_to_ns): the span the finer series covers."""
    step = INTERVAL_NS[interval]
    buckets: dict[int, list[Candle]] = {}
    for c in candles:
        finer = INTERVAL_NS[c.interval.value]
        if finer >= step or step % finer:
            raise ValueError(f"cannot derive {interval} from {c.interval.value}")
        start = c.open_ts_ns - c.open_ts_ns % step
        if start >= covered_from_ns and start + step <= covered_to_ns:
            buckets.setdefault(start, []).append(c)
    return [roll_up(buckets[start], interval) for start in sorted(buckets)]


def history_candles(bars: Sequence[Bar], venue: str, symbol: str, interval: str) -> dict[str, list[Candle]]:
    """The final candles of a validated series: its own interval, then every coarser one it
    allows (`DERIVED`), each ascending."""
    base = [bar_candle(b, venue, symbol, interval) for b in bars if b.volume != 0]
    out = {interval: base}
    if bars:
        covered = (bars[0].open_ts_ns, bars[-1].open_ts_ns + INTERVAL_NS[interval])
        for coarser in DERIVED[interval]:
            out[coarser] = derive(base, coarser, *covered)
    return out


# --- a seeded simulated history ---------------------------------------------------------------

_TICK_EXP = -2  # the live simulated feed's 0.01 tick and 1e-4 lot (streams/core/simulation.py)
_LOT_EXP = -4
MINUTE_NS = INTERVAL_NS["1m"]
HOUR_NS = INTERVAL_NS["1h"]


@dataclass(frozen=True)
class SimulatedHistory:
    """One symbol's history: hourly bars up to the UTC midnight before the last day, then
    minutes up to the feed's start, so the 1m and 5m views have a full day behind them."""

    symbol: str
    hours: list[Bar]
    minutes: list[Bar]


def simulated_history(spec: SimSymbol, *, seed: int, end_ns: int, days: int = 90) -> SimulatedHistory:
    """`days` whole UTC days of history before `end_ns` (where the live simulated feed starts),
    ending at the feed's start price, with the feed's volatility, tick and lot.

    A one-minute random walk of the log price (normal steps of `volatility`·√60), built backwards
    from `spec.start_price` so the live feed continues the last close; a minute's high and low
    reach past its open and close by a half-normal excursion; volume is log-normal around the
    feed's mean traded size per minute. The older days are kept as hourly bars (60 minutes each),
    the last day and the minutes of the current one as 1-minute bars. Same arguments, same bars."""
    if days < 2:
        raise ValueError("days must be at least 2 (hours before the last day, minutes after)")
    end_minute = end_ns - end_ns % MINUTE_NS
    midnight = end_ns - end_ns % DAY_NS
    start = midnight - days * DAY_NS
    minutes_from = midnight - DAY_NS
    n = (end_minute - start) // MINUTE_NS
    rng = np.random.default_rng([seed, _symbol_seed(spec.symbol)])
    sigma = spec.volatility * math.sqrt(60.0)
    steps = rng.standard_normal(n) * sigma
    closes = math.log(float(spec.start_price)) + np.cumsum(steps) - float(np.sum(steps))
    opens = np.concatenate(([closes[0] - steps[0]], closes[:-1]))
    reach = np.abs(rng.standard_normal((2, n))) * sigma / 2.0
    highs = np.maximum(opens, closes) + reach[0]
    lows = np.minimum(opens, closes) - reach[1]
    mean_size = spec.median_size * math.exp(spec.size_sigma**2 / 2)  # of the feed's log-normal sizes
    volumes = rng.lognormal(math.log(mean_size * spec.trades_per_s * 60.0), 0.5, size=n)
    o, h, low, c = (np.maximum(np.rint(np.exp(x) * 10**-_TICK_EXP), 1).astype(np.int64)
                    for x in (opens, highs, lows, closes))
    lots = np.maximum(np.rint(volumes * 10**-_LOT_EXP), 1).astype(np.int64)
    split = (minutes_from - start) // MINUTE_NS
    per_hour = (x[:split].reshape(-1, 60) for x in (o, h, low, c, lots))
    ho, hh, hl, hc, hv = per_hour
    hours = list(_bars(start, HOUR_NS, ho[:, 0], hh.max(axis=1), hl.min(axis=1), hc[:, -1], hv.sum(axis=1)))
    minutes = list(_bars(minutes_from, MINUTE_NS, o[split:], h[split:], low[split:], c[split:], lots[split:]))
    return SimulatedHistory(spec.symbol, hours, minutes)


def _symbol_seed(symbol: str) -> int:
    return int.from_bytes(symbol.encode(), "big") % (2**63)


def _bars(start_ns: int, step_ns: int, o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray,
          lots: np.ndarray) -> Iterator[Bar]:
    # Rounding to the tick is monotone, so the rounded high and low still bound open and close;
    # max/min once more guards the clamp to one tick.
    hi = np.maximum(h, np.maximum(o, c))
    lo = np.minimum(low, np.minimum(o, c))
    for i, row in enumerate(zip(o.tolist(), hi.tolist(), lo.tolist(), c.tolist(), lots.tolist(), strict=True)):
        oo, hh, ll, cc, vv = row
        yield Bar(start_ns + i * step_ns, Decimal(oo).scaleb(_TICK_EXP), Decimal(hh).scaleb(_TICK_EXP),
                  Decimal(ll).scaleb(_TICK_EXP), Decimal(cc).scaleb(_TICK_EXP), Decimal(vv).scaleb(_LOT_EXP))


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
