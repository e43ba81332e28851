"""The WebSocket in the OpenAPI document (api/openapi_ws.py): added to the app's document, it states
what the AsyncAPI document it links to says, and the document stays one that schemathesis (which
drives test_schemathesis.py) loads."""

from __future__ import annotations

import copy
from typing import Any

import schemathesis
from fastapi.testclient import TestClient

from api.app import create_app
from api.openapi_ws import TAG, document_websocket
from tests.api.conftest import test_api_settings


class NoKeys:
    def get(self, key_id: str) -> None:
        return None

    def close(self) -> None:
        pass


def _documents() -> tuple[dict[str, Any], dict[str, Any]]:
    app = create_app(repository=None, api_settings=test_api_settings(), key_repository=NoKeys())  # type: ignore[arg-type]
    with TestClient(app) as client:
        asyncapi = client.get("/asyncapi.json").json()
    return document_websocket(copy.deepcopy(app.openapi())), asyncapi


def test_the_websocket_is_described_and_linked_to_its_asyncapi_contract() -> None:
    openapi, asyncapi = _documents()
    extension = openapi["x-websocket"]
    channel = asyncapi["channels"][extension["asyncapi"]["channel"]]
    assert channel["address"] == extension["path"] == "/ws/market"
    # every data channel the extension names is a message of the AsyncAPI channel, and no other
    assert set(channel["messages"]) - {"request"} == set(extension["channels"])
    request = asyncapi["components"]["schemas"]["ws_request"]
    assert set(request["properties"]["channel"]["enum"]) == set(extension["channels"])
    assert request["properties"]["interval"]["enum"] == extension["intervals"]
    assert request["properties"]["depth"]["maximum"] == extension["depth"]["maximum"]
    tag = next(t for t in openapi["tags"] if t["name"] == TAG)
    assert tag["externalDocs"]["url"] == extension["asyncapi"]["url"] == "/asyncapi.json"
    description = openapi["info"]["description"]
    assert description.startswith("\nReal-time and historical market data")  # the app's own text first
    assert "**WebSocket `/ws/market`**" in description and "[`/asyncapi.json`](/asyncapi.json)" in description
    assert document_websocket(copy.deepcopy(openapi)) == openapi  # once only


def test_the_document_with_the_websocket_still_loads_as_openapi() -> None:
    openapi, _ = _documents()
    schema = schemathesis.openapi.from_dict(openapi)
    assert any(op.ok().path == "/api/v1/market/history/{symbol}" for op in schema.get_all_operations())
