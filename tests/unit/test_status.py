"""`entasis status` (infra/cli/status.py) on hand-made inputs: where it looks (flags over what a
running `entasis up` wrote, over the settings), how it merges the sources into one row per feed,
and that an unreachable process makes it say NOT READY and exit 1. Against real processes:
tests/integration/test_status.py."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

from infra.cli import status
from infra.cli.main import parser
from infra.config.settings import Settings
from schemas.events import Trade
from streams.ingest.connector import FeedStats
from streams.runtime.metrics import ConnectorMetrics

NOW_NS = 1_800_000_000 * 10**9


def args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["status", *argv])


def test_flags_win_over_up_json_which_wins_over_the_settings(tmp_path: Path) -> None:
    settings = Settings(api_port=8123, worker_metrics_port=9101, kafka_bootstrap="kafka:9092", data_dir=tmp_path)
    plain = status.targets(settings, args())
    assert plain == status.Targets(
        api="http://127.0.0.1:8123", worker="http://127.0.0.1:9101", bootstrap="kafka:9092", source="settings"
    )

    status.write_up_file(
        tmp_path,
        api="https://127.0.0.1:1",
        cafile="/c.pem",
        worker="http://127.0.0.1:2",
        connectors=None,
        bootstrap="127.0.0.1:3",
        namespace="run-x.",
        clickhouse_url="http://h:4",
        clickhouse_database="entasis_run_x",
        data_dir=str(tmp_path),
        stale_feed_seconds=0.0,
    )
    up = status.read_up_file(tmp_path)
    assert up is not None and up["pid"] == os.getpid()
    from_up = status.targets(settings, args(), up)
    assert (from_up.api, from_up.cafile, from_up.worker, from_up.bootstrap, from_up.source) == (
        "https://127.0.0.1:1",
        "/c.pem",
        "http://127.0.0.1:2",
        "127.0.0.1:3",
        "up.json",
    )
    upped = status.up_settings(settings, up)
    assert (upped.topic_namespace, upped.clickhouse.database, upped.clickhouse.url) == (
        "run-x.",
        "entasis_run_x",
        "http://h:4",
    )

    flagged = status.targets(settings, args("--worker", "http://w:5"), up)
    assert (flagged.worker, flagged.api, flagged.source) == ("http://w:5", "https://127.0.0.1:1", "flags, up.json")

    status.remove_up_file(tmp_path)
    assert status.read_up_file(tmp_path) is None


def test_an_up_json_whose_process_is_gone_is_ignored(tmp_path: Path) -> None:
    (tmp_path / status.UP_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "api": "https://x"}))
    assert status.read_up_file(tmp_path) is None


def _stats(**counts: int) -> FeedStats:
    stats = FeedStats()
    for name, value in counts.items():
        setattr(stats, name, value)
    return stats


def _trade(recv_ns: int) -> Trade:
    return Trade(
        venue="binance",
        symbol="ETH-USDT",
        event_ts_ns=recv_ns - 10**6,
        recv_ts_ns=recv_ns,
        trade_id="7",
        price="2600.5",
        size="0.1",
        side="buy",
    )


def fake_connector() -> SimpleNamespace:
    up = SimpleNamespace(
        feed=SimpleNamespace(symbol="ETH-USDT", key="binance:ETH-USDT"),
        up=True,
        stats=_stats(
            trades=120, backfilled=20, reconnects=1, disconnects=1, trade_gaps=1, missing=3, book_gaps=2, stale=0
        ),
        last_trade=_trade(NOW_NS - 4 * 10**9),
    )
    down = SimpleNamespace(
        feed=SimpleNamespace(symbol="BTC-USDT", key="binance:BTC-USDT"),
        up=False,
        stats=_stats(trades=5, stale=1),
        last_trade=None,
    )
    return SimpleNamespace(venue="binance", malformed_frames=2, states={"ETH-USDT": up, "BTC-USDT": down})


async def test_connector_metrics_are_read_from_the_connectors_counters_at_scrape_time() -> None:
    metrics = ConnectorMetrics([fake_connector()], wall_ns=lambda: NOW_NS)
    samples = status.parse_samples(metrics.render().decode())
    eth = (("symbol", "ETH-USDT"), ("venue", "binance"))
    assert samples[("entasis_connector_trades_total", eth)] == 120
    assert samples[("entasis_connector_backfilled_trades_total", eth)] == 20
    assert samples[("entasis_connector_trade_gaps_total", eth)] == 1
    assert samples[("entasis_connector_missing_trades_total", eth)] == 3
    assert samples[("entasis_connector_book_gaps_total", eth)] == 2
    assert samples[("entasis_connector_last_trade_age_seconds", eth)] == 4.0
    assert samples[("entasis_connector_malformed_frames_total", (("venue", "binance"),))] == 2
    btc_down = (("state", "down"), ("symbol", "BTC-USDT"), ("venue", "binance"))
    assert samples[("entasis_connector_feed_state", btc_down)] == 1
    assert samples[("entasis_connector_stalls_total", (("symbol", "BTC-USDT"), ("venue", "binance")))] == 1
    # no trade yet: no age to report
    assert ("entasis_connector_last_trade_age_seconds", (("symbol", "BTC-USDT"), ("venue", "binance"))) not in samples
    checks = await metrics.checks()
    assert [(c.name, c.ok, c.state) for c in checks] == [
        ("binance:ETH-USDT", True, "up"),
        ("binance:BTC-USDT", False, "down"),
    ]


def test_one_row_per_feed_from_connectors_worker_broker_and_database() -> None:
    scrape = ConnectorMetrics([fake_connector()], wall_ns=lambda: NOW_NS).render().decode()
    connectors = status.Component(
        "connectors", "http://c", reachable=True, ready=False, samples=status.parse_samples(scrape)
    )
    worker = status.Component(
        "worker",
        "http://w",
        reachable=True,
        ready=True,
        samples={
            ("entasis_worker_candle_watermark_delay_seconds", (("symbol", "ETH-USDT"), ("venue", "binance"))): 0.25,
            ("entasis_worker_candle_watermark_delay_seconds", (("symbol", "BTC-USDT"), ("venue", "sim"))): 45.0,
        },
    )
    broker = status.BrokerView(
        reachable=True,
        last_published={
            "binance:ETH-USDT": ("7", NOW_NS - 3 * 10**9, NOW_NS - 3 * 10**9),
            "sim:BTC-USDT": ("9", NOW_NS - 45 * 10**9, NOW_NS - 44 * 10**9),
        },
    )
    stored = {"binance:ETH-USDT": NOW_NS - 5 * 10**9}  # 2 s of trades not stored yet; none of sim's
    rows = {r["feed"]: r for r in status.feeds_table(worker, connectors, broker, stored, 30.0, now_ns=NOW_NS)}
    eth = rows["binance:ETH-USDT"]
    assert (eth["state"], eth["trades"], eth["backfilled"], eth["reconnects"], eth["gaps"]) == ("up", 120, 20, 1, 3)
    assert eth["last_trade_age_s"] == 4.0  # the connector's own, not the topic's
    assert eth["sink_lag_s"] == 2.0 and eth["watermark_delay_s"] == 0.25
    assert rows["binance:BTC-USDT"]["state"] == "down"
    sim = rows["sim:BTC-USDT"]
    # no connector speaks for it: judged by its trades' age against the staleness limit
    assert (sim["state"], sim["last_trade_age_s"], sim["sink_lag_s"], sim["stored_event_ns"]) == (
        "stale",
        44.0,
        None,
        None,
    )


def test_unreachable_processes_say_not_ready_and_exit_1(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from infra.dev.processes import free_port

    nobody = f"http://127.0.0.1:{free_port()}"
    settings = Settings(data_dir=tmp_path)
    broker = f"127.0.0.1:{free_port()}"
    code = status.cmd_status(
        settings, args("--api", nobody, "--worker", nobody, "--bootstrap", broker, "--timeout", "0.5")
    )
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("Entasis NOT READY")
    assert "UNREACHABLE" in out and "ConnectionRefusedError" in out

    assert (
        status.cmd_status(
            settings, args("--worker", nobody, "--timeout", "0.5", "--json", "--bootstrap", f"127.0.0.1:{free_port()}")
        )
        == 1
    )
    report = json.loads(capsys.readouterr().out)
    assert report["ready"] is False
    assert report["components"]["worker"]["reachable"] is False
    assert report["broker"]["reachable"] is False and "no broker answers" in report["broker"]["error"]
