"""Write docs/topics.md from the declarations themselves: `schemas/topics.py` (names, partitions,
retention, compaction, keys) and the event models in `schemas/` (fields, types, defaults, and
the comment written beside each field).

    .venv/bin/python docs/gen_topics.py            # rewrite docs/topics.md
    .venv/bin/python docs/gen_topics.py --check    # exit 1 if docs/topics.md is out of date

What no declaration says (who writes and who reads a topic, the batch wire formats of the raw
topics) is written here, next to the generator, so the page is rebuilt whole every time.
Documentation tooling only: nothing in the engine imports this file.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import textwrap
import types
import typing
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas import topics
from schemas.book_ticker import BookTicker
from schemas.codecs.envelope import EventCodec
from schemas.codecs.registry import CODECS
from schemas.codecs.trades import TradeRow
from schemas.events import BookDelta, BookSnapshot, QualityKind
from schemas.portfolio import (
    AccountOpened,
    BalanceSet,
    ClosePosition,
    CloseRejected,
    OpenPosition,
    PositionClosed,
    PositionOpened,
    PositionRejected,
    RequestReplayed,
    SetBalance,
)
from schemas.prediction import Scores

OUT = Path(__file__).resolve().parent / "topics.md"
CANDLES = "md.candles.{" + ",".join(topics.CANDLES) + "}.v1"  # the four candle topics, one entry

# Who writes and who reads each topic: wiring, which no declaration records.
FLOW: dict[str, tuple[str, str]] = {
    topics.TRADES.name: (
        "feeds: `entasis replay`, `entasis simulate`, `entasis connect` (streams/ingest/)",
        "candles agent, trade sink, API (WebSocket fan-out, read model)",
    ),
    topics.BOOK.name: ("feeds: replay (diffs, snapshots, tickers), live connectors (top-N snapshots)", "book agent"),
    CANDLES: ("candles agent", "candle sink, risk agent, prediction agent, VWAP agent (1m only)"),
    topics.BOOK_TOP.name: ("book agent", "API (WebSocket fan-out), prediction agent (book imbalance)"),
    topics.RISK.name: ("risk agent (which also stores `risk_estimates`)", "external consumers"),
    topics.PREDICTIONS.name: ("prediction agent (which also stores `predictions`)", "external consumers"),
    topics.PF_COMMANDS.name: ("API (`POST`/`DELETE /portfolio/positions`), signed with the API's key",
                              "portfolio agent"),
    topics.PF_ADMIN.name: ("`entasis portfolio set-balance` (an operator), signed with the admin key",
                           "portfolio agent"),
    topics.PF_EVENTS.name: ("portfolio agent", "portfolio event sink, API read model, `entasis portfolio rebuild`"),
    topics.VWAP.name: ("VWAP agent (which also stores `vwap`)", "external consumers"),
    topics.QUALITY.name: ("candles agent, book agent, stale-feed monitor, live connectors", "quality sink"),
    topics.DEAD_LETTER.name: ("every agent and feed that meets bytes it cannot decode", "dead-letter sink"),
}

# Models of the formats whose codec is not one event per message (EventCodec): the raw batches'
# items and the portfolio messages. Every other topic's models are read from its codec module.
TOPIC_MODELS: dict[str, list[type]] = {
    topics.TRADES.name: [TradeRow],
    topics.BOOK.name: [BookDelta, BookSnapshot, BookTicker],
    topics.PF_COMMANDS.name: [OpenPosition, ClosePosition],
    topics.PF_ADMIN.name: [SetBalance],
    topics.PF_EVENTS.name: [
        AccountOpened, BalanceSet, PositionOpened, PositionRejected, PositionClosed, CloseRejected, RequestReplayed,
    ],
    topics.PREDICTIONS.name: [Scores],  # nested in prediction.v1, after the codec's own models
}

# Meanings of fields that carry no comment in their model (the model's comment wins where both exist).
NOTES: dict[str, str] = {
    "venue": "`binance`, `binance-usdm`, `binance-coinm` (replays), `coinbase`, `kraken`, `sim` (simulated)",
    "symbol": "`BASE-QUOTE`, upper case",
    "first_update_id": "Binance `U`: first update id in this diff",
    "last_update_id": "Binance `u`: last update id in this diff",
    "BookSnapshot.last_update_id": "the last update id the book includes",
    "prev_update_id": "futures `pu`: the previous diff's `u`; null on spot",
    "bids": "best first",
    "asks": "best first",
    "update_id": "in the same sequence as the depth diffs' `U`/`u`",
    "open_ts_ns": "the bucket's open time (exchange event time)",
    "trades": "number of trades in the candle",
    "first_trade_id": "first trade by event time",
    "last_trade_id": "last trade by event time",
    "revision": "0 at the first emission, +1 for each late trade within the grace period",
    "is_final": "no later revision of this candle will come",
    "var_95": "one-day 95 % value at risk, positive loss, quote currency",
    "expected_shortfall": "one-day 95 % expected shortfall, positive loss, quote currency",
    "volatility": "annualised over 365 days, a fraction",
    "model_version": "changes when a model's definition changes",
    "features_version": "feature set, e.g. `f1`",
    "target_ts_ns": "`event_ts_ns` + horizon: when the forecast is realised",
    "price": "the price the amounts or the forecast refer to",
    "prediction": "forecast price at `target_ts_ns`",
    "direction": "the forecast's side: 1 up, −1 down",
    "confidence": "calibrated probability that the price ends strictly on `direction`'s side",
    "status": "only `ready` forecasts are served",
    "remaining_candles": "closed candles still needed before `ready`",
    "as_of_ns": "the forecast's as-of time",
    "realised_price": "the close at the target time",
    "realised_log_return": "ln(realised_price / price)",
    "kind": "which message this is",
    "QualityEvent.kind": "what happened (list above)",
    "DeadLetter.venue": "what the source claimed, when it claimed anything",
    "DeadLetter.symbol": "what the source claimed, when it claimed anything",
    "OpenPosition.price": "the latest trade price when the API accepted the request",
    "Prediction.price": "the close at the as-of time",
    "PredictionOutcome.price": "the close at the forecast's as-of time",
    "PredictionOutcome.log_return": "the forecast's served log return",
    "PredictionOutcome.confidence": "the forecast's confidence",
    "detail": "what is known about it: ids, counts, reasons",
    "error": "why it could not be decoded",
    "raw_hex": "the bytes as received, hex (a live connector keeps the first 64 KiB)",
    "recv_ts_ns": "when our ingest received it",
    "account": "the JWT `sub` / API key's account; the topic key",
    "price_ts_ns": "event time of the trade `price` comes from",
    "issued_ts_ns": "the issuer's clock when the command was written; stamps the resulting events",
    "ts_ns": "the causing command's `issued_ts_ns` (never the agent's clock)",
    "idempotency_key": "the request's `Idempotency-Key` header",
    "position_id": "assigned by the agent when the position opens",
    "code": "the API error code this rejection stands for",
    "details": "the error's `details` for the API",
    "balance": "cash balance, quote currency",
    "max_open_positions": "limit on open positions",
    "max_symbol_notional": "limit on open notional per symbol, quote currency",
    "entry_price": "the latest trade price when the position opened",
    "exit_price": "the latest trade price when the position closed",
    "leverage": "1 to 100",
    "size": "base-asset amount, > 0",
    "type": "`long` or `short`",
    "mean_confidence": "mean `confidence` of the scored forecasts",
    "scored": "forecasts whose horizon has passed",
    "window_minutes": "the window's length in minutes",
    "vwap": "volume-weighted average of the candles' typical prices, quote currency",
}

# What a reader of one topic must know beyond its fields.
TOPIC_NOTES: dict[str, str] = {
    CANDLES: (
        "One candle per message, by exchange event time, per venue and symbol. A window closes when "
        "the watermark (max event time seen minus `ENTASIS_CANDLE_LATENESS_MS`) passes its end, or "
        "after `ENTASIS_CANDLE_IDLE_TIMEOUT_S` of wall time on a quiet stream. A trade for an emitted "
        "window within `ENTASIS_CANDLE_GRACE_MS` emits the candle again with `revision` + 1; a trade "
        "for a final window is a `late_trade` quality event instead. The store keeps the newest "
        "revision (`version = revision * 2 + is_final`). Minutes without trades have no candle."
    ),
    topics.BOOK_TOP.name: (
        "The top `ENTASIS_BOOK_TOP_DEPTH` levels (default 20, at most 100) of a valid book, published "
        "when they change, at most once per `ENTASIS_BOOK_MIN_INTERVAL_MS` (100) of event time per "
        "symbol; the last change is always published. Nothing is published from an invalid book "
        "(after a `book_gap`, until the next snapshot resyncs it)."
    ),
    topics.RISK.name: (
        "One message per method for every final candle of the configured intervals (`ENTASIS_RISK_*`); "
        "none before the warm-up (`ENTASIS_RISK_MIN_DAYS`). Also stored in `risk_estimates`."
    ),
    topics.PREDICTIONS.name: (
        "Two schemas on one topic: a `prediction.v1` per model and horizon at every final candle of "
        "`ENTASIS_PREDICT_INTERVAL`, and a `prediction_outcome.v1` when a forecast's horizon has "
        "passed. Stored in `predictions` and `prediction_outcomes` (view `prediction_audit`)."
    ),
    topics.PF_COMMANDS.name: (
        "`kind` tells the two orders apart. Commands are requests, not facts: the agent decides "
        "each against the account's state and answers on `pf.events.v1`. Each carries the API's "
        "HMAC-SHA256 in the `entasis-signature` header (ENTASIS_PORTFOLIO_SIGNING_KEY); the agent "
        "decides nothing unsigned, and refuses a `set_balance` here whoever signed it."
    ),
    topics.PF_ADMIN.name: (
        "An operator's commands: `set_balance` only, signed with ENTASIS_PORTFOLIO_ADMIN_KEY (header "
        "`entasis-signature`, its own domain), a key the API does not hold. As many partitions as "
        "`pf.commands.v1`, so Faust gives one worker both topics' partition of an account "
        "(co-partitioning); a balance change is decided between the account's orders, in arrival order."
    ),
    topics.PF_EVENTS.name: (
        "The source of truth of every position and balance: kept forever, never compacted; positions "
        "and balances are a fold over this topic (streams/core/portfolio.py), so a restarted worker "
        "or API process rebuilds from it. `seq` numbers an account's events 1, 2, ... so a reader can "
        "tell a gap or a duplicate. Projected into ClickHouse as `portfolio_events`."
    ),
    topics.QUALITY.name: (
        "`book_gap`/`book_resync` (book agent; live connectors), `late_trade`/`duplicate_trade` "
        "(candles agent), `stale_feed`/`feed_connected` (the worker's stale-feed monitor), "
        "`feed_disconnected`/`feed_stale`/`trade_gap`/`feed_connected` (live connectors). `malformed` "
        "is declared but not emitted: malformed input goes to `md.deadletter.v1`. The API answers "
        "MARKET_002 for a stream whose latest of `stale_feed`/`feed_disconnected`/`feed_stale`/"
        "`feed_connected` is a down kind with no trade since."
    ),
    topics.DEAD_LETTER.name: (
        "The key is `source` (the topic or file the bytes came from); a live connector keys its "
        "dead letters by venue. A dead letter never stops a worker or a feed."
    ),
}

HEADER = """# Topics

