"""`md.book.v1`: one exchange frame per message, in one of two formats.

    book_batch.v1        = {"schema_version": "book_batch.v1", "venue": str, "symbol": str,
                            "updates": [BookDelta or BookSnapshot as JSON, ...]}
    book_ticker_batch.v1 = {"schema_version": "book_ticker_batch.v1", "venue": str, "symbol": str,
                            "tickers": [BookTicker as JSON, ...]}

Tickers travel on the book topic (same key, so they stay ordered with the diffs they are checked
against) in their own format. A consumer of the topic decodes with `decode`, which takes both;
`decode_book_batch` and `decode_ticker_batch` take one each. Decoders also accept the old
envelope key `schema` (see `schemas.codecs.envelope`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from schemas.book_ticker import BookTicker
from schemas.codecs.envelope import VERSION_KEY, WireError, load, version_of
from schemas.events import BookDelta, BookSnapshot
from schemas.limits import MAX_UPDATE_ID, count_problem, level_problem, stream_problem

BOOK_BATCH = "book_batch.v1"
TICKER_BATCH = "book_ticker_batch.v1"
FORMATS = (BOOK_BATCH, TICKER_BATCH)
BOOK_DELTA: str = BookDelta.model_fields[VERSION_KEY].default
BOOK_SNAPSHOT: str = BookSnapshot.model_fields[VERSION_KEY].default
BOOK_TICKER: str = BookTicker.model_fields[VERSION_KEY].default

BookUpdate = BookDelta | BookSnapshot
BookMessageItem = BookDelta | BookSnapshot | BookTicker


def encode_book_batch(venue: str, symbol: str, updates: Iterable[BookUpdate]) -> bytes:
    return orjson.dumps({VERSION_KEY: BOOK_BATCH, "venue": venue, "symbol": symbol,
                         "updates": [u.model_dump(mode="json") for u in updates]})


def encode_ticker_batch(venue: str, symbol: str, tickers: Iterable[BookTicker]) -> bytes:
    return orjson.dumps({VERSION_KEY: TICKER_BATCH, "venue": venue, "symbol": symbol,
                         "tickers": [t.model_dump(mode="json") for t in tickers]})


def decode_book_batch(raw: bytes) -> tuple[str, str, list[BookUpdate]]:
    return _decode_book_batch(_load(raw, BOOK_BATCH, expect=BOOK_BATCH))


def decode_ticker_batch(raw: bytes) -> tuple[str, str, list[BookTicker]]:
    return _decode_ticker_batch(_load(raw, TICKER_BATCH, expect=TICKER_BATCH))


def decode(raw: bytes) -> tuple[str, str, list[BookMessageItem]]:
    """Any message of the book topic: (venue, symbol, diffs and snapshots, or tickers)."""
    msg = _load(raw, "book message", expect=None)
    version = version_of(msg, legacy=True)
    items: list[BookMessageItem] = []
    if version == BOOK_BATCH:
        venue, symbol, updates = _decode_book_batch(msg)
        items.extend(updates)
    elif version == TICKER_BATCH:
        venue, symbol, tickers = _decode_ticker_batch(msg)
        items.extend(tickers)
    else:
        raise WireError(f"not a book-topic message: {VERSION_KEY} {version!r}")
    return venue, symbol, items


def _load(raw: bytes, what: str, expect: str | None) -> dict[str, Any]:
    msg = load(raw, what)
    if expect is not None and (version := version_of(msg, legacy=True)) != expect:
        raise WireError(f"expected {expect}, got {version!r}")
    return msg


def _decode_book_batch(msg: dict[str, Any]) -> tuple[str, str, list[BookUpdate]]:
    try:
        updates: list[BookUpdate] = []
        for u in msg["updates"]:
            model = BookSnapshot if u.get(VERSION_KEY) == BOOK_SNAPSHOT else BookDelta
            update = model.model_validate(u)
            for price, size in (*update.bids, *update.asks):
                if problem := level_problem(price, size):
                    raise WireError(f"malformed {BOOK_BATCH}: {problem}")
            for name in ("first_update_id", "last_update_id", "prev_update_id"):  # UInt64 once stored
                value = getattr(update, name, None)
                if value is not None and (problem := count_problem(value, name, MAX_UPDATE_ID)):
                    raise WireError(f"malformed {BOOK_BATCH}: {problem}")
            updates.append(update)
        return (*_head(msg), updates)
    except WireError:
        raise
    except Exception as exc:  # KeyError, pydantic.ValidationError, AttributeError...
        raise WireError(f"malformed {BOOK_BATCH}: {exc!r}") from exc


def _decode_ticker_batch(msg: dict[str, Any]) -> tuple[str, str, list[BookTicker]]:
    try:
        tickers = [BookTicker.model_validate(t) for t in msg["tickers"]]
        return (*_head(msg), tickers)
    except WireError:
        raise
    except Exception as exc:  # KeyError, pydantic.ValidationError, TypeError...
        raise WireError(f"malformed {TICKER_BATCH}: {exc!r}") from exc


def _head(msg: dict[str, Any]) -> tuple[str, str]:
    venue, symbol = msg["venue"], msg["symbol"]
    if problem := stream_problem(venue, symbol):
        raise WireError(f"malformed {version_of(msg, legacy=True)}: {problem}")
    return venue, symbol

