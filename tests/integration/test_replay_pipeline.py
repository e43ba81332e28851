"""Recorded Binance captures -> raw topics -> Faust worker -> ClickHouse -> REST API, every
part a real process, checked against the reference candles computed from the same trades."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from api.auth import issue_token
from infra.cli.feeds import replay_into, wait_until_stored
from infra.config.api import ApiSettings
from infra.dev.processes import free_port, wait_for_port
from schemas.topics import TRADES
from tests.integration.conftest import Infra, child_env, start_worker
from tests.integration.pipeline import prepare, scalar, wait_drained, wait_for
from tests.shared_data import BINANCE, raw_spot_trades, reference_candles

pytestmark = pytest.mark.integration


def test_replay_through_the_whole_pipeline_serves_the_reference_candles(infra: Infra, tmp_path: Path) -> None:
    # no idle close or staleness here: the open minute must stay open, the feed is a replay
    settings = infra.settings(api_port=free_port(), candle_lateness_ms=0, candle_idle_timeout_s=3600.0,
                              stale_feed_seconds=0)
    prepare(settings)
    worker = start_worker(settings, tmp_path / "worker.log")
    api = None
    try:
        result = replay_into(settings, BINANCE, progress=False)  # every market in the folder
        spot_trades = raw_spot_trades()
        assert result.last_trade_ids["binance:ETH-USDT"] == str(spot_trades[-1]["t"])
        assert wait_until_stored(settings, result, timeout_s=120), (tmp_path / "worker.log").read_text()[-3000:]

        reference = reference_candles()
        closed = len(reference) - 1  # the last minute never closes: no later trade passes it
        where = "venue = 'binance' AND symbol = 'ETH-USDT' AND interval = '1m'"
        wait_for(lambda: scalar(settings, f"SELECT count() FROM candles FINAL WHERE {where}") == closed,
                 60, "the closed 1m candles")
        published = result.trades_published  # counted by the replay as it published, every venue
        wait_for(lambda: scalar(settings, "SELECT count() FROM trades FINAL") == published, 120,
                 f"all {published} published trades stored")
        # every trade record committed by the worker: nothing is still on its way, so the raw
        # count below is final and a duplicate would show in it
        wait_drained(settings, TRADES)
        assert scalar(settings, "SELECT count() FROM trades") == published  # nothing stored twice
        assert scalar(settings, "SELECT count() FROM trades FINAL") == published
        assert scalar(settings, "SELECT count() FROM trades FINAL WHERE venue = 'binance'") == len(spot_trades)

        # the book agent rebuilt every recorded book without a gap and stored periodic snapshots
        wait_for(lambda: scalar(settings, "SELECT uniqExact(venue) FROM book_snapshots") == 3, 60, "book snapshots")
        assert scalar(settings, "SELECT count() FROM quality_events WHERE kind IN ('book_gap', 'late_trade')") == 0

        api_log = (tmp_path / "api.log").open("wb")
        secret = "integration-tests-hs256-secret-0123456789"
        api = subprocess.Popen([sys.executable, "-m", "infra.cli", "api", "--dev", "--port", str(settings.api.port)],
                               env={**child_env(settings), "ENTASIS_API_JWT_SECRET": secret},
                               stdout=api_log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", settings.api.port, timeout_s=60, what="api")
        base = f"http://127.0.0.1:{settings.api.port}/api/v1/market"
        token = issue_token(ApiSettings(jwt_secret=secret), "it-replay", ["market:read"])
        auth = {"Authorization": f"Bearer {token}"}

        history = httpx.get(f"{base}/history/eth-usdt", params={
            "interval": "1m", "exchange": "binance", "start": "2024-08-08T23:54:00Z", "end": "2024-08-09T00:06:00Z"},
            headers=auth)
        assert history.status_code == 200, history.text
        body = history.json()
        assert body["symbol"] == "ETH-USDT"
        got = [(datetime.fromisoformat(c["timestamp"].replace("Z", "+00:00")), c["open"], c["high"], c["low"],
                c["close"], c["volume"]) for c in body["data"]]
        want = [(datetime.fromisoformat(r["minute_start_utc_iso"].replace("Z", "+00:00")), r["open"], r["high"],
                 r["low"], r["close"], r["volume"]) for r in reference]
        assert got == want  # every minute, exact decimal strings, the open minute last

        assert httpx.get(f"{base}/price/ETH-USDT").status_code == 401  # no credentials, no data
        price = httpx.get(f"{base}/price/ETH-USDT", params={"exchange": "binance"}, headers=auth).json()
        last = spot_trades[-1]
        assert Decimal(price["price"]) == Decimal(last["p"])
        assert price["exchange"] == "binance"
        assert Decimal(price["volume"]) == sum(Decimal(t["q"]) for t in spot_trades)  # all within 24 h
        last_second = datetime.fromtimestamp(last["T"] / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert price["timestamp"].startswith(last_second)
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