Generated by `docs/gen_topics.py` from `schemas/topics.py`, the topics' codecs
(`schemas/codecs/`) and the event models in `schemas/`; edit those (or the prose in the
generator), then run `.venv/bin/python docs/gen_topics.py`.

Every topic is declared once in `schemas/topics.py` and created up front by
`entasis topics create` (or `entasis up`); nothing relies on auto-creation, and the worker runs
Faust with `topic_allow_declare=False`, so no hidden topic appears either. Each topic has one
codec (`schemas/codecs/registry.py`), the only place its value format is encoded and decoded.
`v1` in a name is the version of the value's format: an incompatible change gets a new topic,
never a silent new shape. Under `ENTASIS_TOPIC_NAMESPACE` (e.g. `replay-1.`) every name gets that
prefix, so a replay never mixes with live data.

## Ordering

Kafka orders messages within a partition only. Every market-data and analytics topic is keyed
`venue:symbol` (`schemas.symbols.stream_key`), so all events of one stream (one venue, one symbol)
are in one partition, in the order they were produced; two streams are not ordered with respect
to each other. Portfolio topics are keyed by account, so one account's commands are decided in
order by one agent and its events stay in order. `md.quality.v1` and `md.deadletter.v1` have a
single partition: every event on them is in one total order.

Producers publish with `acks=all` and without Kafka's idempotent producer (the embedded broker
has none): a retried send can duplicate a message. Consumers are written for that: sinks are
idempotent (ReplacingMergeTree keyed by the event's identity), the candles agent drops
re-delivered trades by id, the portfolio events carry a per-account `seq`. See
docs/decisions.md, "Idempotent sinks".

## Values

Every value is a JSON object (encoded with orjson). It names its format under
`schema_version`, except the portfolio messages, which are told apart by `kind`. Decimals are
strings (`"2683.80000000"`), never floats; times are integer nanoseconds since the Unix epoch;
`event_ts_ns` is the exchange's event time and `recv_ts_ns` when our ingest received the input
(for analytics: the receive time of the candle that caused the event, never the wall clock, so
a replay produces byte-identical events).

The raw topics (`md.trades.v1`, `md.book.v1`) carry a batch of one stream's events per message,
because a Kafka message costs Faust about the same whatever the agent does (docs/architecture.md,
"Measured facts"): one exchange frame, or up to 100 trades of one stream within 50 ms of event
time (`streams/core/batching.py`). Every other topic carries one event per message.

## Every topic

"""


def retention(spec: topics.TopicSpec) -> str:
    if spec.retention_ms is None:
        return "forever"
    days, rest = divmod(spec.retention_ms, topics.DAY_MS)
    return f"{days} d" if not rest else f"{spec.retention_ms} ms"


def grouped_topics() -> list[tuple[str, topics.TopicSpec]]:
    """Every topic once, the four candle topics as one entry (they differ only in interval)."""
    shown: list[tuple[str, topics.TopicSpec]] = []
    for spec in topics.ALL_TOPICS:
        if spec in topics.CANDLES.values():
            if any(name == CANDLES for name, _ in shown):
                continue
            shown.append((CANDLES, spec))
        else:
            shown.append((spec.name, spec))
    return shown


def flow(name: str) -> tuple[str, str]:
    if name not in FLOW:
        print(f"warning: docs/gen_topics.py has no FLOW entry for {name}", file=sys.stderr)
        return ("?", "?")
    return FLOW[name]


def topic_rows() -> list[str]:
    rows = [
        "| topic | partitions | retention | cleanup | key | value | written by | read by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in grouped_topics():
        writer, reader = flow(name)
        cleanup = "compact" if spec.compacted else "delete"
        value = spec.value_schema.replace("|", "\\|")
        rows.append(f"| `{name}` | {spec.partitions} | {retention(spec)} | {cleanup} | `{spec.key}` "
                    f"| {value} | {writer} | {reader} |")
    return rows


def field_comments(model: type) -> dict[str, str]:
    """The comment written at the end of each field's line, from the class and its bases."""
    comments: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if cls is object or not issubclass(cls, BaseModel) or cls is BaseModel:
            continue
        for line in inspect.getsource(cls).splitlines():
            match = re.match(r"^ {4}(\w+):[^#]*#\s*(.+)$", line)
            if match:
                comments[match.group(1)] = match.group(2).strip()
    return comments


def type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(arg) for arg in args if arg is not type(None)]
        return " \\| ".join(parts) + (" \\| null" if type(None) in args else "")
    if origin is typing.Literal:
        return " \\| ".join(f"`{arg!r}`" if not isinstance(arg, str) else f'`"{arg}"`' for arg in args)
    if origin is tuple and args and args[-1] is Ellipsis:
        inner = args[0]
        if typing.get_origin(inner) is tuple:
            return "list of [price, size] (decimal strings)"
        return f"list of {type_name(inner)}"
    if origin is dict:
        return "object"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return " \\| ".join(f'`"{member.value}"`' for member in annotation)
        if issubclass(annotation, BaseModel):
            return f"`{annotation.__name__}` object"
        if annotation is Decimal:
            return "decimal string"
        return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(annotation, annotation.__name__)
    return str(annotation)


