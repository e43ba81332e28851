"""examples/consume_candles_and_risk.py against the embedded broker, run as a user runs it (a
separate process that imports nothing of the engine): final 1m candles and risk estimates are
printed, a candle still open is not, and a value off its published schema is skipped and
reported. Only the broker is started (no database, no worker): the messages are produced here
with the engine's own encoders, as the candles and risk agents publish them."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from infra.cli.topics import create_topics
from infra.dev.broker import start_tansu
from infra.dev.processes import free_port
from schemas import topics
from schemas.codecs import candles, risk
from schemas.events import Candle, Interval
from schemas.risk import RiskEstimate, RiskMethod
from streams.ingest.publisher import KafkaPublisher

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_723_161_600 * 10**9
HEAD = {"venue": "binance", "symbol": "BTC-USDT", "recv_ts_ns": T0 + 61 * 10**9}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_tansu(port, log=tmp_path_factory.mktemp("example") / "tansu.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def candle(minute: int, close: str, final: bool) -> Candle:
    open_ns = T0 + minute * 60 * 10**9
    return Candle(
        **HEAD,
        event_ts_ns=open_ns + 59 * 10**9,
        interval=Interval.M1,
        open_ts_ns=open_ns,
        open=Decimal("60000"),
        high=Decimal("60100"),
        low=Decimal("59900"),
        close=Decimal(close),
        volume=Decimal("1.5"),
        trades=3,
        first_trade_id="1",
        last_trade_id="3",
        revision=0,
        is_final=final,
    )


def test_the_example_prints_final_candles_and_risk_and_skips_what_breaks_the_schema(broker: str) -> None:
    namespace = f"ex-{uuid.uuid4().hex[:8]}."
    create_topics(broker, namespace, (topics.CANDLES["1m"], topics.RISK), with_config=False)
    estimate = RiskEstimate(
        **HEAD,
        event_ts_ns=T0,
        interval=Interval.H1,
        method=RiskMethod.EWMA,
        price=Decimal("60000"),
        var_95=Decimal("812.5"),
        expected_shortfall=Decimal("1015.25"),
        volatility=Decimal("0.62"),
        window=720,
    )
    key = b"binance:BTC-USDT"
    candle_topic, risk_topic = topics.CANDLES["1m"].full_name(namespace), topics.RISK.full_name(namespace)
    with KafkaPublisher(broker) as out:
        out.publish(candle_topic, key, candles.encode(candle(0, "60050", final=True)))
        out.publish(candle_topic, key, candles.encode(candle(1, "60060", final=False)))  # still open: not printed
        out.publish(candle_topic, key, b'{"schema_version": "candle.v1", "venue": "binance"}')  # off the schema
        out.publish(candle_topic, key, candles.encode(candle(1, "60070", final=True)))
        out.publish(risk_topic, key, risk.encode(estimate))

    done = subprocess.run(
        [
            sys.executable,
            "examples/consume_candles_and_risk.py",
            "--bootstrap",
            broker,
            "--namespace",
            namespace,
            "--group",
            f"example-{namespace}",
            "--max-messages",
            "3",
            "--idle-timeout",
            "20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    # one partition per key: the candles in order; the risk topic interleaves anywhere
    assert [line for line in lines if line["topic"] == "md.candles.1m.v1"] == [
        {
            "topic": "md.candles.1m.v1",
            "key": "binance:BTC-USDT",
            "open_ts_ns": T0,
            "close": "60050",
            "volume": "1.5",
            "trades": 3,
        },
        {
            "topic": "md.candles.1m.v1",
            "key": "binance:BTC-USDT",
            "open_ts_ns": T0 + 60 * 10**9,
            "close": "60070",
            "volume": "1.5",
            "trades": 3,
        },
    ]
    assert [line for line in lines if line["topic"] == "an.risk.v1"] == [
        {
            "topic": "an.risk.v1",
            "key": "binance:BTC-USDT",
            "method": "ewma",
            "interval": "1h",
            "var_95": "812.5",
            "expected_shortfall": "1015.25",
        },
    ]
    assert "skipped md.candles.1m.v1 binance:BTC-USDT:" in done.stderr
