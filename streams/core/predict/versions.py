"""Each model's version string (served with every forecast), known without importing the model's
library: a stream's models are built on their first use (`engine._Deferred`), and a forecast made
before that still names them."""

from __future__ import annotations

ENSEMBLE = "ewa-nochange-blr-blr998-ht-v1"


def lstm(hidden: int, seq_len: int, replay: int, steps: int) -> str:
    return f"lstm-h{hidden}-s{seq_len}-r{replay}x{steps}-v1"
