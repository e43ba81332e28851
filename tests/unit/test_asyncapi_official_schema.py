"""docs/asyncapi.yaml against the official AsyncAPI 3.0.0 JSON Schema (issue 19): the schema of
the `@asyncapi/specs` package, vendored unchanged in tests/contracts/ (its README names the
release and the sha256 checked here), validated by `jsonschema` with the validator of the draft
the schema declares. test_contract.py's parser (asyncapi-python) reads the document but does not
hold it to the specification; this does. The mutated copies show that it can fail, and where."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError
from jsonschema.validators import validator_for
from referencing import Registry

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "tests" / "contracts"
SCHEMA_FILE = CONTRACTS / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded = json.loads(SCHEMA_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Any:
    cls = validator_for(schema, default=None)
    assert cls is not None, f"unknown $schema {schema.get('$schema')!r}"
    cls.check_schema(schema)
    # An empty registry retrieves nothing: every reference must resolve inside the bundled file
    # (a missing one raises instead of being fetched from asyncapi.com).
    return cls(schema, registry=Registry(), format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_vendored_schema_is_the_release_the_readme_names(schema: dict[str, Any]) -> None:
    readme = (CONTRACTS / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{SCHEMA_FILE.name}`"))
    stated = re.findall(r"`([0-9a-f]{64})`", row)
    assert stated == [hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()]
    assert "Apache-2.0" in row
    assert (CONTRACTS / "LICENSE-asyncapi-specs").read_text().lstrip().startswith("Apache License")
    # the AsyncAPI 3.0.0 schema, in the draft the test's validator is chosen for
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema"
    assert schema["properties"]["asyncapi"]["const"] == "3.0.0"
    assert validator_for(schema) is Draft7Validator


def _errors(errors: Any) -> Iterator[ValidationError]:
    """Every error, and every error under it (a `oneOf` reports its branches' errors as context)."""
    for error in errors:
        yield error
        yield from _errors(error.context or ())


def test_the_committed_document_is_valid_asyncapi_3(validator: Any, document: dict[str, Any]) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]
    assert errors == []


def _set(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


# (what is wrong, where, the value put there)
MUTATIONS = [
    ("an AsyncAPI 2 verb as the action", ("operations", "receive_md_trades_v1", "action"), "publish"),
    ("a number as a channel's address", ("channels", "md_trades_v1", "address"), 42),
    ("OpenAPI's discriminator object", ("components", "schemas", "pf_commands_v1_value", "discriminator"),
     {"propertyName": "kind", "mapping": {"open_position": "#/$defs/OpenPosition"}}),
    ("a Kafka partition count as a string", ("channels", "md_trades_v1", "bindings", "kafka", "partitions"), "4"),
    ("another specification version", ("asyncapi",), "2.6.0"),
]


@pytest.mark.parametrize(("what", "path", "value"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_a_broken_copy_fails_with_an_error_at_the_broken_field(
    validator: Any, document: dict[str, Any], what: str, path: tuple[str, ...], value: Any
) -> None:
    original = document
    for key in path:  # the field exists in the real document: the mutation replaces, never adds
        original = original[key]
    assert original != value
    errors = list(validator.iter_errors(_set(document, path, value)))
    assert errors, what
    assert tuple(path) in {tuple(e.absolute_path) for e in _errors(errors)}, [
        list(e.absolute_path) for e in _errors(errors)
    ]


def test_only_the_discriminator_keyword_is_rewritten_and_unchanged_schemas_stay_shared() -> None:
    from schemas.contract import _asyncapi_schema

    shared = {"type": "string"}
    named = {"properties": {"discriminator": {"propertyName": "x"}}, "items": [shared]}
    schema = {"discriminator": {"propertyName": "kind", "mapping": {}}, "oneOf": [named], "x": shared}
    out = _asyncapi_schema(schema)
    assert out["discriminator"] == "kind"
    assert out["oneOf"][0] is named  # a property that happens to be called so is a property
    assert out["x"] is shared and schema["discriminator"] == {"propertyName": "kind", "mapping": {}}
