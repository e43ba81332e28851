"""The book topic's decoder checks plainly written updates itself and builds them without pydantic
(`schemas.codecs.book._plain_update`). It must accept exactly what the pydantic path accepts and
decode it to the same values: the oracle here is that path written out again (pydantic's
`model_validate` plus the store's bounds from `schemas.limits`), independent of the fast code."""

from __future__ import annotations

import gzip
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codecs import book
from schemas.codecs.envelope import WireError
from schemas.events import BookDelta, BookSnapshot
from schemas.limits import MAX_UPDATE_ID, count_problem, level_problem
from schemas.text_memo import MAX_TEXTS
from streams.core.venues.binance import parse_line
from tests.level_keys_oracle import assert_keys_of_texts
from tests.shared_data import BINANCE

CAPTURES = {"usdm": ("usdm_ethusdt_20240808.gz", "ETHUSDT"), "spot": ("spot_ethusdt_20240808.gz", "ETHUSDT"),
            "cm": ("cm_ethusd_perp_20240808.gz", "ETHUSD_PERP")}  # fmt: skip


def recorded_updates(market: str, limit: int = 400) -> list[dict[str, Any]]:
    """Book diffs and snapshots of a capture, as `encode_book_batch` writes them on the wire."""
    name, symbol = CAPTURES[market]
    out: list[dict[str, Any]] = []
    with gzip.open(BINANCE / name, "rb") as f:
        for line in f:
            if b"@depth" in line[:80] or b'{"lastUpdateId"' in line[:40]:
                for e in parse_line(line.rstrip(b"\n"), market, symbol):  # type: ignore[arg-type]
                    if isinstance(e, BookDelta | BookSnapshot):
                        out.append(orjson.loads(book.encode_book_batch(e.venue, e.symbol, [e]))["updates"][0])
            if len(out) >= limit:
                break
    return out


def oracle(u: Any) -> BookDelta | BookSnapshot:
    """The pydantic path: what the decoder accepted before it had a fast path."""
    model = BookSnapshot if isinstance(u, dict) and u.get("schema_version") == book.BOOK_SNAPSHOT else BookDelta
    update = model.model_validate(u)
    for price, size in (*update.bids, *update.asks):
        if problem := level_problem(price, size):
            raise ValueError(problem)
    for name in ("first_update_id", "last_update_id", "prev_update_id"):
        value = getattr(update, name, None)
        if value is not None and (problem := count_problem(value, name, MAX_UPDATE_ID)):
            raise ValueError(problem)
    return update


def decoded(u: Any) -> BookDelta | BookSnapshot:
    """`u` through the decoder, as the JSON object `load` hands it (2**64 has no orjson encoding)."""
    msg = {"schema_version": book.BOOK_BATCH, "venue": "binance", "symbol": "ETH-USDT", "updates": [u]}
    return book._decode_book_batch(msg)[2][0]


def exact(update: BookDelta | BookSnapshot) -> tuple[Any, ...]:
    """Every field, decimals by their text (1.50 and 1.5 are equal but print apart)."""
    def text(levels: tuple[tuple[Decimal, Decimal], ...]) -> list[tuple[str, str]]:
        return [(str(p), str(s)) for p, s in levels]

    # with each value's type: True == 1, but an id must come out an int
    fields = {k: (type(v), v) for k, v in update.__dict__.items() if k in type(update).model_fields}
    fields.pop("bids"), fields.pop("asks")
    return type(update), fields, text(update.bids), text(update.asks), type(update.bids), type(update.bids[:1])


def same_outcome(u: Any) -> None:
    try:
        expected: Any = exact(oracle(u))
    except Exception:
        expected = "refused"
    try:
        got: Any = exact(decoded(u))
    except WireError:
        got = "refused"
    assert got == expected, u


