"""The WebSocket `/ws/market` in the OpenAPI document.

OpenAPI describes HTTP operations only, and FastAPI lists no WebSocket route, so a reader of
`/docs` or `/openapi.json` would not learn the socket exists. `document_websocket` adds it three
ways, none of which pretends it is an HTTP operation:
- a section of `info.description` (what Swagger UI shows at the top of `/docs`): the path, how to
  authenticate, the channels and the message shapes in brief;
- a `websocket` tag whose `externalDocs` points at `/asyncapi.json`, the protocol's full,
  machine-readable contract (AsyncAPI 3.0, channel `ws_market`; schemas/contract.py builds it, and
  a test holds it equal to docs/asyncapi.yaml);
- the `x-websocket` extension: the same facts as data (path, subprotocol, channels, limits, close
  codes), for tools that read the OpenAPI document only.

The constants come from the modules that implement them (api/ws/protocol.py, api/ws/endpoint.py,
api/health.py), so the document cannot drift from the code on what it states."""

from __future__ import annotations

from typing import Any

from api.health import ASYNCAPI_PATH
from api.security import WS_PROTOCOL
from api.ws.endpoint import WS_PATH
from api.ws.protocol import CHANNELS, INTERVALS, MAX_CLIENT_MESSAGE_BYTES, MAX_DEPTH, MIN_DEPTH

TAG = "websocket"

DESCRIPTION = f"""

**WebSocket `{WS_PATH}`** (scope `market:read`; not an HTTP operation, so not listed below: its full
contract is the AsyncAPI document at [`{ASYNCAPI_PATH}`]({ASYNCAPI_PATH}), channel `ws_market`).
Authenticate as for REST (`Authorization` or `X-API-Key` headers; browsers: `?token=` or the
subprotocols `{WS_PROTOCOL}` plus `entasis.bearer.<jwt>` / `entasis.key.<key>`). Send
`{{"action": "subscribe"|"unsubscribe", "channel": ...}}` with, per channel:
`market` `symbols: [...]`; `orderbook` `symbol`, `depth` ({MIN_DEPTH}-{MAX_DEPTH}); `candles` `symbol`,
`interval` ({", ".join(f"`{i}`" for i in INTERVALS)}); and optionally `exchange` on every one (default:
the REST default-venue rule, fixed at subscribe time; venues never interleave on a subscription).
Data messages carry the REST fields plus `exchange` and a per-subscription `seq` (1, 2, 3, ...; a gap
means updates were conflated for a slow client). Acknowledgements `{{"type": "subscribed"|"unsubscribed"}}`,
errors `{{"type": "error", "code", "message"}}` with the error table's codes (the socket stays open),
`{{"action": "ping"}}` answered `{{"type": "pong"}}`. Close codes: 4401 unauthenticated, 4403 forbidden,
4429 rate limited at the handshake, 4408 idle, 1008 too many sockets for the account, 1013 too slow or
too many sockets in the process, 1009 a frame over {MAX_CLIENT_MESSAGE_BYTES // 1024} KiB.
"""

EXTENSION: dict[str, Any] = {
    "path": WS_PATH,
    "asyncapi": {"url": ASYNCAPI_PATH, "channel": "ws_market"},
    "subprotocol": WS_PROTOCOL,
    "scope": "market:read",
    "channels": list(CHANNELS),
    "intervals": list(INTERVALS),
    "depth": {"minimum": MIN_DEPTH, "maximum": MAX_DEPTH},
    "max_frame_bytes": MAX_CLIENT_MESSAGE_BYTES,
    "close_codes": {
        "4401": "missing or invalid credentials (also when a token expires or a key is revoked)",
        "4403": "forbidden: a client address outside the allowlist, or no `market:read`",
        "4429": "over the account's rate limit at the handshake",
        "4408": "idle: the client sent nothing for the configured time",
        "1008": "the account's open-socket cap",
        "1013": "try again later: a client too slow for its updates, or the process's socket cap",
        "1009": "a client frame over the size limit",
    },
}


def document_websocket(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the WebSocket to an OpenAPI document (in place, and returned); idempotent."""
    info = schema.setdefault("info", {})
    description = info.get("description") or ""
    if f"**WebSocket `{WS_PATH}`**" not in description:
        info["description"] = description.rstrip("\n") + DESCRIPTION
    tags = schema.setdefault("tags", [])
    if not any(tag.get("name") == TAG for tag in tags):
        tags.append(
            {
                "name": TAG,
                "description": f"The market-data WebSocket `{WS_PATH}`: see the description above.",
                "externalDocs": {"description": "AsyncAPI 3.0 document of the protocol", "url": ASYNCAPI_PATH},
            }
        )
    schema["x-websocket"] = EXTENSION
    return schema
