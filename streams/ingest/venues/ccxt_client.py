"""ccxt.pro clients for the venues of `streams.core.venues.registry`, generic: every per-venue
fact or check comes from the venue's `Venue` (`streams.core.venues.contract`).

`guarded_exchange` adds four things ccxt does not do:
- every frame, as received and before it is decoded, is handed to `hooks.raw_frame` (the
  recorder of `entasis connect --record`);
- a malformed frame is reported (dead letter) instead of killing the socket's receive loop;
- the time of the last data message per socket is kept (`_entasis_last_data`, ms), for the
  stall watchdog: ccxt's own `last_message_at` counts pongs, and a stalled venue still answers
  pings;
- where the venue numbers the messages of a connection (`Venue.message_sequence`) or checksums
  its books (`Venue.book_checksums`), and ccxt does not check, the client does: a hole or a
  mismatch means the books on that socket cannot be trusted.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final, Protocol

import ccxt.pro as ccxtpro

from streams.core.venues.contract import Venue
from streams.core.venues.registry import LIVE_VENUES


class ExchangeHooks(Protocol):
    def malformed(self, url: str, message: Any, error: str) -> None: ...

    def books_broken(self, client: Any, reason: str) -> None: ...

    def raw_frame(self, data: Any) -> None: ...


def guarded_exchange(venue_name: str, endpoint: str | None, hooks: ExchangeHooks) -> Any:
    """A ccxt.pro client for the venue, pointed at `endpoint` (an exchange double) when given,
    with the guards of the module docstring."""
    venue = LIVE_VENUES[venue_name]
    base = _ccxt_class(venue)

    class Guarded(base):  # type: ignore[misc,valid-type]
        def handle_message(self, client: Any, message: Any) -> Any:
            client._entasis_last_data = time.time() * 1000
            if not isinstance(message, dict | list):
                hooks.malformed(client.url, message, "not a JSON object or array")
                return None
            sequence = getattr(client, "_entasis_sequence", None)
            if sequence is not None:
                broken = sequence.observe(message)
                if broken is not None:
                    hooks.books_broken(client, broken)
                    return None
            checksums = venue.book_checksums(message)
            if isinstance(message, dict) and message.get("type") == "update" and any(
                    symbol not in self.orderbooks for symbol, _ in checksums):
                return None  # for a book dropped after a mismatch: ccxt would raise KeyError
            try:
                result = super().handle_message(client, message)
            except Exception as exc:  # ccxt would lose the socket's receive loop
                hooks.malformed(client.url, message, f"{type(exc).__name__}: {exc}")
                return None
            for symbol, expected in checksums:
                self._check_book(client, symbol, expected)
            return result

        def _check_book(self, client: Any, symbol: str, expected: int | None) -> None:
            book = self.orderbooks.get(symbol)
            if book is None or expected is None:
                return
            precision = self.market(symbol)["precision"]
            got = venue.book_checksum(book["asks"], book["bids"], precision.get("price"), precision.get("amount"))
            if got is not None and got != expected:
                hooks.books_broken(client, f"{symbol} book checksum {got} != venue's {expected}")

        def client(self, url: str) -> Any:
            c = super().client(url)
            if not getattr(c, "_entasis_guarded", False):
                decode = c.handle_text_or_binary_message

                def guarded(data: Any) -> None:
                    hooks.raw_frame(data)
                    try:
                        decode(data)
                    except ValueError as exc:  # orjson's JSONDecodeError: a truncated frame
                        hooks.malformed(url, data, f"invalid JSON: {exc}")

                c.handle_text_or_binary_message = guarded
                c._entasis_sequence = venue.message_sequence()
                c._entasis_guarded = True
            return c

    return _configured(Guarded, venue, endpoint)


def plain_exchange(venue_name: str, endpoint: str | None = None) -> Any:
    """A stock ccxt.pro client for the venue, configured as the connectors' (market lists, checks)."""
    venue = LIVE_VENUES[venue_name]
    return _configured(_ccxt_class(venue), venue, endpoint)


def _ccxt_class(venue: Venue) -> Any:
    return getattr(ccxtpro, str(venue.ccxt_id))


def _configured(cls: Any, venue: Venue, endpoint: str | None) -> Any:
    """ccxt's rate limiter on, the venue's options, pointed at `endpoint` (an exchange double)
    when given."""
    exchange = cls({"enableRateLimit": True, "options": dict(venue.ccxt_options), "newUpdates": True})
    if endpoint:
        exchange.urls["api"] = point_urls_at(exchange.urls["api"], endpoint, venue.name)
    return exchange


def point_urls_at(urls: Any, base: str, venue: str) -> Any:
    """ccxt's `urls["api"]` with every endpoint moved to `base/<venue>`, keeping its path:
    `https://api.binance.com/api/v3` -> `http://127.0.0.1:8900/binance/api/v3`, and
    `wss://stream.binance.com:9443/ws` -> `ws://127.0.0.1:8900/binance/ws`. This is how the
    connectors reach the local exchange double instead of the internet."""
    if isinstance(urls, dict):
        return {k: point_urls_at(v, base, venue) for k, v in urls.items()}
    if isinstance(urls, list):
        return [point_urls_at(v, base, venue) for v in urls]
    if not isinstance(urls, str) or "://" not in urls:
        return urls
    scheme, rest = _URL.match(urls).groups()  # type: ignore[union-attr]  # "://" is in it
    target_scheme, target_rest = _URL.match(base.rstrip("/")).groups()  # type: ignore[union-attr]
    if scheme in ("ws", "wss"):
        target_scheme = "wss" if target_scheme == "https" else "ws"
    path = rest[len(rest.split("/", 1)[0]):].rstrip("/")  # drop the host[:port]
    return f"{target_scheme}://{target_rest}/{venue}{path}"


_URL: Final = re.compile(r"^([a-z]+)://(.*)$")
