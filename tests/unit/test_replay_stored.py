"""`entasis replay --from clickhouse`: stored trades back into raw messages, and the arguments
refused before anything is read or published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from infra.cli.replay import parse_utc_ns, stored_trade_messages

ROOT = Path(__file__).resolve().parents[2]
MS = 1_000_000
T0 = 1_723_161_600 * 10**9  # 2024-08-09T00:00:00Z


def row(symbol: str, trade_id: int, ms: int) -> tuple[str, str, Decimal, Decimal, str, int, int]:
    return (symbol, str(trade_id), Decimal("2600.5"), Decimal("0.1"), "buy", T0 + ms * MS, T0 + ms * MS + 7)


def decoded(messages: list[tuple[int, str, bytes]]) -> list[tuple[str, list[str]]]:
    # read with plain json, not the project's decoder
    out = []
    for _, symbol, value in messages:
        body = json.loads(value)
        assert (body["venue"], body["symbol"]) == ("binance", symbol)
        out.append((symbol, [t[0] for t in body["trades"]]))
    return out


def test_trades_come_back_as_the_raw_messages_the_worker_reads() -> None:
    ((_, _, value),) = list(stored_trade_messages([row("ETH-USDT", 1, 0)], "binance"))
    body = json.loads(value)
    assert body["trades"] == [["1", "2600.5", "0.1", "buy", T0, T0 + 7]]  # exact strings, both times kept


def test_each_stream_keeps_event_time_order_and_batches_close_on_their_span() -> None:
    rows = [
        row("ETH-USDT", 1, 0),
        row("BTC-USDT", 10, 5),
        row("ETH-USDT", 2, 40),
        row("ETH-USDT", 3, 60),
        row("BTC-USDT", 11, 120),
    ]
    messages = list(stored_trade_messages(rows, "binance"))
    # at 60 ms the ETH batch opened at 0 ms is past its 50 ms span (and BTC's opened at 5 ms too)
    assert decoded(messages) == [
        ("ETH-USDT", ["1", "2"]),
        ("BTC-USDT", ["10"]),
        ("ETH-USDT", ["3"]),
        ("BTC-USDT", ["11"]),
    ]
    firsts = [json.loads(value)["trades"][0][4] for _, _, value in messages]
    assert firsts == sorted(firsts)  # messages in the order their batches opened: event-time order
    assert [m[0] for m in messages] == [T0 + 40 * MS, T0 + 5 * MS, T0 + 60 * MS, T0 + 120 * MS]  # paced on the last


def test_a_batch_holds_at_most_100_trades() -> None:
    rows = [row("ETH-USDT", i, 0) for i in range(250)]
    assert [len(ids) for _, ids in decoded(list(stored_trade_messages(rows, "binance")))] == [100, 100, 50]


def test_the_same_rows_give_the_same_messages() -> None:
    rows = [row("ETH-USDT" if i % 3 else "BTC-USDT", i, i * 7) for i in range(500)]
    assert list(stored_trade_messages(rows, "binance")) == list(stored_trade_messages(rows, "binance"))


def test_times_are_utc() -> None:
    assert parse_utc_ns("2024-08-09T00:00:00Z") == T0
    assert parse_utc_ns("2024-08-09") == T0  # a date is its UTC midnight
    assert parse_utc_ns("2024-08-09T02:00:00.5+02:00") == T0 + 500 * MS
    for bad in ("2024-08-09T00:00:00", "yesterday"):
        with pytest.raises(ValueError, match=bad):
            parse_utc_ns(bad)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    # no broker or database runs here: every refusal must come before either is reached
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTASIS_")}
    env.update(ENTASIS_KAFKA_BOOTSTRAP="127.0.0.1:9", ENTASIS_CLICKHOUSE_URL="http://127.0.0.1:9")
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "replay", "--from", "clickhouse", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD = ("--venue", "binance", "--symbols", "BTC-USDT", "--start", "2024-08-09", "--end", "2024-08-10")


@pytest.mark.parametrize(
    "args,reason",
    [
        (GOOD, "needs --run-id"),
        (("--venue", "binance", "--run-id", "r1"), "missing --symbols --start --end"),
        (("--venue", "Bin ance", *GOOD[2:], "--run-id", "r1"), "is not a venue name"),
        ((*GOOD[:3], "BTCUSDT", *GOOD[4:], "--run-id", "r1"), "is not a symbol"),
        ((*GOOD[:5], "2024-08-09T00:00:00", *GOOD[6:], "--run-id", "r1"), "needs a UTC offset"),
        ((*GOOD[:7], "2024-08-08", "--run-id", "r1"), "is not after --start"),
        (("some/path", *GOOD, "--run-id", "r1"), "takes no PATH"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_read(args: tuple[str, ...], reason: str) -> None:
    out = cli(*args)
    assert out.returncode == 2, out.stderr
    assert reason in out.stderr
