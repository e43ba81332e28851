"""A live connector end to end, every part a real process as `entasis up` runs them: the
exchange double (`entasis double`) plays the Binance spot capture, `entasis connect` feeds the
embedded broker through ccxt.pro, the worker stores, the API serves. The venue goes down in
the middle: the API answers MARKET_002 for its symbol, and recovers by itself when the venue is
back; in the end every trade the exchange printed is stored exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from api.auth import issue_token
from infra.config.api import ApiSettings
from infra.dev.exchange_double.binance import BinanceDouble
from infra.dev.processes import free_port, wait_for_port
from schemas.topics import TRADES
from tests.integration.conftest import Infra, child_env, start_worker
from tests.integration.pipeline import prepare, scalar, wait_drained, wait_for
from tests.shared_data import BINANCE, DATA

pytestmark = pytest.mark.integration

FRAMES = 14_000  # the first 2 minutes of the capture
# 23 s of playback; the outage (from `down` until the API has said MARKET_002 and the connector
# is back) must stay within Binance's last 1000 trades, about 9 s of wall time at this pace
SPEED = 5.0


def printed_trade_ids() -> list[str]:
    """What the exchange prints: the double's own recording, read here, outside its process."""
    double = BinanceDouble(BINANCE, "spot", max_frames=FRAMES)
    return [str(r.message["t"]) for r in double.load() if r.message.get("e") == "trade"]


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "infra.cli", *argv], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def test_venue_down_is_market_002_then_recovers_and_every_trade_is_stored_once(infra: Infra, tmp_path: Path) -> None:
    double_port = free_port()
    endpoint = f"http://127.0.0.1:{double_port}"
    settings = infra.settings(api_port=free_port(), stale_feed_seconds=0, connector_stale_seconds=5.0,
                              connector_backoff_max_seconds=0.5, connector_stagger_ms=50, exchange_endpoint=endpoint)
    prepare(settings)
    env = child_env(settings)
    secret = "integration-tests-hs256-secret-0123456789"
    procs = [
        spawn(["double", "--port", str(double_port), "--speed", str(SPEED), "--venue", "binance",
               "--max-frames", str(FRAMES), "--paused", "--data", str(DATA)], env, tmp_path / "double.log"),
        start_worker(settings, tmp_path / "worker.log"),
        spawn(["api", "--dev", "--port", str(settings.api.port)], {**env, "ENTASIS_API_JWT_SECRET": secret},
              tmp_path / "api.log"),
    ]
    try:
        wait_for_port("127.0.0.1", double_port, timeout_s=60, what="exchange double")
        procs.append(spawn(["connect", "--venues", "binance:ETH-USDT"], env, tmp_path / "connect.log"))
        status = lambda: httpx.get(f"{endpoint}/_status").json()["binance"]  # noqa: E731
        wait_for(lambda: status()["subscriptions"] >= 2, 60, "the connector subscribed")
        httpx.post(f"{endpoint}/_control/binance/play")

        wait_for_port("127.0.0.1", settings.api.port, timeout_s=60, what="api")
        token = issue_token(ApiSettings(jwt_secret=secret), "it-live", ["market:read"])
        price_url = f"http://127.0.0.1:{settings.api.port}/api/v1/market/price/ETH-USDT"

        def price() -> httpx.Response:
            return httpx.get(price_url, headers={"Authorization": f"Bearer {token}"})

        wait_for(lambda: price().status_code == 200, 60, "a price from the live feed")
        assert price().json()["exchange"] == "binance"

        httpx.post(f"{endpoint}/_control/binance/down")
        wait_for(lambda: price().status_code == 503, 30, "MARKET_002 while the venue is down")
        down = price().json()
        assert down["error"]["code"] == "MARKET_002"
        assert down["error"]["details"]["exchange"] == "binance"
        assert down["error"]["details"]["state"] == "feed_disconnected"
        httpx.post(f"{endpoint}/_control/binance/up")
        wait_for(lambda: price().status_code == 200, 30, "the price back once the venue is")

        wait_for(lambda: status()["finished"], 120, "the playback")
        printed = printed_trade_ids()
        wait_for(lambda: scalar(settings, "SELECT count() FROM trades FINAL") == len(printed), 60,
                 f"all {len(printed)} printed trades stored; connector log:\n"
                 + (tmp_path / "connect.log").read_text()[-2000:])
        # every trade record the connector published is committed by the worker: nothing is
        # still on its way, so the raw count is final and a duplicate would show in it
        wait_drained(settings, TRADES)
        assert scalar(settings, "SELECT count() FROM trades") == len(printed)  # not one stored twice (before any merge)
        ids = scalar(settings, "SELECT groupArray(trade_id) FROM "
                               "(SELECT trade_id FROM trades ORDER BY toUInt64(trade_id))")
        assert list(ids) == printed  # type: ignore[call-overload]
        kinds = scalar(settings, "SELECT groupArray(kind) FROM (SELECT kind FROM quality_events "
                                 "WHERE venue = 'binance' ORDER BY event_ts)")
        assert list(kinds)[:3] == ["feed_connected", "feed_disconnected", "feed_connected"]  # type: ignore[call-overload]
        assert "trade_gap" not in list(kinds)  # type: ignore[call-overload]
        wait_for(lambda: scalar(settings, "SELECT count() FROM book_snapshots WHERE venue = 'binance'") > 0, 30,
                 "order-book snapshots stored from the connector's books")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
