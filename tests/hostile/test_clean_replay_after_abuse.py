"""After all of it, a clean replay still gives exactly its candles (issue 18, hostile-input tier).

Every part is a real process: the embedded broker and database, `entasis worker --run-id R`
consuming the run's raw topics, `entasis replay --run-id R --digest`. First the hostile input
(tests/hostile/poison.py: malformed and truncated JSON, prices of 1e30 and 5000 digits, times
outside int64 and negative, lower-case symbols, wrong types) goes onto the raw trade and book
topics as raw bytes, interleaved with a few good messages of another stream so that good and bad
share the trade sink's batches (finding 3: one poison value lost the whole batch); then the
trade lines of a recorded Binance capture are replayed into the same run.

Oracles, computed with plain gzip/json/Decimal and sharing no code with the project: the 1m
OHLCV, trade count and first/last trade id of each minute of the capture, the good messages'
trades, and the bytes of every hostile message. The run must store exactly the capture's
candles and trades (nothing lost, nothing extra), the good messages' trades, nothing from the
poison, one dead letter per hostile message carrying its bytes, and the worker must still run."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from infra.cli.replay import prepare_run
from infra.config.run import for_run
from infra.config.settings import Settings
from schemas import topics
from schemas.codecs import dead_letters
from streams.ingest.publisher import KafkaPublisher
from tests.hostile.poison import MIXED_MESSAGE, T, good_row, poison_book_messages, poison_trade_messages, trade_batch
from tests.integration.conftest import Infra, child_env
from tests.integration.conftest import infra as infra  # the embedded broker and database (a fixture)
from tests.integration.pipeline import rows, scalar, wait_for
from tests.integration.topic_read import read_all
from tests.shared_data import BINANCE

pytestmark = pytest.mark.integration

SOURCE = BINANCE / "spot_ethusdt_20240808.gz"  # 6,106 trades, 23:54:15 to 00:00:01 UTC
MINUTE_NS = 60 * 10**9

# the good messages sent among the poison: (trade id, price, size, event time); 23:56 closes 23:55
GOOD = [("g1", "60000.5", "0.01", T + 10 * 10**9), ("g2", "60010", "0.5", T + 20 * 10**9),
        ("g3", "59990.25", "0.25", T + 30 * 10**9), ("g4", "60020", "1", T + 65 * 10**9)]


def capture_trades(folder: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The capture's trade lines, unchanged, in a file of its name (replay reads market and
    symbol from the name), and their payloads read with plain gzip + json."""
    folder.mkdir()
    target = folder / SOURCE.name
    payloads = []
    with gzip.open(SOURCE, "rt") as src, gzip.open(target, "wt") as dst:
        for line in src:
            if '"stream":"ethusdt@trade"' in line:
                dst.write(line)
                payloads.append(json.loads(line.split(" ", 1)[1])["data"])
    return target, payloads


def minute_candles(trades: list[tuple[str, Decimal, Decimal, int]]) -> list[tuple[Any, ...]]:
    """(open_ts ns, open, high, low, close, volume, trades, first id, last id) per minute of
    (trade id, price, size, time ns) in time order."""
    buckets: dict[int, list[tuple[str, Decimal, Decimal, int]]] = {}
    for trade in trades:
        buckets.setdefault(trade[3] - trade[3] % MINUTE_NS, []).append(trade)
    out = []
    for start, group in sorted(buckets.items()):
        prices = [t[1] for t in group]
        out.append((start, prices[0], max(prices), min(prices), prices[-1], sum(t[2] for t in group), len(group),
                    group[0][0], group[-1][0]))
    return out


def stored_candles(run: Settings, symbol: str) -> list[tuple[object, ...]]:
    """Every 1m candle of the stream (final or not), its latest revision, with `is_final` last."""
    return rows(run, "SELECT toUnixTimestamp64Nano(open_ts), open, high, low, close, volume, trades, first_trade_id, "
                     "last_trade_id, is_final FROM candles FINAL WHERE venue = 'binance' AND symbol = '" + symbol
                + "' AND interval = '1m' ORDER BY open_ts")


