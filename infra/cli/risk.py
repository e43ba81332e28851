"""`entasis risk backtest`: the VaR backtest table for a candle CSV or a stored symbol.

    entasis risk backtest --csv bitstamp_btcusd_1h.csv [--interval 1d]
    entasis risk backtest --symbol BTC-USDT [--exchange binance] [--interval 1h] [--start ISO] [--end ISO]

Options for both: `--window-days` (default 90), `--method` (repeatable; default every method),
`--json` (rows as JSON instead of the table). A CSV has a header; its first column is the bar's
open time (ISO 8601 UTC) and it has a `close` column (the layout of the recorded exchange history
and of the reference candles); its interval is inferred from the time steps, and `--interval` coarser
than that resamples (the close of a coarser bar is the close of its last finer bar).
The backtest and the candles it reads (`bar_range`) are streams/core/risk_backtest.py, the same
code the API runs.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from schemas.events import INTERVAL_NS
from schemas.risk import RiskMethod
from schemas.symbols import InvalidSymbol, normalize_symbol
from streams.core.risk import RiskConfig
from streams.core.risk_backtest import BacktestRow, backtest, bar_range

_INTERVAL_BY_NS = {ns: name for name, ns in INTERVAL_NS.items()}


def _parse_iso(text: str) -> int:
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 10**9 + parsed.microsecond * 1000


def read_csv(path: Path) -> list[tuple[int, float]]:
    """(open ns, close) rows, oldest first."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader)]
        if "close" not in header:
            raise ValueError(f"{path}: no `close` column in {header}")
        at = header.index("close")
        bars = [(_parse_iso(row[0]), float(row[at])) for row in reader if row]
    bars.sort()
    return bars


def infer_interval(bars: Sequence[tuple[int, float]]) -> str:
    steps = [b[0] - a[0] for a, b in itertools.pairwise(bars) if b[0] > a[0]]
    if not steps:
        raise ValueError("need at least two bars to infer the interval")
    step = min(steps)
    if step not in _INTERVAL_BY_NS:
        raise ValueError(f"bar step of {step / 1e9:g} s is none of {tuple(INTERVAL_NS)}")
    return _INTERVAL_BY_NS[step]


def resample(bars: Sequence[tuple[int, float]], interval: str) -> list[tuple[int, float]]:
    """Coarser bars: each bucket's open time, and the close of its last bar."""
    step = INTERVAL_NS[interval]
    out: dict[int, float] = {}
    for open_ns, close in bars:
        out[open_ns - open_ns % step] = close
    return sorted(out.items())


def _fmt(x: float, spec: str) -> str:
    """`spec` is width then type (`9.3f`); NaN (no observations) prints as a right-aligned dash."""
    width = int(spec.split(".")[0])
    return "-".rjust(width) if math.isnan(x) else format(x, spec)


def format_table(rows: Sequence[BacktestRow]) -> str:
    head = (f"{'method':<13} {'obs':>5} {'breaches':>8} {'expected':>8} {'rate':>7} "
            f"{'kupiec LR':>9} {'p':>6} {'christ. LR':>10} {'p':>6} {'cc LR':>7} {'p':>6} {'mean VaR':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.method.value:<13} {r.observations:>5} {r.breaches:>8} {r.expected:>8.1f} "
            f"{_fmt(r.breach_rate, '7.2%')} "
            f"{_fmt(r.kupiec.statistic, '9.3f')} {_fmt(r.kupiec.p_value, '6.3f')} "
            f"{_fmt(r.christoffersen.statistic, '10.3f')} {_fmt(r.christoffersen.p_value, '6.3f')} "
            f"{_fmt(r.conditional_coverage.statistic, '7.3f')} {_fmt(r.conditional_coverage.p_value, '6.3f')} "
            f"{_fmt(r.mean_var, '12.2f')}"
        )
    return "\n".join(lines)


def _iso(ns: int | None) -> str:
    return "-" if ns is None else datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _rows_json(rows: Sequence[BacktestRow]) -> list[dict[str, Any]]:
    def num(x: float) -> float | None:
        return None if math.isnan(x) else x

    return [
        {
            "method": r.method.value, "observations": r.observations, "breaches": r.breaches,
            "expected": r.expected, "breach_rate": num(r.breach_rate),
            "kupiec": {"statistic": num(r.kupiec.statistic), "p_value": num(r.kupiec.p_value)},
            "christoffersen": {"statistic": num(r.christoffersen.statistic), "p_value": num(r.christoffersen.p_value)},
            "conditional_coverage": {"statistic": num(r.conditional_coverage.statistic),
                                     "p_value": num(r.conditional_coverage.p_value)},
            "first": _iso(r.first_ns), "last": _iso(r.last_ns), "mean_var": num(r.mean_var),
        }
        for r in rows
    ]


