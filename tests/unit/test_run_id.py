"""`--run-id NAME`: one derivation of a run's topic namespace, database and consumer group,
the same for every command, refusing names that are malformed or would reach live data."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.config.run import BadRunId, for_run, is_run, run_names
from infra.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def live() -> Settings:
    return Settings(clickhouse_database="entasis", topic_namespace="", worker_id="entasis-worker")


def test_a_run_gets_its_own_namespace_database_and_consumer_group() -> None:
    run = for_run(live(), "bt-2024")
    # expected values written out: the documented names, not a call of the code under test
    assert run.topic_namespace == "run-bt_2024."
    assert run.clickhouse.database == "entasis_run_bt_2024"
    assert run.worker.id == "entasis-run-bt_2024"
    assert is_run(run) and not is_run(live())


def test_a_run_decides_time_by_event_time_only() -> None:
    run = for_run(live(), "r1")
    assert math.isinf(run.candle.idle_timeout_s)  # no wall-clock idle close
    assert run.stale_feed_seconds == 0.0  # no wall-clock staleness check
    assert live().candle.idle_timeout_s == 10.0  # live keeps its idle close


def test_everything_else_is_kept() -> None:
    base = Settings(
        kafka_bootstrap="10.0.0.1:9092", clickhouse_url="http://db:8123", risk_window_days=30, clickhouse_user="me"
    )
    run = for_run(base, "r1")
    assert (run.kafka_bootstrap, run.clickhouse.url, run.clickhouse.user, run.risk.window_days) == (
        "10.0.0.1:9092",
        "http://db:8123",
        "me",
        30,
    )


def test_the_derived_settings_reach_a_child_process_unchanged() -> None:
    # `up --run-id` hands the run to its children through the environment (`to_env`)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTASIS_")}
    env.update(for_run(live(), "r1").to_env())
    code = (
        "from infra.config.settings import Settings; s = Settings(); "
        "print(s.topic_namespace, s.clickhouse.database, s.worker.id, s.candle.idle_timeout_s, "
        "s.stale_feed_seconds)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["run-r1.", "entasis_run_r1", "entasis-run-r1", "inf", "0.0"]


def test_hyphens_and_underscores_name_the_same_run() -> None:
    assert run_names("a-b") == run_names("a_b")
    assert run_names("a-b") != run_names("ab")


def test_deriving_a_run_twice_gives_the_same_run() -> None:
    once = for_run(live(), "r1")
    assert for_run(once, "r1") == once


@pytest.mark.parametrize("name", ["", "A1", "-x", "_x", "x y", "x.y", "x/y", "é", "a" * 33, "x;DROP"])
def test_malformed_run_ids_are_refused(name: str) -> None:
    with pytest.raises(BadRunId, match="not valid"):
        run_names(name)


@pytest.mark.parametrize("name", ["a", "0", "a" * 32, "bt-2024_08"])
def test_well_formed_run_ids_are_accepted(name: str) -> None:
    assert run_names(name).database.startswith("entasis_run_")


@pytest.mark.parametrize(
    "database,name", [("entasis", "entasis"), ("prod_db", "prod_db"), ("prod_db", "prod-db"), ("entasis_run_x", "x")]
)
def test_a_run_id_that_names_the_live_database_is_refused(database: str, name: str) -> None:
    with pytest.raises(BadRunId, match="live database"):
        for_run(Settings(clickhouse_database=database), name)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTASIS_")}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", [["replay", "nowhere"], ["worker"], ["api"], ["up"]])
def test_every_command_refuses_the_live_database_as_run_id_with_exit_2(command: list[str]) -> None:
    # refused before anything starts: no broker or database is needed to see it
    out = run_cli(*command, "--run-id", "entasis")
    assert out.returncode == 2
    assert "names the live database 'entasis'" in out.stderr


def test_a_malformed_run_id_is_refused_with_exit_2() -> None:
    out = run_cli("worker", "--run-id", "Bad Name")
    assert out.returncode == 2
    assert "is not valid" in out.stderr
