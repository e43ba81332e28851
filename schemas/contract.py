"""The machine-readable contract of every topic, built from the declarations themselves: a JSON
Schema (draft-07) of each topic's value from the pydantic models (`topic_schema`), and an
AsyncAPI 3.0 document of every Kafka topic and the WebSocket channels (`asyncapi_document`).

Pure: dicts in, dicts out. `docs/gen_contract.py` writes them to schemas/jsonschema/ and
docs/asyncapi.yaml (a test fails when they drift); the API serves the same document at
`/asyncapi.json`.

Draft-07, not pydantic's native 2020-12: it is the JSON Schema that AsyncAPI 3.0's own schema
format extends, and the one every validator speaks. The conversion is mechanical (`$defs` ->
`definitions`, tuple `prefixItems` -> array `items`)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from schemas import topics
from schemas.book_ticker import BookTicker
from schemas.codecs import book as book_codec
from schemas.codecs import trades as trades_codec
from schemas.codecs.envelope import VERSION_KEY
from schemas.events import BookDelta, BookSnapshot, Candle, DeadLetter, QualityEvent
from schemas.portfolio import ADMIN_ADAPTER, EVENT_ADAPTER, ORDER_ADAPTER
from schemas.prediction import Prediction, PredictionOutcome
from schemas.risk import RiskEstimate
from schemas.vwap import Vwap

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
VENUE = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,31}$"}
SYMBOL = {"type": "string", "pattern": "^[A-Z0-9]{1,15}-[A-Z0-9]{1,15}$"}
DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
NS = {"type": "integer", "minimum": 0}

# The value type of each topic that is pydantic models (a union where a topic carries several).
_MODELS: dict[str, Any] = {
    **{spec.name: Candle for spec in topics.CANDLES.values()},
    topics.BOOK_TOP.name: BookSnapshot,
    topics.RISK.name: RiskEstimate,
    topics.PREDICTIONS.name: Prediction | PredictionOutcome,
    topics.PF_COMMANDS.name: ORDER_ADAPTER,
    topics.PF_ADMIN.name: ADMIN_ADAPTER,
    topics.PF_EVENTS.name: EVENT_ADAPTER,
    topics.VWAP.name: Vwap,
    topics.QUALITY.name: QualityEvent,
    topics.DEAD_LETTER.name: DeadLetter,
}

# What a consumer may rely on about order, for every topic: producers key by the topic's key,
# so one key stays on one partition.
ORDERING = (
    "Ordered per key: every message of one key goes to one partition, in the order its "
    "producer wrote it. No order across keys or partitions."
)


def _draft07(node: Any, ref_prefix: str) -> Any:
    """Pydantic's 2020-12 output, spelled in draft-07."""
    if isinstance(node, list):
        return [_draft07(item, ref_prefix) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            continue  # hoisted by the caller
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            out[key] = ref_prefix + value[len("#/$defs/") :]
        elif key == "prefixItems":
            out["items"] = _draft07(value, ref_prefix)
            tail = node.get("items")
            out["additionalItems"] = _draft07(tail, ref_prefix) if tail is not None else False
        elif key == "items" and "prefixItems" in node:
            continue  # folded into additionalItems above
        else:
            out[key] = _draft07(value, ref_prefix)
    return out


def _model_schema(model: Any, ref_prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the value's schema, its definitions), refs pointing at `ref_prefix` + name."""
    adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
    raw = adapter.json_schema(mode="serialization")
    definitions = {name: _draft07(d, ref_prefix) for name, d in raw.get("$defs", {}).items()}
    return _draft07(raw, ref_prefix), definitions


def _batch(fmt: str, field: str, items: dict[str, Any], title: str, description: str) -> dict[str, Any]:
    return {
        "title": title,
        "description": description,
        "type": "object",
        "required": [VERSION_KEY, "venue", "symbol", field],
        "properties": {
            VERSION_KEY: {"const": fmt, "type": "string"},
            "venue": VENUE,
            "symbol": SYMBOL,
            field: {"type": "array", "items": items},
        },
    }


def _raw_schema(name: str, ref_prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw topics' batches are not models (compact rows, for the decoder's speed)."""
    if name == topics.TRADES.name:
        row = {
            "type": "array",
            "items": [{"type": "string"}, DECIMAL, DECIMAL, {"enum": list(trades_codec.SIDES)}, NS, NS],
            "additionalItems": False,
            "minItems": 6,
            "description": "[trade_id, price, size, side, event_ts_ns, recv_ts_ns]",
        }
        batch = _batch(
            trades_codec.TRADE_BATCH,
            "trades",
            row,
            "TradeBatch",
            "Several trades of one stream. Decoders also accept the old envelope key `schema`.",
        )
        return batch, {}
    definitions: dict[str, Any] = {}
    refs = {}
    for model in (BookDelta, BookSnapshot, BookTicker):
        schema, defs = _model_schema(model, ref_prefix)
        definitions.update(defs)
        definitions[model.__name__] = schema
        refs[model.__name__] = {"$ref": ref_prefix + model.__name__}
    updates = {"anyOf": [refs["BookDelta"], refs["BookSnapshot"]]}
    return {
        "anyOf": [
            _batch(book_codec.BOOK_BATCH, "updates", updates, "BookBatch", "Depth diffs or snapshots of one stream."),
            _batch(
                book_codec.TICKER_BATCH,
                "tickers",
                refs["BookTicker"],
                "BookTickerBatch",
                "Best bid and ask updates of one stream.",
            ),
        ]
    }, definitions


def _value(name: str, ref_prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if name in _MODELS:
        return _model_schema(_MODELS[name], ref_prefix)
    return _raw_schema(name, ref_prefix)


def topic_schema(spec: topics.TopicSpec) -> dict[str, Any]:
    """The JSON Schema (draft-07, self-contained) a value of `spec` satisfies."""
    schema, definitions = _value(spec.name, "#/definitions/")
    out: dict[str, Any] = {"$schema": DRAFT_07, "$id": f"https://entasis.dev/schemas/{spec.name}.json"}
    out.update(schema)
    out.setdefault("title", spec.name)
    out["description"] = (out.get("description", "") + f"\n\nValue of Kafka topic `{spec.name}`.").strip()
    if definitions:
        out["definitions"] = definitions
    return out


# Keywords whose value maps names to schemas: a key there named "discriminator" is a property.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "definitions", "dependencies"})


def _asyncapi_schema(node: Any, in_map: bool = False) -> Any:
    """A draft-07 schema as an AsyncAPI 3.0 Schema Object: the same, but for `discriminator`, which
    AsyncAPI declares as the property's name (a string), where pydantic writes OpenAPI's object
    (`propertyName` and a `mapping` into pydantic's own `$defs`). The official AsyncAPI JSON Schema
    refuses the object (tests/unit/test_asyncapi_official_schema.py); the variants' `const` of the
    property says the rest. A node with nothing to change is returned as it is, so the values the
    schemas share stay shared (and docs/asyncapi.yaml keeps its YAML anchors)."""
    if isinstance(node, list):
        items = [_asyncapi_schema(item) for item in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if not in_map and key == "discriminator" and isinstance(value, dict) and "propertyName" in value:
            out[key] = value["propertyName"]
        else:
            out[key] = _asyncapi_schema(value, in_map=not in_map and key in _SCHEMA_MAPS)
    return node if all(out[k] is v for k, v in node.items()) else out


def _channel_id(name: str) -> str:
    return name.replace(".", "_")


def _kafka_channel(spec: topics.TopicSpec, message_id: str) -> dict[str, Any]:
    retention = "forever" if spec.retention_ms is None else f"{spec.retention_ms // topics.DAY_MS} days"
    config: dict[str, Any] = {
        "cleanup.policy": ["compact" if spec.compacted else "delete"],
        "retention.ms": spec.retention_ms if spec.retention_ms is not None else -1,
    }
    return {
        "address": spec.name,
        "title": spec.name,
        "description": (
            f"Key: `{spec.key}` (UTF-8). Value: {spec.value_schema}, JSON "
            f"(schemas/jsonschema/{spec.name}.json). {spec.partitions} partition(s); "
            f"retention {retention}. {ORDERING}"
        ),
        "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
        "bindings": {
            "kafka": {
                "topic": spec.name,
                "partitions": spec.partitions,
                "topicConfiguration": config,
                "bindingVersion": "0.5.0",
            }
        },
    }


# The WebSocket (`/ws/market`) data messages, one per channel (api/ws/protocol.py renders them;
# tests/unit/test_contract.py checks the channel list against it).
WS_CHANNELS = ("market", "orderbook", "candles")
_TIMESTAMP = {"type": "string", "format": "date-time"}
_LEVEL = {"type": "array", "items": [DECIMAL, DECIMAL], "additionalItems": False}
_WS_MESSAGES: dict[str, dict[str, Any]] = {
    "market": {
        "type": "object",
        "required": ["symbol", "exchange", "price", "timestamp", "volume", "seq"],
        "properties": {
            "symbol": SYMBOL,
            "exchange": VENUE,
            "price": DECIMAL,
            "timestamp": _TIMESTAMP,
            "volume": DECIMAL,
            "seq": NS,
        },
    },
    "orderbook": {
        "type": "object",
        "required": ["symbol", "exchange", "bids", "asks", "timestamp", "seq"],
        "properties": {
            "symbol": SYMBOL,
            "exchange": VENUE,
            "bids": {"type": "array", "items": _LEVEL},
            "asks": {"type": "array", "items": _LEVEL},
            "timestamp": _TIMESTAMP,
            "seq": NS,
        },
    },
    "candles": {
        "type": "object",
        "required": [
            "symbol",
            "exchange",
            "interval",
            "timestamp",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "is_final",
            "seq",
        ],
        "properties": {
            "symbol": SYMBOL,
            "exchange": VENUE,
            "interval": {"enum": ["1m", "5m", "1h", "1d"]},
            "timestamp": _TIMESTAMP,
            "open": DECIMAL,
            "high": DECIMAL,
            "low": DECIMAL,
            "close": DECIMAL,
            "volume": DECIMAL,
            "is_final": {"type": "boolean"},
            "seq": NS,
        },
    },
}
_WS_SUBSCRIBE = {
    "type": "object",
    "required": ["action"],
    "properties": {
        "action": {"enum": ["subscribe", "unsubscribe", "ping"]},
        "channel": {"enum": list(WS_CHANNELS)},
        "symbols": {"type": "array", "items": SYMBOL},
        "symbol": SYMBOL,
        "exchange": VENUE,
        "depth": {"type": "integer", "minimum": 1, "maximum": 100},
        "interval": {"enum": ["1m", "5m", "1h", "1d"]},
    },
}


def asyncapi_document(kafka_host: str = "127.0.0.1:19092", api_host: str = "127.0.0.1:8443") -> dict[str, Any]:
    """AsyncAPI 3.0: every declared topic (what a consumer receives) and `/ws/market`."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in topics.ALL_TOPICS:
        value, definitions = _value(spec.name, "#/components/schemas/")
        for name, definition in definitions.items():
            schemas.setdefault(name, _asyncapi_schema(definition))
        schema_id = _channel_id(spec.name) + "_value"
        schemas[schema_id] = _asyncapi_schema(value)
        message_id = _channel_id(spec.name)
        messages[message_id] = {
            "name": spec.name,
            "title": f"{spec.name} value",
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{schema_id}"},
            "bindings": {"kafka": {"key": {"type": "string", "description": spec.key}, "bindingVersion": "0.5.0"}},
        }
        channel_id = _channel_id(spec.name)
        channels[channel_id] = _kafka_channel(spec, message_id)
        # No `messages`: the channel's one message is the operation's (AsyncAPI's default).
        operations[f"receive_{channel_id}"] = {"action": "receive", "channel": {"$ref": f"#/channels/{channel_id}"}}
    schemas["ws_request"] = _WS_SUBSCRIBE
    messages["ws_request"] = {
        "name": "request",
        "contentType": "application/json",
        "payload": {"$ref": "#/components/schemas/ws_request"},
    }
    ws_messages: dict[str, Any] = {"request": {"$ref": "#/components/messages/ws_request"}}
    for channel in WS_CHANNELS:
        schemas[f"ws_{channel}"] = _WS_MESSAGES[channel]
        messages[f"ws_{channel}"] = {
            "name": channel,
            "title": f"`{channel}` channel update",
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/ws_{channel}"},
        }
        ws_messages[channel] = {"$ref": f"#/components/messages/ws_{channel}"}
    channels["ws_market"] = {
        "address": "/ws/market",
        "servers": [{"$ref": "#/servers/api"}],
        "title": "Market WebSocket",
        "description": (
            "One socket, three channels (`market`, `orderbook`, `candles`), chosen by the `channel` "
            "of a subscribe request; every data message carries its subscription's `seq`, "
            "increasing by one per message. Authenticated as the REST API (bearer token)."
        ),
        "messages": ws_messages,
    }
    operations["send_ws_request"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/ws_market"},
        "messages": [{"$ref": "#/channels/ws_market/messages/request"}],
    }
    operations["receive_ws_updates"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/ws_market"},
        "messages": [{"$ref": f"#/channels/ws_market/messages/{c}"} for c in WS_CHANNELS],
    }
    for channel_id, channel in channels.items():
        if channel_id != "ws_market":
            channel["servers"] = [{"$ref": "#/servers/kafka"}]
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Entasis Engine",
            "version": "1.0.0",
            "description": (
                "Kafka topics of the market-data pipeline and the API's market WebSocket. "
                "Every topic value is a JSON object naming its format under `schema_version`. "
                "Generated by docs/gen_contract.py from schemas/."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {"host": kafka_host, "protocol": "kafka", "description": "the broker (embedded default)"},
            "api": {"host": api_host, "protocol": "wss", "description": "the API (embedded default)"},
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
