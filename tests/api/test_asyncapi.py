"""`/asyncapi.json`: the committed AsyncAPI document (docs/asyncapi.yaml), served beside
`/openapi.json` without credentials. No database: the app runs on a store that knows nothing."""

from __future__ import annotations

from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.conftest import new_address, test_api_settings
from tests.api.test_market_warming import EmptyStore

ROOT = Path(__file__).resolve().parents[2]


def test_the_asyncapi_document_is_served_without_credentials_and_is_the_committed_one() -> None:
    app = create_app(repository=EmptyStore(), api_settings=test_api_settings())  # type: ignore[arg-type]
    with TestClient(app, client=(new_address(), 50000)) as anon:
        response = anon.get("/asyncapi.json")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json() == yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
        assert anon.post("/asyncapi.json").status_code == 405
        assert anon.get("/openapi.json").status_code == 200  # its neighbour, equally public
