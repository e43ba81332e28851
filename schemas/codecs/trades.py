"""`md.trades.v1`: one `trade_batch.v1` per message, several trades of one stream.

Faust costs about the same per message whatever the agent does (~15k messages/s per worker,
docs/architecture.md), so a message carries a batch: one exchange frame, or a few milliseconds
of one symbol's trades. Trades travel as compact rows, not dicts, because decoding dominates
the cost of the candle path:

    trade_batch.v1 = {"schema_version": "trade_batch.v1", "venue": str, "symbol": str,
                      "trades": [[trade_id, price, size, side, event_ts_ns, recv_ts_ns], ...]}

Prices and sizes are decimal strings; a value the store's Decimal(38, 8) cannot hold exactly
(more than 8 places, more than 30 integer digits), a price or size that is not positive, a size
of 1e20 or more, a time outside int64 nanoseconds, a venue or symbol off its pattern, or a side
other than buy/sell/unknown is refused (bounds: `schemas.limits`). Decoders also accept the old envelope key `schema`
(see `schemas.codecs.envelope`).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Context, Decimal, InvalidOperation
from typing import Any, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from schemas.codecs.envelope import DEC, MAX_DECIMALS, TS, VERSION_KEY, WireError, decimals, version_of
from schemas.events import Side, Trade
from schemas.limits import MAX_PRICE, MAX_SIZE, MAX_TIME_NS, stream_problem, trade_problem
from schemas.text_memo import remember

TRADE_BATCH = "trade_batch.v1"
FORMATS = (TRADE_BATCH,)
TRADE: str = Trade.model_fields[VERSION_KEY].default  # the format of one trade as a model (`Trade`)
SIDES = ("buy", "sell", "unknown")


class TradeRow(NamedTuple):
    """A trade as the hot path sees it: decimals already parsed, times in ns."""

    trade_id: str
    price: Decimal
    size: Decimal
    side: str
    event_ts_ns: int
    recv_ts_ns: int


def encode(venue: str, symbol: str, trades: Sequence[Trade]) -> bytes:
    rows = [
        [t.trade_id, format(t.price, "f"), format(t.size, "f"), t.side.value, t.event_ts_ns, t.recv_ts_ns]
        for t in trades
    ]
    return _message(venue, symbol, rows)


def encode_rows(venue: str, symbol: str, rows: Sequence[TradeRow]) -> bytes:
    """The same message from decoded rows (benchmarks, re-publishing)."""
    trades = [[r.trade_id, format(r.price, "f"), format(r.size, "f"), r.side, r.event_ts_ns, r.recv_ts_ns]
              for r in rows]
    return _message(venue, symbol, trades)


def encode_columns(
    venue: str,
    symbol: str,
    trade_ids: Sequence[str],
    prices: Sequence[str],
    sizes: Sequence[str],
    sides: Sequence[str],
    event_ns: Sequence[int],
    recv_ns: Sequence[int],
) -> bytes:
    """The same message from columns of wire values (decimal text, side names): no row object
    built per trade, for a feed that publishes at a million trades a second."""
    return _message(venue, symbol, list(zip(trade_ids, prices, sizes, sides, event_ns, recv_ns, strict=True)))


def _message(venue: str, symbol: str, rows: Sequence[Sequence[Any]]) -> bytes:
    """The one place the `trade_batch.v1` envelope is written; `rows` already hold wire values."""
    return orjson.dumps({VERSION_KEY: TRADE_BATCH, "venue": venue, "symbol": symbol, "trades": rows})


def peek(raw: bytes) -> tuple[str, str, list[Any]]:
    """(venue, symbol, raw rows) with the rows unchecked: for a counter that needs only the number
    of trades or the last id, at the cost of one JSON parse. WireError if the envelope is wrong."""
    try:
        return _open(raw)
    except WireError:
        raise
    except Exception as exc:  # orjson, KeyError, AttributeError...
        raise WireError(f"malformed {TRADE_BATCH}: {exc!r}") from exc


def _open(raw: bytes) -> tuple[str, str, list[Any]]:
    """(venue, symbol, raw rows) of a trade_batch.v1: the one place its envelope is read.
    Raises anything orjson, dict or list access raise; callers turn that into WireError."""
    msg = orjson.loads(raw)
    version = version_of(msg, legacy=True)
    if version != TRADE_BATCH:
        raise WireError(f"expected {TRADE_BATCH}, got {version!r}")
    venue, symbol, trades = msg["venue"], msg["symbol"], msg["trades"]
    if not (isinstance(venue, str) and isinstance(symbol, str) and isinstance(trades, list)):
        raise WireError(f"malformed {TRADE_BATCH}: venue and symbol must be strings, trades a list")
    return venue, symbol, trades


_new_row = tuple.__new__
_SIDES = frozenset(SIDES)
_TIME = (int, float)  # exactly these types: bool is a subclass of int
_QUANT = Decimal(1).scaleb(-MAX_DECIMALS)
# Quantizing to 8 places at 38 digits of precision leaves a value unchanged exactly when the
# store's Decimal(38, 8) holds it; a value with more than 30 integer digits raises instead.
# Several times cheaper than reading the exponent through `as_tuple()`.
_fit = Context(prec=38, traps=[InvalidOperation]).quantize


# Prices and sizes already read and checked, by their text. A stream's trades repeat the same
# prices (one tick grid) and many sizes, and a hit skips Decimal(), the bounds and the 8-places
# check: most of `decode`'s cost per trade (tests/bench/bench_candles.py). Only values that passed
# are kept, so a hit is valid; bounded (`schemas.text_memo`).
_PRICES: dict[str, Decimal] = {}
_SIZES: dict[str, Decimal] = {}


def forget_known_values() -> None:
    """Empty the remembered prices and sizes (a benchmark measuring fresh values, a test)."""
    _PRICES.clear()
    _SIZES.clear()


def decode(raw: bytes) -> tuple[str, str, list[TradeRow]]:
    """Fast decode for agents: (venue, symbol, rows). Raises WireError on anything malformed."""
    try:
        venue, symbol, trades = _open(raw)
        problem = stream_problem(venue, symbol)
        if problem:
            raise WireError(problem)
        # Decimal(), int() and str() below would take a JSON true as 1 (a trade at 1 ns, stored), a string
        # as a time and a null id as "None"; a float time goes on to int() and the range check, which
        # names it (orjson reads 2**64 as a float)
        if any(type(r[0]) is not str or type(r[1]) is not str or type(r[2]) is not str
               or type(r[4]) not in _TIME or type(r[5]) not in _TIME for r in trades):  # fmt: skip
            raise WireError(f"malformed {TRADE_BATCH}: ids, prices and sizes must be strings, times numbers")
        known_price, known_size = _PRICES.get, _SIZES.get
        rows: list[TradeRow] = []
        append = rows.append
        for r in trades:
            # a valid price or size is never zero, so `or` reads the text only on a miss
            price = known_price(r[1]) or _read(r[1], _PRICES, MAX_PRICE)
            size = known_size(r[2]) or _read(r[2], _SIZES, MAX_SIZE)
            ets, rts = int(r[4]), int(r[5])
            if (price is None or size is None or not (0 <= ets <= MAX_TIME_NS and 0 <= rts <= MAX_TIME_NS)
                    or r[3] not in _SIDES):  # fmt: skip
                return venue, symbol, _checked_rows(trades)  # names the first problem (raises)
            # tuple.__new__ builds the same TradeRow without the Python-level __new__ that
            # NamedTuple generates: decode runs ~20 % faster (tests/bench/bench_candles.py).
            append(_new_row(TradeRow, (r[0], price, size, r[3], ets, rts)))
        return venue, symbol, rows
    except WireError:
        raise
    except Exception as exc:  # orjson, KeyError, decimal.InvalidOperation, IndexError, TypeError...
        raise WireError(f"malformed {TRADE_BATCH}: {exc!r}") from exc


def _read(text: str, known: dict[str, Decimal], bound: Decimal) -> Decimal | None:
    """`text` as a Decimal above zero and below `bound` with at most 8 places, remembered in
    `known`; None when it is not one (`_checked_rows` then says why)."""
    try:
        value = Decimal(text)
        if not (0 < value < bound) or _fit(value, _QUANT) != value:
            return None
    except InvalidOperation:  # not a number, NaN compared, more than 30 integer digits
        return None
    return remember(known, text, value)


def _checked_rows(trades: list[Any]) -> list[TradeRow]:
    """Every row read afresh and checked in order; raises WireError naming the first problem."""
    rows = [_new_row(TradeRow, (r[0], Decimal(r[1]), Decimal(r[2]), r[3], int(r[4]), int(r[5]))) for r in trades]
    for row in rows:
        price, size, ets, rts = row.price, row.size, row.event_ts_ns, row.recv_ts_ns
        # inline bounds first; schemas.limits names the problem when one fails
        if not (0 < price < MAX_PRICE and 0 < size < MAX_SIZE and 0 <= ets <= MAX_TIME_NS
                and 0 <= rts <= MAX_TIME_NS):
            raise WireError(f"trade {row.trade_id}: {trade_problem(price, size, ets, rts)}")
        if row.side not in _SIDES:
            raise WireError(f"trade {row.trade_id}: side must be one of {SIDES}, got {row.side!r:.20}")
        if _fit(price, _QUANT) != price or _fit(size, _QUANT) != size:
            raise WireError(f"trade {row.trade_id}: more than {MAX_DECIMALS} decimal places")
    return rows


def decode_trades(raw: bytes) -> list[Trade]:
    """Full validation through the models: slower, for edges and tests."""
    venue, symbol, rows = decode(raw)
    return [
        Trade(venue=venue, symbol=symbol, trade_id=r.trade_id, price=r.price, size=r.size, side=Side(r.side),
              event_ts_ns=r.event_ts_ns, recv_ts_ns=r.recv_ts_ns)
        for r in rows
    ]


# --- the `trades` table (infra/store/migrations) ------------------------------------------------


def table(batches: Sequence[tuple[str, str, Sequence[TradeRow]]]) -> pa.Table:
    """Rows of `trades` from decoded batches (venue, symbol, rows)."""
    venues, symbols, ids, prices, sizes, sides, ets, rts = [], [], [], [], [], [], [], []
    for venue, symbol, rows in batches:
        for r in rows:
            venues.append(venue)
            symbols.append(symbol)
            ids.append(r.trade_id)
            prices.append(r.price)
            sizes.append(r.size)
            sides.append(r.side)
            ets.append(r.event_ts_ns)
            rts.append(r.recv_ts_ns)
    return _table(venues, symbols, ids, decimals(prices), decimals(sizes), sides, ets, rts)


def table_from_raw(messages: Sequence[bytes]) -> pa.Table:
    """Rows of `trades` straight from trade_batch.v1 bytes, with no Python Decimal per value:
    Arrow parses the decimal strings (several times faster; the sink is on the worker's hot
    path). Refuses the whole list (WireError, or Arrow's own error for a value that would not
    fit exactly or a trade id that is not a string, as `decode` refuses it) if any message is
    malformed: the caller falls back to `decode` per message."""
    venues: list[str] = []
    symbols: list[str] = []
    ids: list[str] = []
    prices: list[str] = []
    sizes: list[str] = []
    sides: list[str] = []
    ets: list[int] = []
    rts: list[int] = []
    for raw in messages:
        venue, symbol, rows = peek(raw)
        problem = stream_problem(venue, symbol)
        if problem:
            raise WireError(problem)
        if not rows:
            continue
        venues += [venue] * len(rows)
        symbols += [symbol] * len(rows)
        # One transposition in C per message instead of six appends per trade. A row of another
        # length fails it (strict, or the unpacking); a row that is no list gives values of the
        # wrong types, which the checks below refuse (times must be ints, texts strings).
        row_ids, row_prices, row_sizes, row_sides, row_ets, row_rts = zip(*rows, strict=True)
        ids += row_ids
        prices += row_prices
        sizes += row_sizes
        sides += row_sides
        ets += row_ets
        rts += row_rts
    price = pa.array(prices, pa.string()).cast(DEC)
    size = pa.array(sizes, pa.string()).cast(DEC)
    if pc.any(pc.less_equal(price, 0)).as_py() or pc.any(pc.less_equal(size, 0)).as_py():
        raise WireError("a price or size is not positive")
    if pc.any(pc.greater_equal(size, pa.scalar(MAX_SIZE, DEC))).as_py():
        raise WireError(f"a size is not below {MAX_SIZE}")
    # exactly int (bool is a subclass, a float may be integral): checked by type in C, bounds by min/max
    if ets and (not set(map(type, ets)) | set(map(type, rts)) <= {int}
                or min(min(ets), min(rts)) < 0 or max(max(ets), max(rts)) > MAX_TIME_NS):  # fmt: skip
        raise WireError("a time is not integer nanoseconds within int64")
    if not pc.all(pc.is_in(pa.array(sides, pa.string()), pa.array(SIDES))).as_py():
        raise WireError(f"a side is not one of {SIDES}")
    return _table(venues, symbols, ids, price, size, sides, ets, rts)


def table_for_sink(messages: Sequence[bytes]) -> pa.Table:
    """The rows of `trades` a batch of raw messages stores: `table_from_raw`, or, when it refuses
    the batch, every message `decode` accepts (the rest are skipped: the candles agent
    dead-letters each of them, one report per message)."""
    try:
        return table_from_raw(messages)
    except Exception:  # something malformed in the batch: the careful path keeps the rest
        batches: list[tuple[str, str, list[TradeRow]]] = []
        for raw in messages:
            try:
                batches.append(decode(raw))
            except WireError:
                continue
        return table(batches)


def _table(venues: list[str], symbols: list[str], ids: list[str], price: pa.Array, size: pa.Array,
           sides: list[str], ets: list[int], rts: list[int]) -> pa.Table:
    return pa.table(
        {
            "venue": pa.array(venues, pa.string()),
            "symbol": pa.array(symbols, pa.string()),
            "trade_id": pa.array(ids, pa.string()),
            "price": price,
            "size": size,
            "side": pa.array(sides, pa.string()),
            "event_ts": pa.array(ets, TS),
            "recv_ts": pa.array(rts, TS),
        }
    )