def constraints(metadata: list[Any]) -> str:
    """`> 0`, `≥ 1`, a pattern...: the checks pydantic applies to a field."""
    parts = []
    for item in metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if getattr(item, attr, None) is not None:
                parts.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "pattern", None):
            parts.append(f"`{item.pattern}`")
        if getattr(item, "max_length", None):
            parts.append(f"≤ {item.max_length} chars")
    return ", ".join(parts)


def default_text(value: Any) -> str:
    return json.dumps(value.value if isinstance(value, Enum) else value, ensure_ascii=False, default=str)


def model_section(model: type[BaseModel]) -> list[str]:
    schema = model.model_fields.get("schema_version") or model.model_fields.get("kind")
    title = f"`{schema.default}`" if schema is not None and schema.default else f"`{model.__name__}`"
    doc = inspect.cleandoc(model.__doc__ or "") if model.__doc__ != BaseModel.__doc__ else ""
    lines = [f"### {title} (`{model.__module__}.{model.__name__}`)", ""]
    if doc:
        lines += [doc, ""]
    comments = field_comments(model)
    lines += ["| field | type | required | note |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        required = "yes" if field.is_required() else f"no (`{default_text(default)}`)"
        note = comments.get(name) or NOTES.get(f"{model.__name__}.{name}") or NOTES.get(name, "")
        note = note.replace("|", "\\|")  # inside a table cell
        checks = constraints(field.metadata)
        shown_type = type_name(field.annotation) + (f", {checks}" if checks else "")
        lines.append(f"| `{name}` | {shown_type} | {required} | {note} |")
    return [*lines, ""]


def trade_row_table() -> str:
    comments = {
        "trade_id": "the venue's trade id, as a string",
        "price": "decimal string, > 0",
        "size": "decimal string, > 0 (base asset)",
        "side": '`"buy"`, `"sell"` (the taker\'s side) or `"unknown"`',
        "event_ts_ns": "exchange event time, integer ns",
        "recv_ts_ns": "when our ingest received it, integer ns",
    }
    lines = ["| position | field | meaning |", "|---|---|---|"]
    lines += [f"| {i} | `{name}` | {comments[name]} |" for i, name in enumerate(TradeRow._fields)]
    return "\n".join(lines) + "\n"


def models_of(name: str, spec: topics.TopicSpec) -> list[type]:
    module = CODECS[spec.name].module
    from_codec = [value.model for value in vars(module).values() if isinstance(value, EventCodec)]
    return [*dict.fromkeys(from_codec), *TOPIC_MODELS.get(name, [])]


def codec_doc(spec: topics.TopicSpec) -> tuple[str, str]:
    """The codec module's docstring: its first paragraph as one line, and the rest as written."""
    doc = inspect.cleandoc(CODECS[spec.name].module.__doc__ or "")
    first, _, rest = doc.partition("\n\n")
    return " ".join(first.split()), rest.strip("\n")  # the rest may start with an indented code block


def render() -> str:
    parts = [HEADER, "\n".join(topic_rows()), "\n\n"]
    quality_kinds = ", ".join(f"`{kind.value}`" for kind in QualityKind)
    for name, spec in grouped_topics():
        parts.append(f"## `{name}`\n\n")
        summary, rest = codec_doc(spec)
        parts.append(f"{summary} Codec: `{CODECS[spec.name].module.__name__}`.\n\n")
        if rest:
            parts.append(rest + "\n\n")
        if spec is topics.QUALITY:
            parts.append(f"`kind` is one of {quality_kinds}.\n\n")
        if name in TOPIC_NOTES:
            parts.append(textwrap.fill(TOPIC_NOTES[name], width=100, break_on_hyphens=False) + "\n\n")
        for model in models_of(name, spec):
            if model is TradeRow:
                parts.append("### A row of `trades`\n\n" + trade_row_table() + "\n")
            else:
                parts.append("\n".join(model_section(model)) + "\n")
    return "".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/topics.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run .venv/bin/python docs/gen_topics.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
