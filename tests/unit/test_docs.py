"""docs/topics.md is generated from the topic declarations and the event models: a change to
either without regenerating it fails here, so the page a Kafka consumer reads cannot drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_topics_page_matches_the_declarations() -> None:
    proc = subprocess.run([sys.executable, "docs/gen_topics.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
