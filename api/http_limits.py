"""Limits uvicorn's httptools protocol lacks: a deadline for each request's line and headers, and
caps on their total size and on the number of header fields.

uvicorn's keep-alive timeout only runs between requests, and its httptools protocol keeps every
header a client sends: a client that trickles a request head byte by byte (slowloris), or sends
endless headers, holds a connection and memory for as long as it likes. Here the head must be
complete within `head_timeout_s` of its first byte (of the connection, for the first request)
or the connection is closed; a head over `max_header_bytes` or `max_header_count` fields gets
400 and the connection is closed. The body's deadline and size are the security middleware's
(api/security.py), where the answer can carry the error envelope.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools turns it into a parser error, uvicorn into a 400."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 16 * 1024
    max_header_count = 100
    head_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._header_count = 0

    def _start_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        # Nothing has reached the application yet: there is no request to answer, only a
        # connection to drop.
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a complete head is dropped too, not only a slow one.
        self._start_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._header_count = 0
        self._start_head_deadline()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            raise HeadTooLarge("request head too large")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_header_count:
            raise HeadTooLarge("too many header fields")
        self._count(len(name) + len(value) + 4)  # ": " and CRLF, as on the wire
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_deadline()
        super().on_headers_complete()


def bounded_httptools_protocol(
    *, max_header_bytes: int, max_header_count: int, head_timeout_s: float
) -> type[BoundedHttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` (uvicorn instantiates it per connection,
    so the limits travel as class attributes)."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "max_header_count": max_header_count,
            "head_timeout_s": head_timeout_s,
        },
    )
