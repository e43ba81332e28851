"""The settings tree: nested environment names, flat keyword names, unknown variables refused,
and `to_env` handing the same settings to a child process."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest
from pydantic import ValidationError

from infra.config.settings import Settings, UnknownSettings, check_environment, unknown_variables


def test_section_variables_reach_their_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENTASIS_RISK_WINDOW_DAYS", "30")
    monkeypatch.setenv("ENTASIS_RISK_INTERVALS", "1h, 1d")
    monkeypatch.setenv("ENTASIS_BOOK_TOP_DEPTH", "5")
    monkeypatch.setenv("ENTASIS_CLICKHOUSE_URL", "http://db.example:8123")
    monkeypatch.setenv("ENTASIS_API_JWT_SECRET", "x" * 40)
    monkeypatch.setenv("ENTASIS_API_ALLOWLIST", "10.0.0.0/8, 127.0.0.1")
    monkeypatch.setenv("ENTASIS_PORTFOLIO_INITIAL_BALANCE", "2500.5")
    monkeypatch.setenv("ENTASIS_KAFKA_BOOTSTRAP", "broker:9092")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.risk.window_days == 30 and s.risk.intervals == ("1h", "1d")
    assert s.book.top_depth == 5
    assert s.clickhouse.url == "http://db.example:8123"
    assert s.api.jwt_secret.get_secret_value() == "x" * 40
    assert [str(n) for n in s.api.allowlist] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert s.portfolio.initial_balance == Decimal("2500.5")
    assert s.kafka_bootstrap == "broker:9092"
    check_environment()  # every one of them is a setting


def test_flat_keyword_names_and_validation() -> None:
    s = Settings(candle_lateness_ms=0, risk_methods="ewma", api_port=9000)
    assert (s.candle.lateness_ms, s.risk.methods, s.api.port) == (0, ("ewma",), 9000)
    with pytest.raises(ValidationError):
        Settings(book_top_depth=101)  # above the 100 levels a book publishes
    with pytest.raises(ValidationError):
        Settings(risk_no_such_thing=1)
    with pytest.raises(ValidationError):
        s.risk.window_days = 3  # type: ignore[misc]  # frozen


def test_unknown_variables_are_named_with_a_suggestion() -> None:
    env = {
        "ENTASIS_RISK_WINDOW_DAYS": "30",
        "ENTASIS_RISK_WINDOW_DAY": "30",  # a typo
        "ENTASIS_NONSENSE": "1",
        "ENTASIS_LOGLEVEL": "DEBUG",  # not a setting, but ours
        "ENTASIS_TEST_KAFKA_BOOTSTRAP": "x",  # the test suite's own
        "PATH": "/bin",
    }
    unknown = unknown_variables(env)
    assert len(unknown) == 2
    assert unknown[0].startswith("ENTASIS_NONSENSE")
    assert unknown[1].startswith("ENTASIS_RISK_WINDOW_DAY ") and "ENTASIS_RISK_WINDOW_DAYS" in unknown[1]
    with pytest.raises(UnknownSettings, match="ENTASIS_NONSENSE"):
        check_environment(env)


def test_to_env_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(risk_intervals="1h,1d", api_allowlist="10.0.0.0/8", api_jwt_secret="s" * 32,
                        book_top_depth=7, topic_namespace="ns.")
    env = original.to_env()
    assert env["ENTASIS_RISK_INTERVALS"] == "1h,1d" and env["ENTASIS_BOOK_TOP_DEPTH"] == "7"
    assert unknown_variables(env) == []
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings(_env_file=None) == original  # type: ignore[call-arg]


def test_the_command_line_refuses_an_unknown_variable() -> None:
    proc = subprocess.run([sys.executable, "-m", "infra.cli", "migrate"], capture_output=True, text=True,
                          env={"ENTASIS_RISK_WINDOW_DAY": "3", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 2
    assert "ENTASIS_RISK_WINDOW_DAY" in proc.stderr and "ENTASIS_RISK_WINDOW_DAYS" in proc.stderr
