"""Candle history of a venue double: what the venue's OHLCV route (Binance `klines`, Coinbase
`candles`, Kraken `OHLC`) answers, so `entasis history backfill` and `up --venues` are tested
offline through real ccxt.

Each symbol's history has a joint: the time and price of the recording's first trade.
- Before the joint: a seeded random walk of one-minute bars, built backwards from the joint so
  its last close is the first recorded price (the venue "listed" the symbol `days` before the
  joint and serves nothing older). Same seed, symbol and joint: the same bars, whatever was
  asked before, in whatever pages.
- From the joint on: the recorded trades the double has played so far, bucketed by trade time
  (open and close the first and last trade, high and low the extremes, volume the summed size),
  so the bar the joint falls in, and every later one, agrees with the recorded feed.
- Nothing starts after the double's clock; the bar it is in is served as it stands (still open),
  as venues serve their current bar. A backfill keeps only closed bars.

Prices are rounded to the joint price's decimal places (at least 2), volumes to 4 places.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

MINUTE_MS = 60_000
DEFAULT_DAYS = 400
DEFAULT_SEED = 7
VOLUME_PLACES = 4
_NS_PER_MS = 1_000_000

# (trade time ns, price, size): the recorded prints a double has played, oldest first
Print = tuple[int, Decimal, Decimal]
# (open ms, open, high, low, close, volume): one bar, as decimal strings
Row = tuple[int, str, str, str, str, str]


@dataclass(frozen=True)
class Joint:
    ts_ns: int  # the recording's first trade of the symbol
    price: Decimal
    typical_size: Decimal  # a recorded trade size, for the generated volumes


def _places(price: Decimal) -> int:
    exponent = price.normalize().as_tuple().exponent
    return max(2, -exponent if isinstance(exponent, int) else 2)


def _symbol_seed(symbol: str) -> int:
    return int.from_bytes(symbol.encode(), "big") % (2**63)


@dataclass
class CandleHistory:
    """One symbol's history at a venue double (see the module)."""

    symbol: str
    joint: Joint
    seed: int = DEFAULT_SEED
    days: int = DEFAULT_DAYS
    volatility: float = 0.0008  # per minute, of the log price (about 3 % a day)
    _minutes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def places(self) -> int:
        return _places(self.joint.price)

    @property
    def joint_minute_ms(self) -> int:
        ms = self.joint.ts_ns // _NS_PER_MS
        return ms - ms % MINUTE_MS

    @property
    def first_ms(self) -> int:
        """The open time of the first generated minute: nothing is older."""
        return self.joint_minute_ms - self.days * 1440 * MINUTE_MS

    def minutes(self) -> dict[str, np.ndarray]:
        """The generated minutes (open, high, low, close in units of 10^-places, volume in units
        of 10^-4), oldest first, ending at the joint minute (exclusive)."""
        if not self._minutes:
            n = self.days * 1440
            rng = np.random.default_rng([self.seed, _symbol_seed(self.symbol)])
            steps = rng.standard_normal(n) * self.volatility
            last = math.log(float(self.joint.price))
            # closes[-1] is the joint price; each earlier close undoes the step after it
            log_close = last - np.concatenate((np.cumsum(steps[::-1])[::-1][1:], [0.0]))
            log_open = np.concatenate(([log_close[0] - steps[0]], log_close[:-1]))
            reach = np.abs(rng.standard_normal((2, n))) * self.volatility / 2
            scale = 10.0**self.places
            o, c = (np.maximum(np.rint(np.exp(x) * scale), 1).astype(np.int64) for x in (log_open, log_close))
            h = np.maximum(np.rint(np.exp(np.maximum(log_open, log_close) + reach[0]) * scale).astype(np.int64),
                           np.maximum(o, c))
            lo = np.maximum(np.minimum(np.rint(np.exp(np.minimum(log_open, log_close) - reach[1]) * scale)
                                       .astype(np.int64), np.minimum(o, c)), 1)
            per_minute = float(self.joint.typical_size) * 20.0
            v = np.maximum(np.rint(rng.lognormal(math.log(max(per_minute, 1e-4)), 0.5, n) * 10**VOLUME_PLACES), 1)
            self._minutes = {"o": o, "h": h, "l": lo, "c": c, "v": v.astype(np.int64)}
        return self._minutes

    def bars(self, step_ms: int, start_ms: int, end_ms: int, prints: Sequence[Print], now_ns: int) -> list[Row]:
        """Every bar of `step_ms` (a multiple of a minute, aligned on the epoch) whose open time is
        in [start_ms, end_ms) and not after the clock `now_ns`, oldest first; bars without
        anything in them are left out, as venues leave them out."""
        if step_ms % MINUTE_MS or step_ms <= 0:
            raise ValueError(f"bars of {step_ms} ms are not whole minutes")
        now_ms = now_ns // _NS_PER_MS
        first = max(start_ms, self.first_ms - self.first_ms % step_ms)
        first += (-first) % step_ms
        last = min(end_ms, now_ms + 1)
        rows: list[Row] = []
        for open_ms in range(first, last, step_ms):
            row = self._bar(open_ms, open_ms + step_ms, prints, now_ns)
            if row is not None:
                rows.append(row)
        return rows

    def _bar(self, open_ms: int, close_ms: int, prints: Sequence[Print], now_ns: int) -> Row | None:
        m = self.minutes()
        scale = Decimal(1).scaleb(-self.places)
        o = h = lo = c = None
        volume = Decimal(0)
        i0 = max(0, (open_ms - self.first_ms) // MINUTE_MS)
        i1 = min(len(m["o"]), (close_ms - self.first_ms) // MINUTE_MS)
        if i1 > i0:
            o, c = Decimal(int(m["o"][i0])) * scale, Decimal(int(m["c"][i1 - 1])) * scale
            h, lo = Decimal(int(m["h"][i0:i1].max())) * scale, Decimal(int(m["l"][i0:i1].min())) * scale
            volume = Decimal(int(m["v"][i0:i1].sum())).scaleb(-VOLUME_PLACES)
        if close_ms > self.joint_minute_ms:
            times = [p[0] for p in prints]  # played prints, ascending
            lo_i = bisect.bisect_left(times, max(open_ms * _NS_PER_MS, self.joint.ts_ns))
            hi_i = bisect.bisect_left(times, min(close_ms * _NS_PER_MS, now_ns + 1))
            for _, price, size in prints[lo_i:hi_i]:
                if o is None:
                    o = h = lo = price
                assert h is not None and lo is not None
                h, lo, c = max(h, price), min(lo, price), price
                volume += size
        if o is None or h is None or lo is None or c is None:
            return None
        q = self.places
        return (open_ms, f"{o:.{q}f}", f"{h:.{q}f}", f"{lo:.{q}f}", f"{c:.{q}f}", f"{volume:f}")


def history_for(symbol: str, prints: Sequence[Print], seed: int = DEFAULT_SEED, days: int = DEFAULT_DAYS
                ) -> CandleHistory | None:
    """The history of a symbol whose recorded prints (all of the recording, oldest first) are
    `prints`; None for a symbol the recording never trades (no joint)."""
    if not prints:
        return None
    ts, price, _ = prints[0]
    sizes = sorted(p[2] for p in prints[:1000])
    return CandleHistory(symbol, Joint(ts, price, sizes[len(sizes) // 2]), seed=seed, days=days)
