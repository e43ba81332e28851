"""`entasis replay --from clickhouse`: stored trades back into raw messages, and the arguments
refused before anything is read or published."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from infra.cli.replay import StoredTradeBatcher, TradeColumns, parse_utc_ns, stored_trade_messages

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
    # the ETH batch opened at 0 ms takes the trade at 40 ms, not the one at 60 ms (past its 50 ms span)
    assert decoded(messages) == [
        ("BTC-USDT", ["10"]),
        ("ETH-USDT", ["1", "2"]),
        ("ETH-USDT", ["3"]),
        ("BTC-USDT", ["11"]),
    ]
    lasts = [json.loads(value)["trades"][-1][4] for _, _, value in messages]
    assert lasts == sorted(lasts)  # messages in the order of their last trade: when the batch was whole
    assert [m[0] for m in messages] == [T0 + 5 * MS, T0 + 40 * MS, T0 + 60 * MS, T0 + 120 * MS]  # paced on the last


def test_the_messages_do_not_depend_on_how_the_input_is_cut() -> None:
    """The replay reads the store in pieces of whatever size its blocks come in: any cut gives
    the messages of the whole input at once."""
    rng = random.Random(5)
    rows, ms = [], 0
    for i in range(3000):
        ms += rng.choice((0, 0, 1, 3, 20, 49, 50, 51, 200))
        rows.append(row(rng.choice(("ETH-USDT", "BTC-USDT", "SOL-USDT")), i, ms))
    whole = StoredTradeBatcher("binance").add(TradeColumns.from_rows(rows), last=True)
    assert sum(m[4] for m in whole) == len(rows)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(rows)), rng.randint(1, 40)))
        batcher, got = StoredTradeBatcher("binance"), []
        for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True):
            got += batcher.add(TradeColumns.from_rows(rows[a:b], start=a))
        got += batcher.add(TradeColumns.from_rows([], start=len(rows)), last=True)
        assert got == whole


def test_batches_follow_the_span_and_size_rules_per_stream() -> None:
    rng = random.Random(9)
    rows, ms = [], 0
    for i in range(2000):
        ms += rng.choice((0, 1, 10, 60))
        rows.append(row(rng.choice(("ETH-USDT", "BTC-USDT")), i, ms))
    ids: dict[str, list[str]] = {}
    for _, symbol, value in stored_trade_messages(rows, "binance"):
        trades = json.loads(value)["trades"]
        assert 1 <= len(trades) <= 100
        assert trades[-1][4] - trades[0][4] <= 50 * MS  # one batch spans at most 50 ms of event time
        ids.setdefault(symbol, []).extend(t[0] for t in trades)
    for symbol, got in ids.items():
        assert got == [r[1] for r in rows if r[0] == symbol]  # every trade once, in event-time order


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


def test_the_messages_are_the_bytes_orjson_writes_for_them_odd_ids_included() -> None:
    """The rows are rendered by Arrow's string kernels: the same bytes as orjson's rendering of the
    same message, with ids that need escaping escaped."""
    import orjson

    rows = [row("ETH-USDT", 1, 0), row("ETH-USDT", 2, 1)]
    rows.append(("ETH-USDT", 'a"b\\c\x01', Decimal("0.00000001"), Decimal("12345678901234.5"), "sell", T0 + 2 * MS, 5))
    ((_, _, value),) = list(stored_trade_messages(rows, "binance"))
    expected = orjson.dumps({"schema_version": "trade_batch.v1", "venue": "binance", "symbol": "ETH-USDT", "trades": [
        [r[1], format(r[2], "f"), format(r[3], "f"), r[4], r[5], r[6]] for r in rows]})
    assert value == expected
    assert json.loads(value)["trades"][2][0] == 'a"b\\c\x01'
