"""`entasis risk backtest --csv`: reading candle files, inferring and coarsening the interval,
and the printed table (the backtest itself is tested in test_risk_backtest.py)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from infra.cli import risk as risk_cli
from schemas.risk import RiskMethod
from streams.core.risk import DAY_NS, RiskConfig
from streams.core.risk_backtest import backtest, bar_range, default_end
from tests.shared_data import DATA, REFERENCE_CANDLES

HOUR = 3600 * 10**9


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="entasis")
    risk_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(None, args))


def test_reads_history_and_reference_layouts() -> None:
    eth = risk_cli.read_csv(DATA / "history" / "bitstamp_ethusd_1d.csv")
    assert len(eth) == 787 and eth[0] == (1510185600 * 10**9, 321.32)
    assert risk_cli.infer_interval(eth) == "1d"  # the 12 missing days do not confuse it
    ref = risk_cli.read_csv(REFERENCE_CANDLES)
    assert len(ref) == 12 and risk_cli.infer_interval(ref) == "1m"


def test_resample_keeps_the_last_close_of_each_bucket() -> None:
    bars = [(i * HOUR, float(i)) for i in range(50)]
    assert risk_cli.resample(bars, "1d") == [(0, 23.0), (DAY_NS, 47.0), (2 * DAY_NS, 49.0)]


def test_table_for_the_daily_eth_file(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "history" / "bitstamp_ethusd_1d.csv"
    assert run(["risk", "backtest", "--csv", str(path), "--window-days", "60", "--method", "parametric",
                "--method", "historical"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"VaR 95 % one-day backtest: {path} (1d); window 60 days; 787 bars")
    assert out[1].split()[:4] == ["method", "obs", "breaches", "expected"]
    rows = backtest(risk_cli.read_csv(path), RiskConfig(interval_ns=DAY_NS, window_days=60))
    want = {r.method.value: r for r in rows}
    for line in out[3:]:
        method, obs, breaches = line.split()[:3]
        assert (int(obs), int(breaches)) == (want[method].observations, want[method].breaches)
    assert [line.split()[0] for line in out[3:]] == ["parametric", "historical"]


def test_json_output_and_coarser_interval(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    csv_path = tmp_path / "hours.csv"
    lines = ["timestamp_utc_iso,open,high,low,close,volume"]
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.005, 24 * 80)))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for i, c in enumerate(closes):
        lines.append(f"{start + timedelta(hours=i):%Y-%m-%dT%H:%M:%SZ},{c:.4f},{c:.4f},{c:.4f},{c:.4f},1")
    csv_path.write_text("\n".join(lines) + "\n")
    assert run(["risk", "backtest", "--csv", str(csv_path), "--interval", "1d", "--window-days", "30",
                "--method", "ewma", "--json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["ewma"] and rows[0]["observations"] == 80 - 30 - 1
    assert set(rows[0]["kupiec"]) == {"statistic", "p_value"}
    with pytest.raises(SystemExit):  # --csv and --symbol are exclusive
        run(["risk", "backtest", "--csv", str(REFERENCE_CANDLES), "--symbol", "X-Y"])
    with pytest.raises(SystemExit):  # finer than the file
        run(["risk", "backtest", "--csv", str(csv_path), "--interval", "1m"])


def test_bar_range_reads_the_agents_warm_up_and_one_day_after() -> None:
    # 1h bars, a 2-day window, EWMA only: 48 returns kept, 49 closes to rebuild, plus one bar.
    config = RiskConfig(interval_ns=HOUR, window_days=2, methods=(RiskMethod.EWMA,))
    assert bar_range(config, 240 * HOUR, 480 * HOUR) == (190 * HOUR, 480 * HOUR + DAY_NS)
    assert bar_range(config, None, None) == (0, 2**62)  # open sides read everything
    assert bar_range(config, 10 * HOUR, None) == (0, 2**62)  # never before the epoch


def test_default_end_is_the_first_midnight_after_the_last_close() -> None:
    assert default_end(3 * DAY_NS + 22 * HOUR, HOUR) == 4 * DAY_NS  # closes 23:00
    assert default_end(3 * DAY_NS + 23 * HOUR, HOUR) == 5 * DAY_NS  # closes on a midnight: the next one
    assert default_end(3 * DAY_NS, DAY_NS) == 5 * DAY_NS


def test_the_bars_in_bar_range_backtest_like_the_whole_history() -> None:
    # What the API and `--symbol` read from the store must give the rows the full series gives.
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(11).normal(0, 0.01, 24 * 40)))
    bars = [(i * HOUR, float(c)) for i, c in enumerate(closes)]
    config = RiskConfig(interval_ns=HOUR, window_days=5,
                        methods=(RiskMethod.HISTORICAL, RiskMethod.PARAMETRIC, RiskMethod.EWMA))
    start, end = 20 * DAY_NS, 30 * DAY_NS
    lo, hi = bar_range(config, start, end)
    assert 0 < lo < start and hi < bars[-1][0]  # the test trims both sides
    full = backtest(bars, config, start, end)
    trimmed = backtest([b for b in bars if lo <= b[0] < hi], config, start, end)
    assert [r.observations for r in full] == [10, 10, 10]
    assert trimmed == full
