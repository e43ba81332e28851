"""The venue adapter contract. Pure: no ccxt, no sockets.

To add a venue, write one module in `streams/core/venues/` that defines `VENUE`, an instance
of `Venue` (or of a subclass that overrides a check), with:

- `name`: our venue tag, the first half of every stream key (`binance-usdm:ETH-USDT`);
- `ccxt_id`, `kind`, `ccxt_options`: which ccxt.pro class reaches it live, for which market
  type, with which constructor options; `ccxt_id=None` for a venue we only replay;
- symbol mapping: `ccxt_symbol(symbol)` (ours `BASE-QUOTE` to ccxt's unified spelling; the
  venue's own id comes from ccxt's market list at run time, because only the venue knows it);
- trade policy: `consecutive_trade_ids` (a missing id is a gap) and `backfill` (how trades
  missed during an outage are fetched over REST);
- book policy: `book_rules` (how diffs follow a snapshot, for `streams.core.orderbook.SequencedBook`),
  `book_limit` (depth to subscribe to), `book_update_id_is_venue_id` (ccxt's book nonce is the
  venue's own update id, which only grows);
- checks ccxt does not make: `message_sequence()` (a per-connection message counter, returns a
  fresh `MessageSequence` or None) and `book_checksums(message)` / `book_checksum(...)` (a
  checksum the venue sends with its book messages).

then add the module to `streams.core.venues.registry.MODULES`. `tests/unit/test_venues.py`
checks every registered venue against this contract. The connector
(`streams/ingest/connector.py`) stays generic: it only asks the venue's `Venue`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.symbols import normalize_symbol

MarketKind = Literal["spot", "linear", "inverse"]


@dataclass(frozen=True)
class BookRules:
    """How a venue's depth diffs follow a snapshot and each other: the parameter of a
    `streams.core.orderbook.SequencedBook`. A diff carries its first and last update ids `U`, `u`
    and, on some venues, the previous diff's last id `pu`; a snapshot carries its id `L`."""

    name: str  # written into book_gap / book_resync details
    # later diffs: `pu == previous u` (True) or `U == previous u + 1` (False)
    chained_by_previous_id: bool
    # the first diff after a snapshot: `U <= L <= u`, diffs with `u < L` stale (True); or
    # `U <= L + 1 <= u`, diffs with `u <= L` stale (False)
    first_diff_holds_snapshot_id: bool


# For venues whose connector publishes whole books (ccxt's, every 100 ms) rather than diffs:
# each newer snapshot replaces the book; these rules would only judge diffs, which never come.
WHOLE_BOOKS = BookRules("whole_books", chained_by_previous_id=False, first_diff_holds_snapshot_id=False)


@dataclass(frozen=True)
class Backfill:
    """How missed trades are fetched after a reconnect: ccxt `fetch_trades` params, whether the
    venue takes a start time (Binance's recent-trades endpoint refuses one), and whether it
    wants an end time with it (`until`)."""

    params: Mapping[str, Any] = field(default_factory=dict)
    since: bool = True
    until: bool = False


class MessageSequence:
    """A per-connection message counter the venue sends and ccxt does not check (Coinbase's
    `sequence_num`). One per socket: `observe` returns why the socket's books cannot be trusted
    (a message never arrived), or None."""

    __slots__ = ("field", "next")

    def __init__(self, field_name: str) -> None:
        self.field = field_name
        self.next: int | None = None

    def observe(self, message: Any) -> str | None:
        if not isinstance(message, dict):
            return None
        got = message.get(self.field)
        if type(got) is not int:
            return None
        expected, self.next = self.next, got + 1
        if expected is not None and got != expected:
            return f"message {expected} expected, got {got}"
        return None


@dataclass(frozen=True)
class Venue:
    """One venue's facts and checks (see the module docstring). Subclass it to override a check."""

    name: str
    ccxt_id: str | None  # None: replayed only, never reached live
    kind: MarketKind
    book_rules: BookRules
    ccxt_options: Mapping[str, Any] = field(default_factory=dict)
    consecutive_trade_ids: bool = False
    backfill: Backfill = field(default_factory=Backfill)
    book_limit: int | None = None  # None: the venue's full diff stream
    book_update_id_is_venue_id: bool = False

    @property
    def live(self) -> bool:
        return self.ccxt_id is not None

    def ccxt_symbol(self, symbol: str) -> str:
        """`ETH-USDT` -> `ETH/USDT` (spot); `ETH/USDT:USDT` (USD-M perpetual, settled in the
        quote); `ETH/USD:ETH` (COIN-M perpetual, settled in the base)."""
        return to_ccxt_symbol(symbol, self.kind)

    def message_sequence(self) -> MessageSequence | None:
        """A fresh per-connection message check, where the venue numbers its messages."""
        return None

    def book_checksums(self, message: Any) -> Sequence[tuple[str, int | None]]:
        """(ccxt symbol, the venue's checksum or None) of every book a message updates, where
        the venue checksums its books; empty otherwise."""
        return ()

    def book_checksum(self, asks: Sequence[Sequence[Any]], bids: Sequence[Sequence[Any]],
                      price_tick: Any, amount_tick: Any) -> int | None:
        """Our checksum of a book (levels best first, ccxt's floats) in the venue's way, to
        compare with the one it sent; None where the venue sends none."""
        return None


def to_ccxt_symbol(symbol: str, kind: MarketKind = "spot") -> str:
    base, quote = normalize_symbol(symbol).split("-")
    if kind == "spot":
        return f"{base}/{quote}"
    return f"{base}/{quote}:{quote if kind == 'linear' else base}"


def from_ccxt_symbol(unified: str) -> str:
    """`ETH/USDT` or `ETH/USDT:USDT` -> `ETH-USDT`."""
    pair = unified.split(":", 1)[0]
    base, _, quote = pair.partition("/")
    return normalize_symbol(f"{base}-{quote}")
