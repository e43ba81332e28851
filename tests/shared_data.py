"""Where the recorded data lives: ../shared/data beside the repository (CI has it there too).
Tests read it in place; it is never copied into the project."""

from __future__ import annotations

import csv
import gzip
import json
from decimal import Decimal
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
BINANCE = DATA / "binance"
SPOT_FILES = (BINANCE / "spot_ethusdt_20240808.gz", BINANCE / "spot_ethusdt_20240809.gz")
REFERENCE_CANDLES = BINANCE / "spot_ethusdt_candles_1m.csv"


def reference_candles() -> list[dict[str, str]]:
    with REFERENCE_CANDLES.open() as f:
        return list(csv.DictReader(f))


def raw_spot_trades() -> list[dict]:
    """The `@trade` payloads of both spot files, read with plain gzip + json: an oracle's
    input that shares no code with the project's parser."""
    trades = []
    for path in SPOT_FILES:
        with gzip.open(path, "rt") as f:
            for line in f:
                _, payload = line.split(" ", 1)
                msg = json.loads(payload)
                if msg.get("stream", "").endswith("@trade"):
                    trades.append(msg["data"])
    return trades


def dec(text: str) -> Decimal:
    return Decimal(text)
