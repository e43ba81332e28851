"""The one-event-per-message codecs (candles, book top, quality, dead letters, risk, predictions,
portfolio) and the registry from topic to codec. Oracles are hand-written JSON messages."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pytest

from schemas import topics
from schemas.codecs import book_top, candles, dead_letters, portfolio, predictions, quality, risk, vwap
from schemas.codecs.envelope import WireError
from schemas.codecs.registry import CODECS, codec_for
from schemas.events import BookSnapshot, Candle, DeadLetter, Interval, QualityEvent, QualityKind
from schemas.portfolio import OpenPosition, PositionType
from schemas.prediction import Horizon, ModelStatus, Prediction, PredictionModel, PredictionOutcome, Scores
from schemas.risk import RiskEstimate, RiskMethod
from schemas.vwap import Vwap

D = Decimal
HEAD = {"venue": "binance", "symbol": "ETH-USDT", "event_ts_ns": 1_723_161_299_990_000_000,
        "recv_ts_ns": 1_723_161_300_000_000_000}
EMPTY_SCORES = {"scored": 0, "mae": None, "mae_naive": None, "skill": None, "r2": None, "hit_rate": None,
                "up_rate": None, "mean_confidence": None, "calibration_error": None}

CANDLE = {**HEAD, "schema_version": "candle.v1", "interval": "1m", "open_ts_ns": 1_723_161_240_000_000_000,
          "open": "2683.8", "high": "2690", "low": "2680.5", "close": "2689.99", "volume": "12.5", "trades": 7,
          "first_trade_id": "42", "last_trade_id": "48", "revision": 1, "is_final": True}
SNAPSHOT = {**HEAD, "schema_version": "book_snapshot.v1", "last_update_id": 99,
            "bids": [["2683.8", "1.5"], ["2683.7", "2"]], "asks": [["2683.81", "0.25"]]}
QUALITY = {**HEAD, "schema_version": "quality.v1", "kind": "book_gap", "detail": {"expected": 10, "got": 12}}
DEAD = {"schema_version": "dead_letter.v1", "venue": "binance", "symbol": None, "source": "md.trades.v1",
        "error": "not JSON", "raw_hex": "7b67", "recv_ts_ns": 5}
RISK = {**HEAD, "schema_version": "risk_estimate.v1", "interval": "1h", "method": "ewma", "price": "2689.99",
        "var_95": "81.123456789", "expected_shortfall": "101.5", "volatility": "0.62", "window": 720}
PREDICTION = {**HEAD, "schema_version": "prediction.v1", "interval": "1m", "model": "ensemble",
              "model_version": "m1", "features_version": "f1", "horizon": "1h",
              "target_ts_ns": 1_723_164_900_000_000_000, "price": "2689.99", "prediction": "2690.5",
              "log_return": 0.0002, "raw_log_return": 0.0004, "direction": 1, "confidence": 0.55,
              "status": "ready", "remaining_candles": 0, "scores": EMPTY_SCORES, "recent_scores": EMPTY_SCORES}
OUTCOME = {**HEAD, "schema_version": "prediction_outcome.v1", "interval": "1m", "model": "lstm", "horizon": "4h",
           "as_of_ns": 1_723_147_500_000_000_000, "price": "2650", "realised_price": "2689.99",
           "realised_log_return": 0.015, "log_return": 0.01, "direction": 1, "confidence": 0.6, "hit": True}
VWAP = {**HEAD, "schema_version": "vwap.v1", "window_minutes": 15, "vwap": "2688.125", "volume": "120.5",
        "candles": 14}

MODELS: list[tuple[Any, dict[str, Any], Any]] = [
    (candles, CANDLE, Candle(**{**HEAD, "interval": Interval.M1, "open_ts_ns": 1_723_161_240_000_000_000,
                                "open": D("2683.8"), "high": D("2690"), "low": D("2680.5"), "close": D("2689.99"),
                                "volume": D("12.5"), "trades": 7, "first_trade_id": "42", "last_trade_id": "48",
                                "revision": 1, "is_final": True})),
    (book_top, SNAPSHOT, BookSnapshot(**HEAD, last_update_id=99, bids=((D("2683.8"), D("1.5")), (D("2683.7"), D("2"))),
                                      asks=((D("2683.81"), D("0.25")),))),
    (quality, QUALITY, QualityEvent(**HEAD, kind=QualityKind.BOOK_GAP, detail={"expected": 10, "got": 12})),
    (dead_letters, DEAD, DeadLetter(venue="binance", symbol=None, source="md.trades.v1", error="not JSON",
                                    raw_hex="7b67", recv_ts_ns=5)),
    (risk, RISK, RiskEstimate(**HEAD, interval=Interval.H1, method=RiskMethod.EWMA, price=D("2689.99"),
                              var_95=D("81.123456789"), expected_shortfall=D("101.5"), volatility=D("0.62"),
                              window=720)),
    (predictions, PREDICTION, Prediction(**HEAD, interval=Interval.M1, model=PredictionModel.ENSEMBLE,
                                         model_version="m1", features_version="f1", horizon=Horizon.H1,
                                         target_ts_ns=1_723_164_900_000_000_000, price=D("2689.99"),
                                         prediction=D("2690.5"), log_return=0.0002, raw_log_return=0.0004,
                                         direction=1, confidence=0.55, status=ModelStatus.READY,
                                         remaining_candles=0, scores=Scores(**EMPTY_SCORES),
                                         recent_scores=Scores(**EMPTY_SCORES))),
    (predictions, OUTCOME, PredictionOutcome(**HEAD, interval=Interval.M1, model=PredictionModel.LSTM,
                                             horizon=Horizon.H4, as_of_ns=1_723_147_500_000_000_000, price=D("2650"),
                                             realised_price=D("2689.99"), realised_log_return=0.015, log_return=0.01,
                                             direction=1, confidence=0.6, hit=True)),
    (vwap, VWAP, Vwap(**HEAD, window_minutes=15, vwap=D("2688.125"), volume=D("120.5"), candles=14)),
]
IDS = [m[1]["schema_version"] for m in MODELS]


@pytest.mark.parametrize(("codec", "message", "model"), MODELS, ids=IDS)
def test_event_codecs_round_trip_the_hand_written_message(codec: Any, message: dict[str, Any], model: Any) -> None:
    raw = orjson.dumps(message)
    assert codec.decode(raw) == model
    assert orjson.loads(codec.encode(model)) == message


@pytest.mark.parametrize(("codec", "message", "model"), MODELS, ids=IDS)
def test_event_codecs_refuse_a_message_that_does_not_name_their_format(codec: Any, message: dict[str, Any],
                                                                       model: Any) -> None:
    version = message["schema_version"]
    without = {k: v for k, v in message.items() if k != "schema_version"}
    for bad in (
        without,  # the model alone would fill in its default
        {**without, "schema": version},  # the old key is accepted on raw batches only
        {**message, "schema_version": "trade_batch.v1"},
        {**message, "schema_version": version.replace(".v1", ".v2")},
    ):
        with pytest.raises(WireError):
            codec.decode(orjson.dumps(bad))


@pytest.mark.parametrize(("codec", "message", "model"), MODELS, ids=IDS)
def test_event_codecs_refuse_invalid_fields_and_garbage(codec: Any, message: dict[str, Any], model: Any) -> None:
    with pytest.raises(WireError):
        codec.decode(orjson.dumps({**message, "unknown_field": 1}))
    with pytest.raises(WireError):
        codec.decode(orjson.dumps({**message, "recv_ts_ns": -1}))
    for garbage in (b"{garbage", b"[]", b"null"):
        with pytest.raises(WireError):
            codec.decode(garbage)


def test_an_event_codec_encodes_only_its_own_model() -> None:
    with pytest.raises(TypeError):
        candles.encode(MODELS[2][2])  # a quality event


def test_candle_fields_are_the_message_checked_for_its_format_only() -> None:
    assert candles.decode_fields(orjson.dumps(CANDLE)) == CANDLE
    with pytest.raises(WireError):
        candles.decode_fields(orjson.dumps(SNAPSHOT))


def test_candles_table_orders_revisions_final_last() -> None:
    draft = {**CANDLE, "revision": 1, "is_final": False}
    table = candles.table([CANDLE, draft, {**CANDLE, "revision": 0, "is_final": False}])
    assert table.column("version").to_pylist() == [3, 2, 0]  # revision * 2 + is_final
    assert table.column("close").to_pylist() == [D("2689.99")] * 3
    assert table.column("open_ts").cast(pa.int64()).to_pylist() == [CANDLE["open_ts_ns"]] * 3


def test_book_snapshots_table_keeps_levels_best_first() -> None:
    table = book_top.table([book_top.decode(orjson.dumps(SNAPSHOT))], depth=20)
    assert table.column("bid_prices").to_pylist() == [[D("2683.8"), D("2683.7")]]
    assert table.column("bid_sizes").to_pylist() == [[D("1.5"), D("2")]]
    assert table.column("ask_prices").to_pylist() == [[D("2683.81")]]
    assert table.column("depth").to_pylist() == [20]


def test_quality_rows_of_one_event_share_an_id_and_other_events_do_not() -> None:
    event = quality.decode(orjson.dumps(QUALITY))
    other = quality.decode(orjson.dumps({**QUALITY, "detail": {"expected": 10, "got": 13}}))
    ids = quality.table([event, event, other]).column("event_id").to_pylist()
    assert ids[0] == ids[1] != ids[2]


def test_risk_rows_round_computed_amounts_to_the_store_scale() -> None:
    table = risk.table([risk.decode(orjson.dumps(RISK))])
    assert table.column("var_95").to_pylist() == [D("81.12345679")]  # 81.123456789 half-even to 8 places


def test_predictions_decode_dispatches_on_the_format() -> None:
    assert isinstance(predictions.decode(orjson.dumps(PREDICTION)), Prediction)
    assert isinstance(predictions.decode(orjson.dumps(OUTCOME)), PredictionOutcome)
    with pytest.raises(WireError, match="expected one of"):
        predictions.decode(orjson.dumps(CANDLE))
    outcome = predictions.decode(orjson.dumps(OUTCOME))
    assert isinstance(outcome, PredictionOutcome)
    assert predictions.outcomes_table([outcome]).column("hit").to_pylist() == [1]


OPEN = {"account": "alice", "command_id": "c1", "kind": "open_position", "symbol": "ETH-USDT", "type": "long",
        "size": "0.5", "leverage": "10", "price": "2689.99", "price_ts_ns": 1, "idempotency_key": None,
        "request_hash": "", "issued_ts_ns": 2}
OPENED = {"account": "alice", "command_id": "c1", "seq": 2, "ts_ns": 2, "kind": "position_opened",
          "position_id": "p1", "symbol": "ETH-USDT", "type": "long", "size": "0.5", "leverage": "10",
          "entry_price": "2689.99", "margin": "134.4995", "idempotency_key": None, "request_hash": ""}


def test_portfolio_codec_round_trips_commands_and_events() -> None:
    command = portfolio.decode_command(orjson.dumps(OPEN))
    assert command == OpenPosition(account="alice", command_id="c1", symbol="ETH-USDT", type=PositionType.LONG,
                                   size=D("0.5"), leverage=D("10"), price=D("2689.99"), price_ts_ns=1,
                                   issued_ts_ns=2)
    # written before the envelope key existed (pf.events.v1 keeps such events forever): still read;
    # written now: with the key, like every other format
    assert orjson.loads(portfolio.encode_command(command)) == {**OPEN, "schema_version": "portfolio_command.v1"}
    event = portfolio.decode_event(orjson.dumps(OPENED))
    assert orjson.loads(portfolio.encode_event(event)) == {**OPENED, "schema_version": "portfolio_event.v1"}
    assert portfolio.decode_event(portfolio.encode_event(event)) == event
    with pytest.raises(WireError):  # a command's key on an event
        portfolio.decode_event(orjson.dumps({**OPENED, "schema_version": "portfolio_command.v1"}))
    for bad in (b"{garbage", orjson.dumps({**OPEN, "kind": "nope"}), orjson.dumps(OPEN)):
        with pytest.raises(WireError):
            portfolio.decode_event(bad)


def test_portfolio_events_table_skips_what_does_not_decode() -> None:
    table = portfolio.events_table([orjson.dumps(OPENED), b"{garbage", b"\xff"])
    assert table.column("seq").to_pylist() == [2]
    assert orjson.loads(table.column("body").to_pylist()[0]) == OPENED


# --- the registry -------------------------------------------------------------------------------


def test_every_declared_topic_has_one_codec_whose_formats_it_declares() -> None:
    assert set(CODECS) == {spec.name for spec in topics.ALL_TOPICS}
    for spec in topics.ALL_TOPICS:
        assert codec_for(spec).formats == tuple(spec.value_schema.split(" | ")), spec.name


SAMPLES: list[tuple[topics.TopicSpec, bytes]] = [
    (topics.TRADES, b'{"schema_version":"trade_batch.v1","venue":"v","symbol":"A-B","trades":[]}'),
    (topics.BOOK, b'{"schema":"book_ticker_batch.v1","venue":"v","symbol":"A-B","tickers":[]}'),
    (topics.CANDLES["1d"], orjson.dumps(CANDLE)),
    (topics.BOOK_TOP, orjson.dumps(SNAPSHOT)),
    (topics.RISK, orjson.dumps(RISK)),
    (topics.PREDICTIONS, orjson.dumps(OUTCOME)),
    (topics.PF_COMMANDS, orjson.dumps(OPEN)),
    (topics.PF_EVENTS, orjson.dumps(OPENED)),
    (topics.VWAP, orjson.dumps(VWAP)),
    (topics.QUALITY, orjson.dumps(QUALITY)),
    (topics.DEAD_LETTER, orjson.dumps(DEAD)),
]


@pytest.mark.parametrize(("spec", "raw"), SAMPLES, ids=[s.name for s, _ in SAMPLES])
def test_a_topics_codec_decodes_its_messages_and_refuses_the_others(spec: topics.TopicSpec, raw: bytes) -> None:
    codec = codec_for(spec.full_name("replay-1."), namespace="replay-1.")
    assert codec is codec_for(spec.name)
    codec.decode(raw)
    for other, other_raw in SAMPLES:
        if codec_for(other) is not codec and other.key == spec.key:
            with pytest.raises(WireError):
                codec.decode(other_raw)


def test_an_undeclared_topic_has_no_codec() -> None:
    with pytest.raises(KeyError):
        codec_for("md.nothing.v1")
