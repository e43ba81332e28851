"""Hypothesis strategies for hostile input: arbitrary bytes, arbitrary JSON, and valid messages
with one field replaced by a value chosen to hurt (huge, negative, non-finite, too fine, the wrong
type, a pattern broken by one character, a time past int64).

Messages are written with the standard library's `json`, not orjson: it writes integers of any
size, as a hostile producer could."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

# The tier runs within the test command: modest example counts, no per-example deadline (the first
# call of a decoder may compile a pydantic validator).
HOSTILE = settings(max_examples=200, deadline=None)
# For input that a decoder refuses at its first step (not JSON, not its format): fewer examples
# find what there is to find there.
BROAD = settings(max_examples=100, deadline=None)

# Values that broke real systems: magnitudes past what the store (Decimal(38, 8), int64 ns, UInt32
# counters) holds, non-finite and signalling decimals, too many places, lookalike symbols, wrong types.
NASTY_SCALARS = st.sampled_from([
    None, True, False, 0, -1, 1, 2**31, 2**32, 2**32 - 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**40,
    0.5, -0.0, 1e308, 1.5e-10,
    "", " ", "0", "-0", "1", "-1", "0.000000001", "1e-9", "1e30", "1e29", "1E+30", "9" * 31, "1e50", "1e400",
    "1e999999", "NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", "0x10", "1_000", "١٢٣", "1.2.3", "1e", "e5",
    "BTC-USDT", "btc-usdt", "BTC-USDT\n", "BTC_USDT", "BTC-", "-USDT", "A" * 16 + "-USDT", "binance", "Binance",
    "binance\n", "a" * 33, "buy", "sell", "BUY", "x" * 300, "\x00", "\u2028", "🙂",
    "1m", "1h", "long", "short",
])
SCALARS = st.one_of(
    NASTY_SCALARS,
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(str),
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, message: dict[str, Any]) -> dict[str, Any]:
    """`message` with one field (at any depth of objects and lists) replaced, deleted, or joined by
    an unknown one."""
    out = json.loads(json.dumps(message))  # a deep copy
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                paths.append((*path, key))
                walk(child, (*path, key))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                paths.append((*path, index))
                walk(child, (*path, index))

    walk(out, ())
    path = draw(st.sampled_from(paths))
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "extra"]))
    if action == "delete":
        del parent[path[-1]]
    elif action == "extra" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = draw(SCALARS)
    else:
        parent[path[-1]] = draw(JSON)
    return out
