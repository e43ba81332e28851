"""The consumers' contract (schemas/contract.py, docs/gen_contract.py): the committed JSON Schemas
and AsyncAPI document are what the generator writes today; the AsyncAPI document parses with a
real AsyncAPI 3 parser (asyncapi-python) and names every declared topic and WebSocket channel;
the published schemas accept the hand-written messages of the codec tests and what the codecs
encode, and refuse each other's messages and malformed values."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest
import yaml
from asyncapi_python_codegen.parser import extract_all_operations

from api.ws.protocol import CHANNELS
from schemas import topics
from schemas.book_ticker import BookTicker
from schemas.codecs import book, trades
from schemas.contract import WS_CHANNELS
from schemas.events import Side, Trade
from tests.unit.test_codecs_events import CANDLE, MODELS, SAMPLES

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas" / "jsonschema"


def validator(spec: topics.TopicSpec) -> Any:
    return jsonschema_rs.validator_for(json.loads((SCHEMA_DIR / f"{spec.name}.json").read_text()))


def test_the_committed_contract_matches_the_declarations() -> None:
    proc = subprocess.run(
        [sys.executable, "docs/gen_contract.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_topic_has_a_schema_file_and_nothing_else_does() -> None:
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == {f"{s.name}.json" for s in topics.ALL_TOPICS}


def test_the_asyncapi_document_parses_and_covers_every_topic_and_websocket_channel() -> None:
    operations = extract_all_operations(ROOT / "docs" / "asyncapi.yaml")
    addresses = {op.channel.address for op in operations.values()}
    assert {spec.name for spec in topics.ALL_TOPICS} | {"/ws/market"} == addresses
    document = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert document["asyncapi"] == "3.0.0"
    for spec in topics.ALL_TOPICS:
        channel = document["channels"][spec.name.replace(".", "_")]
        kafka = channel["bindings"]["kafka"]
        assert kafka["partitions"] == spec.partitions
        assert kafka["topicConfiguration"]["retention.ms"] == (spec.retention_ms or -1)
        assert f"Key: `{spec.key}`" in channel["description"] and "Ordered per key" in channel["description"]
    ws = document["channels"]["ws_market"]["messages"]
    assert set(ws) - {"request"} == set(CHANNELS) == set(WS_CHANNELS)  # the server's channels, no more


def trade_batch() -> bytes:
    rows = [
        Trade(
            venue="binance",
            symbol="BTC-USDT",
            trade_id=str(i),
            price=Decimal("60000.5"),
            size=Decimal("0.1"),
            side=Side.BUY,
            event_ts_ns=10**18 + i,
            recv_ts_ns=10**18 + i + 5,
        )
        for i in range(3)
    ]
    return trades.encode("binance", "BTC-USDT", rows)


def ticker_batch() -> bytes:
    ticker = BookTicker(
        venue="binance",
        symbol="BTC-USDT",
        event_ts_ns=10**18,
        recv_ts_ns=10**18,
        update_id=7,
        bid_price=Decimal("1"),
        bid_size=Decimal("2"),
        ask_price=Decimal("1.5"),
        ask_size=Decimal("3"),
    )
    return book.encode_ticker_batch("binance", "BTC-USDT", [ticker])


# Hand-written messages of the codec tests (the raw topics' legacy `schema` key left out: the
# schemas describe what producers write now), what the codecs encode, and the raw batches.
CURRENT = [(spec, raw) for spec, raw in SAMPLES if b'"schema":' not in raw]
ENCODED = [
    (spec, codec.encode(model))
    for codec, _, model in MODELS
    for spec in topics.ALL_TOPICS
    if model.schema_version in spec.value_schema.split(" | ")
]
RAW = [(topics.TRADES, trade_batch()), (topics.BOOK, ticker_batch())]
VALID = CURRENT + ENCODED + RAW


@pytest.mark.parametrize(("spec", "raw"), VALID, ids=[f"{s.name}-{i}" for i, (s, _) in enumerate(VALID)])
def test_a_topics_messages_satisfy_its_schema_and_no_other_format(spec: topics.TopicSpec, raw: bytes) -> None:
    value = orjson.loads(raw)
    errors = [e.message for e in validator(spec).iter_errors(value)]
    assert errors == []
    for other in topics.ALL_TOPICS:
        if other.value_schema != spec.value_schema:
            assert not validator(other).is_valid(value), other.name


@pytest.mark.parametrize(
    "change",
    [
        {"open": 2683.8},  # decimals travel as strings, never as floats
        {"schema_version": "candle.v2"},
        {"interval": "2m"},
        {"symbol": "eth-usdt"},
        {"trades": 0},
    ],
    ids=["float-price", "other-version", "unknown-interval", "lower-case-symbol", "no-trades"],
)
def test_a_malformed_candle_is_refused(change: dict[str, Any]) -> None:
    check = validator(topics.CANDLES["1m"])
    assert check.is_valid(CANDLE)
    assert not check.is_valid({**CANDLE, **change})
    assert not check.is_valid({k: v for k, v in CANDLE.items() if k != "close"})


def test_a_trade_row_must_have_its_six_fields() -> None:
    value = orjson.loads(trade_batch())
    check = validator(topics.TRADES)
    assert check.is_valid(value)
    value["trades"][0] = value["trades"][0][:5]
    assert not check.is_valid(value)
