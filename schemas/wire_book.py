"""Book-topic messages beyond `schemas.wire`: the exchange's best bid/ask.

Tickers travel on the book topic (same key, so they stay ordered with the diffs they can be
checked against) but in their own message schema, because `decode_book_batch` only knows
diffs and snapshots:

    book_ticker_batch.v1 = {"schema": "book_ticker_batch.v1", "venue": str, "symbol": str,
                            "tickers": [BookTicker as JSON, ...]}

A book-topic consumer should decode with `decode_book_message`, which accepts both schemas.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from schemas.book_ticker import BookTicker
from schemas.events import BookDelta, BookSnapshot
from schemas.wire import BOOK_BATCH, WireError, decode_book_batch

TICKER_BATCH = "book_ticker_batch.v1"

BookMessageItem = BookDelta | BookSnapshot | BookTicker


def encode_ticker_batch(venue: str, symbol: str, tickers: Iterable[BookTicker]) -> bytes:
    return orjson.dumps(
        {
            "schema": TICKER_BATCH,
            "venue": venue,
            "symbol": symbol,
            "tickers": [t.model_dump(mode="json") for t in tickers],
        }
    )


def decode_ticker_batch(raw: bytes) -> tuple[str, str, list[BookTicker]]:
    try:
        msg = orjson.loads(raw)
        if msg["schema"] != TICKER_BATCH:
            raise WireError(f"expected {TICKER_BATCH}, got {msg['schema']!r}")
        tickers = [BookTicker.model_validate(t) for t in msg["tickers"]]
        return msg["venue"], msg["symbol"], tickers
    except WireError:
        raise
    except Exception as exc:  # orjson, KeyError, pydantic.ValidationError, TypeError...
        raise WireError(f"malformed {TICKER_BATCH}: {exc!r}") from exc


def decode_book_message(raw: bytes) -> tuple[str, str, list[BookMessageItem]]:
    """Any message of the book topic: a `book_batch.v1` or a `book_ticker_batch.v1`."""
    schema = _peek_schema(raw)
    items: list[BookMessageItem] = []
    if schema == TICKER_BATCH:
        venue, symbol, tickers = decode_ticker_batch(raw)
        items.extend(tickers)
        return venue, symbol, items
    if schema == BOOK_BATCH:
        venue, symbol, updates = decode_book_batch(raw)
        items.extend(updates)
        return venue, symbol, items
    raise WireError(f"not a book-topic message: schema {schema!r}")


def _peek_schema(raw: bytes) -> object:
    # Our encoders write "schema" first, so the common case needs no second JSON decode.
    for schema in (BOOK_BATCH, TICKER_BATCH):
        if raw.startswith(b'{"schema":"' + schema.encode() + b'"'):
            return schema
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"malformed book message: {exc}") from exc
    return msg.get("schema") if isinstance(msg, dict) else None
