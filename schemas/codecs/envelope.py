"""What every topic value shares: a JSON object naming its format under `schema_version`.

Transition: raw batches (`trade_batch.v1`, `book_batch.v1`, `book_ticker_batch.v1`) used to name
their format under `schema`. Encoders now write only `schema_version`; the raw-batch decoders
still accept `schema` so messages already on the topics (7 days of trades, 2 of books) and
producers not yet upgraded keep decoding. Once no producer writes `schema` and the raw topics'
retention has passed, `LEGACY_KEY` and its branch in `version_of` can go.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from decimal import Context, Decimal
from typing import Any, Generic, TypeVar

import orjson
import pyarrow as pa
from pydantic import BaseModel

VERSION_KEY = "schema_version"
LEGACY_KEY = "schema"  # raw batches before the envelope key was unified; decoders still accept it

# The store's column types (infra/store/migrations/*.sql): Decimal(38, 8) and DateTime64(9, 'UTC').
DEC = pa.decimal128(38, 8)
DEC_LIST = pa.list_(DEC)
TS = pa.timestamp("ns", tz="UTC")
MAX_DECIMALS = 8  # the store's scale: finer values would be rounded, so decoders refuse them
_QUANT = Decimal(1).scaleb(-MAX_DECIMALS)
# Decimal(38, 8) holds 38 digits: rounding to 8 places in the default 28-digit context would raise
# for a value of 20 integer digits or more, one the column holds.
_STORE = Context(prec=38)


class WireError(ValueError):
    """The bytes are not a message of the expected format."""


def load(raw: bytes | str, fmt: str) -> dict[str, Any]:
    """The JSON object in `raw`; WireError if it is not JSON or not an object."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"malformed {fmt}: {exc}") from exc
    if not isinstance(msg, dict):
        raise WireError(f"malformed {fmt}: not a JSON object")
    return msg


def version_of(msg: dict[str, Any], *, legacy: bool = False) -> Any:
    """The format a decoded message names; `legacy`: also read the raw batches' old `schema` key."""
    version = msg.get(VERSION_KEY)
    if version is None and legacy:
        version = msg.get(LEGACY_KEY)
    return version


def expect(msg: dict[str, Any], fmt: str, *, legacy: bool = False) -> None:
    version = version_of(msg, legacy=legacy)
    if version != fmt:
        raise WireError(f"expected {fmt}, got {version!r}")


def decimals(values: Sequence[Decimal | str | None], *, quantize: bool = False) -> pa.Array:
    """A Decimal(38, 8) column. Arrow rescales exactly and refuses to round, so a value finer
    than 8 places raises, unless `quantize` (computed values such as risk amounts) rounds it first."""
    out = [None if v is None else v if isinstance(v, Decimal) else Decimal(v) for v in values]
    if quantize:
        out = [None if v is None else v.quantize(_QUANT, context=_STORE) for v in out]
    return pa.array(out, type=DEC)


M = TypeVar("M", bound=BaseModel)


class EventCodec(Generic[M]):
    """The codec of a format that is one pydantic event per message (candles, quality events,
    risk estimates, ...): the model's JSON, `schema_version` included. `check` says what is wrong
    with a valid model that the store still cannot hold (schemas.limits): a decoder lets through
    only what its sink can insert, so one bad value costs one dead letter, never a failed batch."""

    def __init__(self, model: type[M], check: Callable[[M], str | None] | None = None):
        self.model = model
        self.check = check
        self.format: str = model.model_fields[VERSION_KEY].default

    def encode(self, event: M) -> bytes:
        if not isinstance(event, self.model):
            raise TypeError(f"{self.format} encodes {self.model.__name__}, not {type(event).__name__}")
        return orjson.dumps(event.model_dump(mode="json"))

    def decode_fields(self, raw: bytes | str) -> dict[str, Any]:
        """The message as a dict, its format checked but not its fields: for hot paths that read
        a few fields and can tell a bad one themselves (validate with `decode`)."""
        msg = load(raw, self.format)
        expect(msg, self.format)
        return msg

    def decode(self, raw: bytes | str) -> M:
        """The validated event. Unlike the model alone, a message must name its format: a model
        would fill a missing `schema_version` with its default."""
        msg = self.decode_fields(raw)
        return self.validate(msg)

    def validate(self, msg: dict[str, Any]) -> M:
        """The model of a decoded message, checked against what the store holds."""
        try:
            event = self.model.model_validate(msg)
        except ValueError as exc:  # pydantic.ValidationError
            raise WireError(f"malformed {self.format}: {exc}") from exc
        if self.check is not None and (problem := self.check(event)):
            raise WireError(f"malformed {self.format}: {problem}")
        return event

    def decode_many(self, raws: Sequence[bytes], on_error: Callable[[bytes, WireError], None] | None = None
                    ) -> list[M]:
        """The events among `raws` that decode; each one that does not goes to `on_error`."""
        events: list[M] = []
        for raw in raws:
            try:
                events.append(self.decode(raw))
            except WireError as exc:
                if on_error is not None:
                    on_error(raw, exc)
        return events


def event_id(*parts: object) -> str:
    """A stable row id for events that have none of their own, so a re-delivery dedupes."""
    return hashlib.blake2b(orjson.dumps([str(p) for p in parts]), digest_size=12).hexdigest()


def encode_event(event: BaseModel) -> bytes:
    """Any event model as its JSON (what every `EventCodec.encode` writes)."""
    return orjson.dumps(event.model_dump(mode="json"))
