"""Wire format of the raw topics: several events per Kafka message.

Faust costs ~66 µs per message whatever the agent does (DESIGN.md: ~15k messages/s per
worker), so a raw message carries a batch of one stream's events: one exchange frame, or a
few milliseconds of one symbol's trades. Trades travel as compact rows, not dicts, because
decoding dominates the cost of the candle path.

    trade_batch.v1 = {"schema": "trade_batch.v1", "venue": str, "symbol": str,
                      "trades": [[trade_id, price, size, side, event_ts_ns, recv_ts_ns], ...]}
    book_batch.v1  = {"schema": "book_batch.v1", "venue": str, "symbol": str,
                      "updates": [BookDelta or BookSnapshot as JSON, ...]}

Derived topics carry one event per message as the model's JSON (`encode_event`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel

from schemas.events import BookDelta, BookSnapshot, Side, Trade

TRADE_BATCH = "trade_batch.v1"
BOOK_BATCH = "book_batch.v1"


class WireError(ValueError):
    """The bytes are not a message of the expected schema."""


class TradeRow(NamedTuple):
    """A trade as the hot path sees it: decimals already parsed, times in ns."""

    trade_id: str
    price: Decimal
    size: Decimal
    side: str
    event_ts_ns: int
    recv_ts_ns: int


def encode_trade_batch(venue: str, symbol: str, trades: Sequence[Trade]) -> bytes:
    rows = [
        [t.trade_id, format(t.price, "f"), format(t.size, "f"), t.side.value, t.event_ts_ns, t.recv_ts_ns]
        for t in trades
    ]
    return orjson.dumps({"schema": TRADE_BATCH, "venue": venue, "symbol": symbol, "trades": rows})


_new_row = tuple.__new__
_SIDES = frozenset(("buy", "sell", "unknown"))
MAX_DECIMALS = 8  # the store's scale (Decimal(38, 8)): finer values would be rounded, so refuse them


def _check(row: TradeRow) -> None:
    price, size = row.price, row.size
    if not (price > 0 and size > 0) or row.side not in _SIDES:
        raise WireError(f"trade {row.trade_id}: price and size must be positive, side one of {sorted(_SIDES)}")
    if -price.as_tuple().exponent > MAX_DECIMALS or -size.as_tuple().exponent > MAX_DECIMALS:  # type: ignore[operator]
        raise WireError(f"trade {row.trade_id}: more than {MAX_DECIMALS} decimal places")


def decode_trade_batch(raw: bytes) -> tuple[str, str, list[TradeRow]]:
    """Fast decode for agents: (venue, symbol, rows). Raises WireError on anything malformed."""
    try:
        msg = orjson.loads(raw)
        if msg["schema"] != TRADE_BATCH:
            raise WireError(f"expected {TRADE_BATCH}, got {msg['schema']!r}")
        # tuple.__new__ builds the same TradeRow without the Python-level __new__ that
        # NamedTuple generates: decode runs ~20 % faster (tests/bench/bench_candles.py).
        rows = [
            _new_row(TradeRow, (str(r[0]), Decimal(r[1]), Decimal(r[2]), r[3], int(r[4]), int(r[5])))
            for r in msg["trades"]
        ]
        for row in rows:
            _check(row)
        return msg["venue"], msg["symbol"], rows
    except WireError:
        raise
    except Exception as exc:  # orjson, KeyError, decimal.InvalidOperation, IndexError...
        raise WireError(f"malformed {TRADE_BATCH}: {exc!r}") from exc


def trades_from_batch(raw: bytes) -> list[Trade]:
    """Full validation through the models: slower, for edges and tests."""
    venue, symbol, rows = decode_trade_batch(raw)
    return [
        Trade(
            venue=venue,
            symbol=symbol,
            trade_id=r.trade_id,
            price=r.price,
            size=r.size,
            side=Side(r.side),
            event_ts_ns=r.event_ts_ns,
            recv_ts_ns=r.recv_ts_ns,
        )
        for r in rows
    ]


def encode_book_batch(venue: str, symbol: str, updates: Iterable[BookDelta | BookSnapshot]) -> bytes:
    return orjson.dumps(
        {
            "schema": BOOK_BATCH,
            "venue": venue,
            "symbol": symbol,
            "updates": [u.model_dump(mode="json") for u in updates],
        }
    )


def decode_book_batch(raw: bytes) -> tuple[str, str, list[BookDelta | BookSnapshot]]:
    try:
        msg = orjson.loads(raw)
        if msg["schema"] != BOOK_BATCH:
            raise WireError(f"expected {BOOK_BATCH}, got {msg['schema']!r}")
        updates: list[BookDelta | BookSnapshot] = []
        for u in msg["updates"]:
            model = BookSnapshot if u.get("schema_version") == "book_snapshot.v1" else BookDelta
            updates.append(model.model_validate(u))
        return msg["venue"], msg["symbol"], updates
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"malformed {BOOK_BATCH}: {exc!r}") from exc


def encode_event(event: BaseModel) -> bytes:
    return orjson.dumps(event.model_dump(mode="json"))


def decode_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireError(str(exc)) from exc


def iter_batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
