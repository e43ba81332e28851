"""The names the raw-topic codecs had before each topic got its own module in `schemas.codecs`.

Kept so importers move at their own pace; new code imports the codec of its topic
(`schemas.codecs.trades`, `schemas.codecs.book`, ...) or `schemas.codecs.envelope.encode_event`.
Nothing is decoded or encoded here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from schemas.codecs.book import BOOK_BATCH, decode_book_batch, encode_book_batch
from schemas.codecs.envelope import MAX_DECIMALS, WireError, encode_event
from schemas.codecs.trades import TRADE_BATCH, TradeRow
from schemas.codecs.trades import decode as decode_trade_batch
from schemas.codecs.trades import decode_trades as trades_from_batch
from schemas.codecs.trades import encode as encode_trade_batch

__all__ = [
    "BOOK_BATCH", "MAX_DECIMALS", "TRADE_BATCH", "TradeRow", "WireError", "decode_book_batch", "decode_trade_batch",
    "encode_book_batch", "encode_event", "encode_trade_batch", "iter_batches", "trades_from_batch",
]


def iter_batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
