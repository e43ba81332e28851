"""Agent configuration read from the settings object, shared by the agents that have one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def values_from_settings(fields: Iterable[str], settings: Any, prefix: str,
                         tuple_fields: Iterable[str] = ()) -> dict[str, Any]:
    """`<prefix>_<field>` attributes of a settings object that are set, by field name; a missing
    one is left out (the config keeps its default, so the settings class can grow them when it
    needs to). `tuple_fields` come as tuples, also from a comma-separated string ("1h,4h", as an
    environment variable gives them)."""
    values: dict[str, Any] = {
        name: getattr(settings, f"{prefix}_{name}")
        for name in fields
        if getattr(settings, f"{prefix}_{name}", None) is not None
    }
    for name in tuple_fields:
        if isinstance(values.get(name), str):
            values[name] = tuple(v.strip() for v in values[name].split(",") if v.strip())
        elif name in values:
            values[name] = tuple(values[name])
    return values