def test_a_clean_replay_after_hostile_input_stores_exactly_its_candles(infra: Infra, tmp_path: Path) -> None:
    run_id = f"abuse-{uuid.uuid4().hex[:8]}"
    # no lateness: a minute closes once a trade of a later minute arrives, so only the last stays open
    base = infra.settings(candle_lateness_ms=0)
    run = for_run(base, run_id)
    prepare_run(run)
    trades_topic = topics.TRADES.full_name(run.topic_namespace)
    book_topic = topics.BOOK.full_name(run.topic_namespace)
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "infra.cli", "worker", "--run-id", run_id],
                                  env=child_env(base), stdout=out, stderr=subprocess.STDOUT)
    try:
        poison = poison_trade_messages()
        books = poison_book_messages()
        good = [trade_batch(f"[{good_row(i, p, q, ts)}]", symbol='"BTC-USDT"') for i, p, q, ts in GOOD]
        # one burst, good messages between bad ones: they share the sink's batches
        with KafkaPublisher.for_settings(run) as publisher:
            for n, raw in enumerate([*poison.values(), MIXED_MESSAGE]):
                key = b"binance:ETH-USDT" if n % 2 else b"binance:BTC-USDT"  # the replay's stream too
                publisher.publish(trades_topic, key, raw)
                if n % 6 == 0 and good:
                    publisher.publish(trades_topic, b"binance:BTC-USDT", good.pop(0))
            for raw in good:
                publisher.publish(trades_topic, b"binance:BTC-USDT", raw)
            for raw in books.values():
                publisher.publish(book_topic, b"binance:ETH-USDT", raw)
        hostile = Counter([(trades_topic, raw.hex()) for raw in [*poison.values(), MIXED_MESSAGE]]
                          + [(book_topic, raw.hex()) for raw in books.values()])
        def stored_letters() -> object:
            assert worker.poll() is None, log.read_text(errors="replace")[-3000:]  # fail now, not at the deadline
            return scalar(run, "SELECT count() FROM dead_letters FINAL")

        # the hostile input handled before the replay starts: one dead letter stored per message
        wait_for(lambda: stored_letters() == hostile.total(), 120, "one dead letter per hostile message")

        capture, payloads = capture_trades(tmp_path / "capture")
        done = subprocess.run([sys.executable, "-m", "infra.cli", "replay", str(capture), "--run-id", run_id,
                               "--digest", "--quiet", "--timeout", "90"],
                              env=child_env(base), capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr + log.read_text(errors="replace")[-3000:]
        assert worker.poll() is None, log.read_text(errors="replace")[-3000:]

        # the capture: every minute, exact values; the last stays open (no later trade closes it) and unstored
        oracle = minute_candles([(str(t["t"]), Decimal(str(t["p"])), Decimal(str(t["q"])), int(t["T"]) * 10**6)
                                 for t in payloads])
        assert len(payloads) == 6106 and len(oracle) == 7
        # the digest settles on the trades; the candle sink writes its last batch a moment later
        wait_for(lambda: len(stored_candles(run, "ETH-USDT")) >= len(oracle) - 1
                 and len(stored_candles(run, "BTC-USDT")) >= 1, 60, "the last candles stored")
        assert stored_candles(run, "ETH-USDT") == [(*c, 1) for c in oracle[:-1]]
        assert scalar(run, "SELECT count() FROM trades FINAL WHERE symbol = 'ETH-USDT'") == len(payloads)
        assert scalar(run, "SELECT count() FROM trades WHERE symbol = 'ETH-USDT'") == len(payloads)  # none twice
        ids = rows(run, "SELECT trade_id FROM trades FINAL WHERE symbol = 'ETH-USDT'")
        assert {i for (i,) in ids} == {str(t["t"]) for t in payloads}

        # the good messages among the poison: all stored, their closed minute right
        good_trades = [(i, Decimal(p), Decimal(q), ts) for i, p, q, ts in GOOD]
        assert sorted(rows(run, "SELECT trade_id, price, size, toUnixTimestamp64Nano(event_ts) FROM trades FINAL "
                                "WHERE symbol = 'BTC-USDT'")) == good_trades
        good_oracle = minute_candles(good_trades)
        assert stored_candles(run, "BTC-USDT") == [(*good_oracle[0], 1)]

        # nothing from the poison: no other stream, no book, no candle of any interval beyond the two streams
        assert sorted(rows(run, "SELECT DISTINCT venue, symbol FROM trades")) == [("binance", "BTC-USDT"),
                                                                                 ("binance", "ETH-USDT")]
        assert sorted(rows(run, "SELECT DISTINCT venue, symbol FROM candles")) == [("binance", "BTC-USDT"),
                                                                                  ("binance", "ETH-USDT")]
        assert scalar(run, "SELECT count() FROM book_snapshots") == 0
        assert rows(run, "SELECT max(price) FROM trades") == [(Decimal("60020"),)]  # the good messages' highest

        # one dead letter per hostile message, with its bytes, on the topic and in the table
        letters = [dead_letters.decode(raw) for _, _, raw in read_all(run.kafka_bootstrap,
                                                                       topics.DEAD_LETTER.full_name(run.topic_namespace))]
        assert Counter((d.source, d.raw_hex) for d in letters) == hostile
        assert scalar(run, "SELECT count() FROM dead_letters FINAL") == hostile.total()
        assert worker.poll() is None
    finally:
        worker.terminate()
        assert worker.wait(timeout=60) == 0, log.read_text(errors="replace")[-3000:]