def _bars_from_store(settings: Any, args: argparse.Namespace, interval: str, config: RiskConfig,
                     start_ns: int | None, end_ns: int | None) -> list[tuple[int, float]]:
    from infra.store.clickhouse import make_client
    from infra.store.risk_repository import RiskRepository

    try:
        symbol = normalize_symbol(args.symbol)
    except InvalidSymbol:
        raise SystemExit(f"--symbol {args.symbol!r} is not BASE-QUOTE, e.g. BTC-USDT") from None
    repository = RiskRepository(lambda: make_client(settings))
    try:
        venue = args.exchange
        if venue is None:
            last = repository.last_price(symbol)
            if last is None:
                raise SystemExit(f"no trades of {symbol} in the store")
            venue = last.venue
        lo, hi = bar_range(config, start_ns, end_ns)
        return [(ts, float(c)) for ts, c in repository.final_closes(symbol, venue, interval, lo, hi)]
    finally:
        repository.close()


def cmd_risk_backtest(settings: Any, args: argparse.Namespace) -> int:
    start_ns = _parse_iso(args.start) if args.start else None
    end_ns = _parse_iso(args.end) if args.end else None
    methods = tuple(RiskMethod(m) for m in args.method) if args.method else tuple(RiskMethod)
    if args.csv:
        bars = read_csv(Path(args.csv))
        native = infer_interval(bars)
        interval = args.interval or native
        if INTERVAL_NS[interval] < INTERVAL_NS[native]:
            raise SystemExit(f"--interval {interval} is finer than the file's {native}")
        if interval != native:
            bars = resample(bars, interval)
        source = f"{args.csv} ({native}{' -> ' + interval if interval != native else ''})"
    else:
        interval = args.interval or "1h"
        config = RiskConfig(interval_ns=INTERVAL_NS[interval], window_days=args.window_days, methods=methods)
        bars = _bars_from_store(settings, args, interval, config, start_ns, end_ns)
        source = f"{args.symbol} {interval} candles in the store"
    config = RiskConfig(interval_ns=INTERVAL_NS[interval], window_days=args.window_days, methods=methods)
    rows = backtest(bars, config, start_ns, end_ns)
    if args.json:
        print(orjson.dumps(_rows_json(rows), option=orjson.OPT_INDENT_2).decode())
        return 0
    first = min((r.first_ns for r in rows if r.first_ns is not None), default=None)
    last = max((r.last_ns for r in rows if r.last_ns is not None), default=None)
    print(f"VaR 95 % one-day backtest: {source}; window {args.window_days} days; "
          f"{len(bars)} bars; forecasts {_iso(first)} .. {_iso(last)}")
    print(format_table(rows))
    return 0


def add_parser(sub: Any) -> None:
    """Add `risk backtest` to the `entasis` sub-command parsers."""
    risk = sub.add_parser("risk", help="rolling risk tools (VaR backtests)")
    risk_sub = risk.add_subparsers(dest="risk_command", required=True)
    bt = risk_sub.add_parser("backtest", help="VaR breaches with Kupiec and Christoffersen tests, per method")
    source = bt.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="candle CSV (timestamp first, a `close` column)")
    source.add_argument("--symbol", help="a stored symbol, e.g. BTC-USDT (final candles in ClickHouse)")
    bt.add_argument("--exchange", help="venue of --symbol (default: the venue that traded last)")
    bt.add_argument("--interval", choices=tuple(INTERVAL_NS),
                    help="candle interval (CSV: default the file's, coarser resamples; store: default 1h)")
    bt.add_argument("--window-days", type=int, default=90, help="estimation window in days (default 90)")
    bt.add_argument("--method", action="append", choices=[m.value for m in RiskMethod],
                    help="a method to test (repeatable; default: all)")
    bt.add_argument("--start", help="first forecast time, ISO 8601 (default: as soon as estimates exist)")
    bt.add_argument("--end", help="forecasts before this time, ISO 8601 (default: to the end of the data)")
    bt.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    bt.set_defaults(func=cmd_risk_backtest)
