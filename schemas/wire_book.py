"""The names the book topic's codec had before it moved to `schemas.codecs.book`; kept so importers
move at their own pace. Nothing is decoded or encoded here."""

from __future__ import annotations

from schemas.codecs.book import TICKER_BATCH, BookMessageItem, decode_ticker_batch, encode_ticker_batch
from schemas.codecs.book import decode as decode_book_message

__all__ = ["TICKER_BATCH", "BookMessageItem", "decode_book_message", "decode_ticker_batch", "encode_ticker_batch"]
