"""Recorded hourly history -> `entasis history import` -> candle topics -> the running worker's
candle sink, risk and prediction agents -> ClickHouse -> REST, every part a real process.

Oracles come from the file alone: the served candles are its rows (and numpy's daily roll-up of
them), and the risk endpoint's historical and EWMA VaR equal the definitions of
streams/core/risk.py computed here with numpy and scipy from the file's closes."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy import stats

from api.auth import issue_token
from infra.cli.history import import_into
from infra.config.api import ApiSettings
from infra.dev.processes import free_port, wait_for_port
from schemas.codecs import trades as trade_codec
from schemas.events import Side, Trade
from schemas.symbols import stream_key
from schemas.topics import CANDLES, TRADES
from streams.ingest.publisher import KafkaPublisher
from tests.integration.conftest import Infra, child_env, start_worker
from tests.integration.pipeline import prepare, scalar, wait_drained, wait_for
from tests.shared_data import DATA

pytestmark = pytest.mark.integration

HOUR_S = 3600
DAYS = 95  # a 90-day risk window and a few days more
VENUE, SYMBOL = "binance", "BTC-USD"


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def served(t: str) -> int:
    return int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp())


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def historical_oracle(closes: np.ndarray, window: int, n: int) -> tuple[float, float, float]:
    """One-day 95 % historical VaR, ES and volatility of the last `window` bar returns: the
    overlapping n-bar log returns inside the window, k = ceil(5 % of them) worst."""
    logp = np.log(closes[-(window + 1):])
    daily = np.sort(logp[n:] - logp[:-n])
    k = math.ceil(0.05 * len(daily) - 1e-9)
    price = closes[-1]
    var = price * -np.expm1(daily[k - 1])
    es = price * float(np.mean(-np.expm1(daily[:k])))
    vol = math.sqrt(365 * n * float(np.var(np.diff(logp), ddof=1)))
    return var, es, vol


def ewma_oracle(closes: np.ndarray, window: int, n: int, lam_day: float = 0.94) -> tuple[float, float, float]:
    """RiskMetrics: λ per day, λ^(1/n) per bar, weights normalised over the window, zero mean,
    normal one-day return with n bar variances."""
    r = np.diff(np.log(closes[-(window + 1):]))[::-1]  # newest first
    lam = lam_day ** (1 / n)
    w = lam ** np.arange(window)
    sigma = math.sqrt(n * float(np.sum(w * r * r) / np.sum(w)))
    z = stats.norm.ppf(0.05)
    price = closes[-1]
    var = price * -math.expm1(sigma * z)
    es = price * (1 - math.exp(sigma * sigma / 2) * stats.norm.cdf(z - sigma) / 0.05)
    return var, es, math.sqrt(365) * sigma


def test_imported_history_is_stored_served_and_folded_by_risk_and_predictions(infra: Infra, tmp_path: Path) -> None:
    settings = infra.settings(api_port=free_port(), candle_lateness_ms=0, candle_idle_timeout_s=3600.0,
                              stale_feed_seconds=0, risk_methods=("historical", "ewma"),
                              predict_models=("ensemble",), predict_horizons=("1h",))
    prepare(settings)
    lines = (DATA / "history" / "bitstamp_btcusd_1h.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[-DAYS * 24:]]  # the last 95 days, gap-free (its README)
    source = tmp_path / "btcusd_1h.csv"
    source.write_text("\n".join([lines[0], *lines[-DAYS * 24:]]) + "\n")
    closes = np.array([float(r[4]) for r in rows])
    assert all(Decimal(r[5]) > 0 for r in rows)  # every hour traded: one candle each
    opens = [ts(r[0]) for r in rows]
    whole_days = sorted({t - t % 86400 for t in opens if t % 86400 == 0 and t + 23 * HOUR_S <= opens[-1]})

    worker = start_worker(settings, tmp_path / "worker.log")
    api = None
    try:
        summary = import_into(settings, [source], VENUE, SYMBOL, "1h")
        assert (summary.bars, summary.gaps, summary.empty) == (len(rows), 0, 0)
        assert summary.imported == {"1h": len(rows), "1d": len(whole_days)}
        assert summary.skipped == {"1h": 0, "1d": 0}

        where = f"venue = '{VENUE}' AND symbol = '{SYMBOL}'"
        log = tmp_path / "worker.log"
        wait_for(lambda: scalar(settings, f"SELECT count() FROM candles FINAL WHERE {where} AND interval = '1h'")
                 == len(rows), 120, "the imported 1h candles stored")
        last_close_ts = opens[-1] + HOUR_S
        wait_for(lambda: scalar(settings, f"SELECT toUnixTimestamp(max(as_of)) FROM risk_estimates WHERE {where}")
                 == last_close_ts, 300, f"the risk of the last candle; worker log: {log.read_text()[-2000:]}")
        wait_for(lambda: scalar(settings, f"SELECT toUnixTimestamp(max(as_of)) FROM predictions WHERE {where}")
                 == last_close_ts, 400, "the prediction agent through the last imported candle")

        # The API serves known symbols: the ones that traded. One trade after the history.
        trade = Trade(venue=VENUE, symbol=SYMBOL, event_ts_ns=(last_close_ts + 1) * 10**9,
                      recv_ts_ns=(last_close_ts + 1) * 10**9, trade_id="after-history", price=Decimal(rows[-1][4]),
                      size=Decimal("0.1"), side=Side.BUY)
        with KafkaPublisher(settings.kafka_bootstrap) as publisher:
            publisher.publish(TRADES.full_name(settings.topic_namespace), stream_key(VENUE, SYMBOL).encode(),
                              trade_codec.encode(VENUE, SYMBOL, [trade]))
        wait_for(lambda: scalar(settings, f"SELECT count() FROM trades WHERE {where}") == 1, 60, "the trade")

        secret = "integration-tests-hs256-secret-0123456789"
        api = subprocess.Popen([sys.executable, "-m", "infra.cli", "api", "--dev", "--port", str(settings.api.port)],
                               env={**child_env(settings), "ENTASIS_API_JWT_SECRET": secret},
                               stdout=(tmp_path / "api.log").open("wb"), stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", settings.api.port, timeout_s=60, what="api")
        base = f"http://127.0.0.1:{settings.api.port}/api/v1"
        token = issue_token(ApiSettings(jwt_secret=secret), "it-history", ["market:read", "analysis:read"])
        auth = {"Authorization": f"Bearer {token}"}

        # /history serves the file's hours, exactly
        tail = rows[-200:]
        history = httpx.get(f"{base}/market/history/{SYMBOL}", headers=auth, params={
            "interval": "1h", "exchange": VENUE, "start": tail[0][0], "end": iso(last_close_ts)})  # end: exclusive
        assert history.status_code == 200, history.text
        got = [(served(c["timestamp"]), *(Decimal(c[k]) for k in ("open", "high", "low", "close", "volume")))
               for c in history.json()["data"]]
        assert got == [(ts(r[0]), *(Decimal(x) for x in r[1:])) for r in tail]
        # and the derived days: numpy's roll-up of the same hours
        day_rows = [r for r in rows if ts(r[0]) - ts(r[0]) % 86400 in set(whole_days[-30:])]
        grid = np.array([[Decimal(x) for x in r[1:]] for r in day_rows], dtype=object).reshape(30, 24, 5)
        want = [(whole_days[-30 + i], g[0, 0], g[:, 1].max(), g[:, 2].min(), g[-1, 3], g[:, 4].sum())
                for i, g in enumerate(grid)]
        daily = httpx.get(f"{base}/market/history/{SYMBOL}", headers=auth, params={
            "interval": "1d", "exchange": VENUE, "start": iso(whole_days[-30]), "end": iso(whole_days[-1] + 86400)})
        assert daily.status_code == 200, daily.text
        got_days = [(served(c["timestamp"]), *(Decimal(c[k]) for k in ("open", "high", "low", "close", "volume")))
                    for c in daily.json()["data"]]
        assert got_days == want

        # risk over REST equals the documented definitions computed from the file's closes
        window, n = 90 * 24, 24
        for method, oracle in (("historical", historical_oracle), ("ewma", ewma_oracle)):
            risk = httpx.get(f"{base}/analysis/risk/{SYMBOL}", headers=auth,
                             params={"method": method, "exchange": VENUE})
            assert risk.status_code == 200, risk.text
            body = risk.json()
            var, es, vol = oracle(closes, window, n)
            assert (body["window"], Decimal(body["price"])) == (window, Decimal(rows[-1][4]))
            assert float(body["var_95"]) == pytest.approx(var, rel=1e-9, abs=1e-8), method
            assert float(body["expected_shortfall"]) == pytest.approx(es, rel=1e-9, abs=1e-8), method
            assert float(body["volatility"]) == pytest.approx(vol, abs=1e-8), method
            assert served(body["timestamp"]) == last_close_ts

        prediction = httpx.get(f"{base}/analysis/prediction/{SYMBOL}", headers=auth,
                               params={"timeframe": "1h", "model": "ensemble", "exchange": VENUE})
        assert prediction.status_code == 200, prediction.text  # 2280 hours: well past 200 scored forecasts

        # importing the same file again publishes nothing and changes nothing
        # (the count before: once the candles of the trade above are stored, every record committed)
        wait_drained(settings, TRADES, *CANDLES.values())
        rows_before = scalar(settings, f"SELECT count() FROM candles WHERE {where}")
        again = import_into(settings, [source], VENUE, SYMBOL, "1h")
        assert again.imported == {"1h": 0, "1d": 0}
        assert again.skipped == {"1h": len(rows), "1d": len(whole_days)}
        # whatever it published is stored once the worker's group has committed every candle record
        wait_drained(settings, *CANDLES.values())
        assert scalar(settings, f"SELECT count() FROM candles WHERE {where}") == rows_before
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
        if api is not None:
            api.terminate()
            api.wait(timeout=30)