@pytest.mark.parametrize("market", sorted(CAPTURES))
def test_recorded_updates_take_the_fast_path_and_decode_as_pydantic_does(market: str) -> None:
    updates = recorded_updates(market)
    assert any(u["schema_version"] == book.BOOK_SNAPSHOT for u in updates) or market != "cm"
    for u in updates:
        fast = book._plain_update(u)
        assert fast is not None, u  # the recorded data is what the fast path is for
        assert exact(fast) == exact(oracle(u))
        assert fast == oracle(u)
        assert_keys_of_texts(fast, u["bids"], u["asks"])


ODD_VALUES: list[Any] = [True, False, 1.0, "5", -1, 2**64, 2**63, None, [], {}, "x", 0]
ODD_LEVELS: list[Any] = [
    ["1.50 ", "2"], [" 1.50", "2"], ["1_0", "2"], ["1e2", "2"], ["1E-2", "2"], ["\uff11", "2"], [1, "2"], ["1", 2],
    [1.5, "2"], ["0", "1"], ["0.0", "1"], ["1", "0"], ["1", "0.00000000"], ["1", "-0"], ["-1", "1"], ["+1", "1"],
    ["1.123456789", "1"], ["1", "1.123456789"], ["1e30", "1"], ["1" + "0" * 30, "1"], ["1", "1" + "0" * 20],
    ["9" * 30 + ".99999999", "1"], ["NaN", "1"], ["Infinity", "1"], ["1", "sNaN"], [".5", "1"], ["5.", "1"],
    ["", "1"], ["1", "2", "3"], ["1"], "12", {"1": "2"}, ["007.50", "010"], [True, "1"], [None, "1"],
]


def base_updates() -> list[dict[str, Any]]:
    updates = recorded_updates("usdm", limit=50)
    delta = next(u for u in updates if u["schema_version"] == book.BOOK_DELTA)
    snapshot = next(u for u in updates if u["schema_version"] == book.BOOK_SNAPSHOT)
    spot = next(u for u in recorded_updates("spot", limit=20) if u["schema_version"] == book.BOOK_DELTA)
    return [{**delta, "bids": delta["bids"][:3], "asks": delta["asks"][:3]},
            {**snapshot, "bids": snapshot["bids"][:3], "asks": snapshot["asks"][:3]}, spot]  # fmt: skip


def test_odd_fields_are_refused_or_decoded_exactly_as_pydantic_does() -> None:
    checked = 0
    for base in base_updates():
        for field in base:
            for value in ODD_VALUES:
                same_outcome({**base, field: value})
                checked += 1
            missing = dict(base)
            del missing[field]
            same_outcome(missing)
        same_outcome({**base, "extra": 1})
        for level in ODD_LEVELS:
            same_outcome({**base, "bids": [*base["bids"], level]})
            same_outcome({**base, "asks": [level]})
            checked += 2
        same_outcome({**base, "schema_version": "book_delta.v2"})
    assert checked > 200


def test_the_bad_level_is_refused_after_the_same_text_was_read_as_the_other_kind() -> None:
    """A size of 0 is remembered as a size; the same text as a price must still be refused."""
    base = base_updates()[0]
    same_outcome({**base, "bids": [["2000.00", "0.00000000"]]})
    same_outcome({**base, "bids": [["0.00000000", "1.000"]]})
    with pytest.raises(WireError):
        decoded({**base, "bids": [["0.00000000", "1.000"]]})


decimal_text = st.text(alphabet="0123456789.-+_eE \uff11", min_size=0, max_size=14)


@settings(max_examples=300, deadline=None)
@given(price=decimal_text, size=decimal_text)
def test_any_level_text_gets_the_pydantic_outcome(price: str, size: str) -> None:
    base = base_updates()[0]
    same_outcome({**base, "asks": [[price, size]]})


def test_the_remembered_level_texts_stay_bounded() -> None:
    book.forget_level_values()
    base = base_updates()[0]
    for i in range(MAX_TEXTS + 10):
        book._plain_update({**base, "bids": [[f"{i + 1}.5", "1"]], "asks": []})
    assert 0 < len(book._PRICES) <= MAX_TEXTS
