"""One line per headline figure, for `entasis bench all` to gather into the README's performance
table: `BENCH-RESULT {json}` on stdout, beside each benchmark's own human-readable output.

A figure names its anchor (the same work done by a plain tool on this machine, measured in the
same run) and the ratio to it, when there is one, and the target the issue set, in words."""

from __future__ import annotations

import json
from typing import Any

PREFIX = "BENCH-RESULT "


def report(
    bench: str,
    figure: str,
    value: float,
    unit: str,
    *,
    anchor: str | None = None,
    anchor_value: float | None = None,
    target: str | None = None,
    higher_is_better: bool = True,
) -> None:
    ratio = None
    if anchor_value:
        ratio = value / anchor_value if higher_is_better else anchor_value / value if value else None
    line: dict[str, Any] = {
        "bench": bench,
        "figure": figure,
        "value": value,
        "unit": unit,
        "anchor": anchor,
        "anchor_value": anchor_value,
        "ratio": ratio,
        "target": target,
    }
    print(PREFIX + json.dumps(line), flush=True)


def parse(line: str) -> dict[str, Any] | None:
    if not line.startswith(PREFIX):
        return None
    try:
        value = json.loads(line[len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def markdown(results: list[dict[str, Any]], command: str) -> str:
    """The README's table: one row per figure, in the order the benchmarks printed them."""
    rows = [
        "| benchmark | figure | Entasis | anchor (same run) | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        anchor = f"{r['anchor']}: {_number(r['anchor_value'], r['unit'])}" if r.get("anchor") else ""
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else ""
        rows.append(
            f"| {r['bench']} | {r['figure']} | {_number(r['value'], r['unit'])} | {anchor} | {ratio} | "
            f"{r.get('target') or ''} |"
        )
    return "\n".join([*rows, "", f"Reproduce: `{command}`"])
