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

import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Final

import orjson

from schemas.book_ticker import BookTicker
from schemas.codecs.envelope import VERSION_KEY, WireError, load, version_of
from schemas.events import BookDelta, BookSnapshot, PriceLevel
from schemas.level_keys import attach, price_key
from schemas.limits import (
    MAX_TIME_NS,
    MAX_UPDATE_ID,
    count_problem,
    level_problem,
    price_problem,
    size_problem,
    stream_problem,
)
from schemas.text_memo import remember
from schemas.trusted import trusted

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
            fast = _plain_update(u)
            if fast is not None:
                updates.append(fast)
                continue
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


# The fast path of the decoder (the worker's book agent decodes every diff of every venue): an
# update written as `encode_book_batch` writes it (every field present, ids and times plain
# integers, levels [price, size] as plain decimal strings) is checked here value by value and
# built without pydantic (`schemas.trusted`): ~3x (the USD-M capture, one update a message: 6.0k ->
# 17.8k messages decoded a second, same run). Anything else, however odd, takes
# pydantic's path above, so what is accepted and what it decodes to do not change
# (tests/unit/test_book_wire_fast.py compares both paths on the recorded captures and on
# hostile variants). Written by hand: pydantic has no cheaper mode for this, and its lax
# Decimal and int parsing is what the fast path must never widen.
_DELTA_FIELDS: Final = frozenset(BookDelta.model_fields)
_SNAPSHOT_FIELDS: Final = frozenset(BookSnapshot.model_fields)
_PLAIN_DECIMAL: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # what Decimal() reads one way only
# Level texts already read and checked (a book's diffs repeat the same prices and sizes): a hit
# skips Decimal() and its checks; kept apart since a size may be 0 and a price may not; bounded.
# A price is remembered with its book key (`schemas.level_keys`), which the decoded event carries.
_PRICES: dict[str, tuple[Decimal, int]] = {}
_SIZES: dict[str, Decimal] = {}


def _plain_update(u: Any) -> BookUpdate | None:
    """`u` decoded and checked as the pydantic path would, if it is plainly written; else None
    (nothing is refused here: the caller's pydantic path decides)."""
    if type(u) is not dict:
        return None
    version = u.get(VERSION_KEY)
    if version == BOOK_DELTA:
        if u.keys() != _DELTA_FIELDS:
            return None
        prev = u["prev_update_id"]
        if not (_id(u["first_update_id"]) and _id(u["last_update_id"]) and (prev is None or _id(prev))):
            return None
    elif version == BOOK_SNAPSHOT:
        if u.keys() != _SNAPSHOT_FIELDS or not _id(u["last_update_id"]):
            return None
    else:
        return None
    venue, symbol, event_ts, recv_ts = u["venue"], u["symbol"], u["event_ts_ns"], u["recv_ts_ns"]
    if not (_time(event_ts) and _time(recv_ts)) or stream_problem(venue, symbol) is not None:
        return None
    bids, asks = _levels(u["bids"]), _levels(u["asks"])
    if bids is None or asks is None:
        return None
    update: BookUpdate
    if version == BOOK_DELTA:
        update = trusted(BookDelta, {"venue": venue, "symbol": symbol, "event_ts_ns": event_ts, "recv_ts_ns": recv_ts,
                                     "schema_version": version, "first_update_id": u["first_update_id"],
                                     "last_update_id": u["last_update_id"], "prev_update_id": prev,
                                     "bids": bids[0], "asks": asks[0]})  # fmt: skip
    else:
        update = trusted(BookSnapshot, {"venue": venue, "symbol": symbol, "event_ts_ns": event_ts,
                                        "recv_ts_ns": recv_ts, "schema_version": version,
                                        "last_update_id": u["last_update_id"],
                                        "bids": bids[0], "asks": asks[0]})  # fmt: skip
    attach(update, bids[1], asks[1])
    return update


def _id(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_UPDATE_ID


def _time(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_TIME_NS


def _levels(raw: Any) -> tuple[tuple[PriceLevel, ...], list[int]] | None:
    """(the levels, their prices' book keys), or None if `raw` is not plainly written levels."""
    if type(raw) is not list:
        return None
    out: list[PriceLevel] = []
    keys: list[int] = []
    append, add_key = out.append, keys.append
    known_price, known_size = _PRICES.get, _SIZES.get
    for level in raw:
        if type(level) is not list or len(level) != 2:
            return None
        price_text, size_text = level
        if type(price_text) is not str or type(size_text) is not str:
            return None
        price = known_price(price_text)
        if price is None and (price := _read_price(price_text)) is None:
            return None
        size = known_size(size_text)
        if size is None and (size := _read_size(size_text)) is None:
            return None
        append((price[0], size))
        add_key(price[1])
    return tuple(out), keys


def _read_price(text: str) -> tuple[Decimal, int] | None:
    value = _read(text)
    if value is None or price_problem(value) is not None:
        return None
    return remember(_PRICES, text, (value, price_key(value)))


def _read_size(text: str) -> Decimal | None:
    value = _read(text)
    if value is None or size_problem(value, allow_zero=True) is not None:
        return None
    return remember(_SIZES, text, value)


def _read(text: str) -> Decimal | None:
    return Decimal(text) if _PLAIN_DECIMAL.fullmatch(text) else None


def forget_level_values() -> None:
    """Empty the remembered level texts (a benchmark measuring fresh values, a test)."""
    _PRICES.clear()
    _SIZES.clear()


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

