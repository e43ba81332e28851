"""The embedded ClickHouse owner process.

Only one process may open a chdb data path, so this process opens it and serves ClickHouse's
HTTP interface on top of it; every other process (API, Faust workers, CLI commands) talks to it
with the stock clickhouse-connect HTTP client, unchanged, exactly as to a real ClickHouse server.

    python -m infra.dev.chdb_server --path .entasis/chdb --port 18123

What of the HTTP interface is spoken (what clickhouse-connect 1.x sends, plus what curl needs):
- GET (read-only statements) and POST on `/`; SQL in the `query` URL parameter and/or the body, joined
  by a newline as ClickHouse does; `/ping` and `/replicas_status` answer `Ok.`.
- `database`, `default_format`, `query_id`, sessions (`session_id`, `session_timeout`, `session_check`,
  `close_session`), bind parameters `param_<name>`, multipart/form-data fields; every other URL
  parameter that is not an HTTP-transport one is a query setting, applied with SET.
- Request bodies sized or chunked, plain or Content-Encoding lz4/zstd/gzip/deflate (br with brotli).
- `INSERT ... FORMAT <fmt>` with the data in the body is streamed straight into the engine.
- Errors as ClickHouse sends them: a 4xx/5xx status, `X-ClickHouse-Exception-Code` and a
  `Code: N. DB::Exception: ...` body.

Deliberately not spoken: response compression (the loopback gains nothing, and clients accept an
identity response), streamed results (results are materialised first, as with `wait_end_of_query=1`,
so an error always arrives as a status), progress headers, external data and `decompress=1` (both
answered NOT_IMPLEMENTED).

Who may talk to it (anyone on the machine can reach a loopback port, and a browser page can make the
browser post to one):
- One user, `default`, whose password is drawn at random on every start and written to
  `<path>/http-password` (mode 0600) before the port opens; clients of this machine's user read it
  there (infra/store/clickhouse.py). Every query needs it, as ClickHouse takes it: basic auth,
  X-ClickHouse-User/X-ClickHouse-Key headers, or `user`/`password` URL parameters. `/ping` does not.
- The Host header must name a loopback address (no DNS rebinding), and any Origin header is refused
  (no browser page's request).
- SQL that reaches outside the database is refused: table functions, engines and dictionary sources
  that read or write files, URLs, other servers or processes (`file`, `url`, `s3`, `remote`, `mysql`,
  `executable`, chdb's `Python`, ...), `INTO OUTFILE`/`FROM INFILE`, SYSTEM/BACKUP/RESTORE/ATTACH, and
  multi-statements (chdb would run them all; ClickHouse's HTTP interface refuses them too).
- Bodies are bounded: on the wire, decompressed, and as SQL text; lengths must be plain decimal or hex.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import email.parser
import email.policy
import fcntl
import functools
import hmac
import importlib
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from types import FrameType
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

import chdb

from infra.store.clickhouse import OWNER_PASSWORD_FILE, OWNER_USER


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# Request-body codecs: lz4 and backports.zstd come with clickhouse-connect, brotli only if installed.
_lz4_frame = _optional_module("lz4.frame")
_zstd = _optional_module("backports.zstd")
_brotli = _optional_module("brotli")

logger = logging.getLogger("infra.dev.chdb_server")

# ClickHouse error codes this module raises itself (src/Common/ErrorCodes.cpp).
_BAD_ARGUMENTS = 36
_NOT_IMPLEMENTED = 48
_SYNTAX_ERROR = 62
_READONLY = 164
_CANNOT_DECOMPRESS = 271
_TOO_MANY_BYTES = 307
_SESSION_NOT_FOUND = 372
_SESSION_IS_LOCKED = 373
_ACCESS_DENIED = 497
_AUTHENTICATION_FAILED = 516
_STD_EXCEPTION = 1001
_ERROR_NAMES = {
    _BAD_ARGUMENTS: "BAD_ARGUMENTS",
    _NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    _SYNTAX_ERROR: "SYNTAX_ERROR",
    _READONLY: "READONLY",
    _CANNOT_DECOMPRESS: "CANNOT_DECOMPRESS",
    _TOO_MANY_BYTES: "TOO_MANY_BYTES",
    _SESSION_NOT_FOUND: "SESSION_NOT_FOUND",
    _SESSION_IS_LOCKED: "SESSION_IS_LOCKED",
    _ACCESS_DENIED: "ACCESS_DENIED",
    _AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED",
    _STD_EXCEPTION: "STD_EXCEPTION",
}

# The unambiguous part of ClickHouse's exceptionCodeToHTTPStatus; everything else is a 500. No code maps to
# 429/503/504 on purpose: clickhouse-connect retries those, and none of our failures is transient.
_HTTP_STATUS_BY_CODE = {
    **dict.fromkeys((6, 26, 27, 38, 41, 53, 62, 72, 117, _BAD_ARGUMENTS), 400),
    **dict.fromkeys((194, 516), 401),
    **dict.fromkeys((_READONLY, 291, 497), 403),
    **dict.fromkeys((16, 46, 47, 50, 60, 73, 81, 115), 404),
    _TOO_MANY_BYTES: 413,
    _NOT_IMPLEMENTED: 501,
}

# URL parameters the HTTP interface consumes itself; they are never query settings. `http_*` settings and
# the progress/compression ones only shape an HTTP response we do not produce the ClickHouse way.
_TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "close_session",
        "user",
        "password",
        "quota_key",
        "role",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "stacktrace",
        "client_protocol_version",
        "enable_http_compression",
        "send_progress_in_http_headers",
        "cancel_http_readonly_queries_on_client_close",
    }
)
_TRANSPORT_PREFIXES = ("http_", "param_")

_DEFAULT_FORMAT = "TabSeparated"  # what ClickHouse answers in when neither FORMAT nor default_format says
_DEFAULT_SESSION_TIMEOUT_S = 60
_MAX_SESSION_TIMEOUT_S = 3600
_SESSION_SWEEP_INTERVAL_S = 1.0
_MAX_IDLE_POOLED_HANDLES = 16
_READ_CHUNK = 1 << 20
_COALESCED_REPLY_BYTES = 64 * 1024
_MAX_LINE = 64 * 1024
# An INSERT statement longer than this ahead of its data is run as plain SQL: correct, just not streamed.
_MAX_INSERT_HEAD = 1 << 20
# Socket timeout per read/write: how long an idle keep-alive connection (or a stalled peer) is kept.
_SOCKET_TIMEOUT_S = 60
# Request bounds. An insert streams into the engine, so its body may be large, but not endless; SQL text
# (and a multipart form) is held in memory whole, so it is bounded far lower. Decompressed bytes count
# against the same bound as wire bytes: a small gzip body must not expand into gigabytes.
MAX_BODY_BYTES = 256 << 20
MAX_QUERY_BYTES = 16 << 20
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")

_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}

# Statements that produce a result set: ClickHouse names their format in X-ClickHouse-Format even when the
# result is empty, and clickhouse-connect's command() relies on that to tell "" from a bare summary.
_RESULT_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK", "FROM"})
# What a GET may run: ClickHouse treats GET as readonly=2.
_READ_ONLY_KEYWORDS = _RESULT_KEYWORDS | {"SET", "USE"}

_LEADING_NOISE = re.compile(rb"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/|\()*", re.S)
_WORD = re.compile(rb"[A-Za-z_]+")
_TRAILING_FORMAT = re.compile(rb"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)\s*;?\s*\Z", re.I)
_INSERT_HEAD = re.compile(rb"\s*INSERT\b", re.I)
_FORMAT_CLAUSE = re.compile(rb"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)", re.I)
# An INSERT whose FORMAT follows one of these carries no data in the request (or carries it as SQL).
_NOT_A_DATA_INSERT = re.compile(rb"\b(?:VALUES|SELECT|WITH|INFILE)\b", re.I)
_CREATE_TEMPORARY = re.compile(rb"\s*CREATE\s+TEMPORARY\b", re.I)
_SET_NAMES = re.compile(r"(?:\bSET\s+|,)\s*`?([A-Za-z_][A-Za-z0-9_]*)`?\s*=", re.I)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CODE = re.compile(r"Code: (\d+)\.")
_VERSION_TRAILER = re.compile(r"\(version [^)]*\)\s*$")


class ClickHouseError(Exception):
    """A failure reported to the client the way ClickHouse reports it."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    @classmethod
    def make(cls, code: int, message: str) -> ClickHouseError:
        name = _ERROR_NAMES.get(code, "UNKNOWN_EXCEPTION")
        return cls(code, f"Code: {code}. DB::Exception: {message}. ({name})")

    @classmethod
    def from_engine(cls, exc: BaseException) -> ClickHouseError:
        """chdb raises ChdbError/RuntimeError whose text holds ClickHouse's own message, sometimes behind a
        Python-side prefix ("Streaming insert finish failed: ")."""
        message = str(exc)
        start = message.find("Code: ")
        if start < 0:
            return cls.make(_STD_EXCEPTION, message or type(exc).__name__)
        text = message[start:].strip()
        match = _CODE.match(text)
        return cls(int(match.group(1)) if match else _STD_EXCEPTION, text)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS_BY_CODE.get(self.code, 500)

    def body(self, version: str) -> bytes:
        text = self.text if _VERSION_TRAILER.search(self.text) else f"{self.text} (version {version})"
        return f"{text}\n".encode()


class EngineUnavailableError(RuntimeError):
    """The data path cannot be opened: most often another process owns it."""


# ---------------------------------------------------------------------------------------------------------
# SQL inspection: just enough to route a statement, never a parser.


def _leading_keyword(sql: bytes) -> str:
    noise = _LEADING_NOISE.match(sql)
    word = _WORD.match(sql, noise.end() if noise else 0)
    return word.group().decode().upper() if word else ""


def _trailing_format(sql: bytes) -> str | None:
    match = _TRAILING_FORMAT.search(sql[-256:])
    return match.group(1).decode() if match else None


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_literal(value: str) -> str:
    # Quoting every value is safe: ClickHouse parses a string literal into numeric and enum settings too.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------------------------------------------------
# SQL that reaches outside the database.
#
# A lexer just precise enough to tell code from string literals, quoted identifiers, comments and heredocs
# as ClickHouse's own lexer does (src/Parsers/Lexer.cpp). Where the two could disagree it errs towards
# code: a comment ends at the first CR or LF and never nests, an unterminated literal is code, `'a''b'` is
# two literals. Text taken for code can only be refused more, never run more.

_TOKEN = re.compile(
    rb"""
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<quoted>`(?:[^`\\]|\\.)*`|"(?:[^"\\]|\\.)*")
    | (?P<comment>--[^\r\n]*|\#[ !][^\r\n]*|/\*.*?\*/)
    | (?P<heredoc>\$(?P<tag>[^$]*)\$.*?\$(?P=tag)\$)
    | (?P<word>[A-Za-z0-9_$]+)
    | (?P<semicolon>;)
    | (?P<paren>\()
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.S | re.X,
)


def _lowered(*groups: str) -> frozenset[bytes]:
    return frozenset(name.lower().encode() for group in groups for name in group.split())


# Names that, called, reach outside the database: table functions, table and database engines, dictionary
# sources and functions that read or write files, URLs, object stores, other servers or processes, and
# chdb's own `python`/`arrowstream`/`eval` (this process's memory). Exact names, compared case-insensitively:
# a table or column that merely starts like one (`file_events`) is fine. The test suite checks every table
# function and engine the engine knows is either here or known to stay inside the database, so a chdb
# upgrade that brings a new one fails until it is classified.
_REACHES_OUTSIDE = _lowered(
    # table functions
    "arrowstream azureBlobStorage azureBlobStorageCluster bigquery cluster clusterAllReplicas cosn deltaLake "
    "deltaLakeAzure deltaLakeAzureCluster deltaLakeCluster deltaLakeLocal deltaLakeS3 deltaLakeS3Cluster eval "
    "executable file fileCluster filesystem gcs hdfs hdfsCluster hudi hudiCluster iceberg icebergAzure "
    "icebergAzureCluster icebergCluster icebergHDFS icebergHDFSCluster icebergLocal icebergLocalCluster "
    "icebergS3 icebergS3Cluster jdbc mongodb mysql odbc oss paimon paimonAzure paimonAzureCluster paimonCluster "
    "paimonHDFS paimonHDFSCluster paimonLocal paimonS3 paimonS3Cluster postgresql python redis remote "
    "remoteSecure s3 s3Cluster sqlite url urlCluster ytsaurus ",
    # table engines (those not named above)
    "AzureQueue Distributed ExecutablePool FileLog Kafka KeeperMap MaterializedPostgreSQL NATS QueryRunner "
    "RabbitMQ S3Queue ",
    # database engines
    "Backup DataLakeCatalog MaterializedMySQL ",
    # dictionary sources, disks declared in SQL, and the ordinary function file()
    "http clickhouse executable_pool cassandra library YAMLRegExpTree disk",
)
_FILE_KEYWORDS = frozenset({b"OUTFILE", b"INFILE"})  # INTO OUTFILE, FROM INFILE: the server's own files
_REFUSED_STATEMENTS = frozenset({"SYSTEM", "BACKUP", "RESTORE", "ATTACH"})


def refuse_outside_access(sql: bytes) -> None:
    """Raise ACCESS_DENIED for SQL that would reach outside the database, SYNTAX_ERROR for more than one
    statement (chdb runs every statement of a text; ClickHouse's HTTP interface refuses that)."""
    keyword = _leading_keyword(sql)
    if keyword in _REFUSED_STATEMENTS:
        raise ClickHouseError.make(_ACCESS_DENIED, f"{keyword} statements are not allowed through the chdb server")
    called: bytes | None = None  # a name that reaches outside, if the next token is "(" it is a call
    ended = False
    for token in _TOKEN.finditer(sql):
        kind = token.lastgroup
        if kind in ("space", "comment"):
            continue
        if ended:
            raise ClickHouseError.make(_SYNTAX_ERROR, "Multi-statements are not allowed")
        if kind == "paren" and called is not None:
            name = called.decode(errors="replace")
            raise ClickHouseError.make(_ACCESS_DENIED, f"{name}(...) reaches outside the database: not allowed")
        called = None
        if kind == "semicolon":
            ended = True
        elif kind == "word":
            word = token.group()
            if word.upper() in _FILE_KEYWORDS:
                raise ClickHouseError.make(_ACCESS_DENIED, f"{word.decode().upper()} is not allowed")
            if word.lower() in _REACHES_OUTSIDE:
                called = word
        elif kind == "quoted":
            name_bytes = token.group()[1:-1].replace(b"\\", b"")
            if name_bytes.lower() in _REACHES_OUTSIDE:
                called = name_bytes


@dataclass(frozen=True)
class _DataInsert:
    """`INSERT ... FORMAT fmt` whose data follows the statement in the request."""

    statement: str  # the INSERT without its FORMAT clause, as chdb's send_insert wants it
    fmt: str
    head: bytes  # data bytes already read while looking for the statement's end


class _Undecided:
    pass


_UNDECIDED = _Undecided()


def _match_data_insert(buf: bytes, complete: bool) -> _DataInsert | _Undecided | None:
    """Split `INSERT ... FORMAT x<data>` at the start of the data, the way ClickHouse does: after the
    format name skip blanks, then one optional CR and one optional LF. None: run the text as plain SQL."""
    if not complete and len(buf.lstrip()) < len("INSERT "):
        return _UNDECIDED
    if not _INSERT_HEAD.match(buf):
        return None
    clause = _FORMAT_CLAUSE.search(buf)
    other = _NOT_A_DATA_INSERT.search(buf, 0, clause.start() if clause else len(buf))
    if other is not None:
        return None
    if clause is None:
        return None if complete or len(buf) > _MAX_INSERT_HEAD else _UNDECIDED
    end = len(buf)
    pos = clause.end()
    while pos < end and buf[pos] in b" \t\f":
        pos += 1
    if pos < end and buf[pos] == 0x0D:
        pos += 1
    if pos >= end and not complete:
        return _UNDECIDED  # the format name or the blanks after it may continue in the next chunk
    if pos < end and buf[pos] == 0x0A:
        pos += 1
    statement = buf[: clause.start()].decode("utf-8", errors="replace")
    return _DataInsert(statement, clause.group(1).decode(), buf[pos:])


# ---------------------------------------------------------------------------------------------------------
# Request bodies.


def _too_large(what: str, limit: int) -> ClickHouseError:
    return ClickHouseError.make(_TOO_MANY_BYTES, f"{what} exceeds the chdb server's limit of {limit} bytes")


class _RequestBody:
    """The raw body as chunks of at most _READ_CHUNK bytes, sized or chunked transfer encoding, at most
    `max_bytes` in all. ValueError for framing we cannot trust (the connection must close after it)."""

    def __init__(
        self,
        rfile: io.BufferedIOBase,
        transfer_encoding: str | None,
        content_length: str | None,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._rfile = rfile
        self._max_bytes = max_bytes
        self._total = 0
        self.oversized = False  # the client sent (or announced) more than we read: never drain it
        encoding = (transfer_encoding or "").strip().lower()
        if encoding not in ("", "chunked"):
            raise ValueError(f"Unsupported Transfer-Encoding {transfer_encoding!r}")
        self._chunked = encoding == "chunked"
        if content_length is not None and (self._chunked or not _CONTENT_LENGTH.fullmatch(content_length.encode())):
            # A sign, blanks, underscores or a second framing would each let int() or a proxy read
            # another length than we do.
            raise ValueError(f"Invalid Content-Length {content_length!r}")
        self._left = 0 if self._chunked else int(content_length or 0)
        self._done = not self._chunked and self._left == 0
        if self._left > max_bytes:
            self.oversized = True
            raise _too_large("The request body", max_bytes)

    @property
    def done(self) -> bool:
        return self._done

    def chunks(self) -> Iterator[bytes]:
        while not self._done:
            data = self._next_transfer_piece() if self._chunked else self._read(self._left)
            if data:
                yield data

    def read_all(self, limit: int) -> bytes:
        data = bytearray()
        for chunk in self.chunks():
            data += chunk
            if len(data) > limit:
                self.oversized = not self._done
                raise _too_large("The request body", limit)
        return bytes(data)

    def drain(self) -> None:
        """Consume what the client still sends, so that an early error reply reaches it."""
        for _ in self.chunks():
            pass

    def _read(self, wanted: int) -> bytes:
        if self._total + wanted > self._max_bytes:
            self.oversized = True
            raise _too_large("The request body", self._max_bytes)
        data = self._rfile.read(min(wanted, _READ_CHUNK))
        if not data:
            raise ConnectionError("client closed the connection in the middle of the request body")
        self._total += len(data)
        self._left -= len(data)
        if not self._chunked and self._left == 0:
            self._done = True
        return data

    def _next_transfer_piece(self) -> bytes:
        if self._left == 0:
            size_line = self._rfile.readline(_MAX_LINE)
            size = size_line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size):  # int(x, 16) would take "-5", "0x5" and "5_0"
                raise ConnectionError(f"bad chunk size line {size_line[:40]!r}")
            self._left = int(size, 16)
            if self._left == 0:
                self._skip_trailers()
                return b""
        data = self._read(self._left)
        if self._left == 0:
            self._rfile.readline(_MAX_LINE)  # the CRLF that closes every chunk
        return data

    def _skip_trailers(self) -> None:
        while self._rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass
        self._done = True


class _ZlibStream:
    """zlib's decompressor in the shape of lz4's and zstd's: `decompress(data, max_length)` bounded, and
    `needs_input` false while output is still held back."""

    def __init__(self, wbits: int) -> None:
        self._inner = zlib.decompressobj(wbits=wbits)
        self._full = False

    @property
    def eof(self) -> bool:
        return self._inner.eof

    @property
    def unused_data(self) -> bytes:
        return self._inner.unused_data

    @property
    def needs_input(self) -> bool:
        return not (self._inner.unconsumed_tail or self._full)

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._inner.decompress(self._inner.unconsumed_tail + data, max_length)
        self._full = len(out) == max_length  # zlib may hold more output even with all input taken
        return out


class _BrotliStream:
    """Gives brotli's decompressor the shape of the others (its output is bounded per request only)."""

    needs_input = True

    def __init__(self) -> None:
        self._inner = _brotli.Decompressor()
        self.unused_data = b""

    @property
    def eof(self) -> bool:
        return bool(self._inner.is_finished())

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return bytes(self._inner.process(data))


def _decompressor_factory(encoding: str) -> Callable[[], Any]:
    if encoding == "lz4" and _lz4_frame is not None:
        return _lz4_frame.LZ4FrameDecompressor
    if encoding == "zstd" and _zstd is not None:
        return _zstd.ZstdDecompressor
    if encoding in ("gzip", "x-gzip"):
        return lambda: _ZlibStream(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return lambda: _ZlibStream(zlib.MAX_WBITS)
    if encoding == "br" and _brotli is not None:
        return _BrotliStream
    raise ClickHouseError.make(_NOT_IMPLEMENTED, f"Unsupported request Content-Encoding {encoding!r}")


def _decoded(chunks: Iterator[bytes], encoding: str, max_bytes: int = MAX_BODY_BYTES) -> Iterator[bytes]:
    """The body decompressed, in pieces of at most _READ_CHUNK bytes and at most `max_bytes` in all: a
    body of a few KiB can inflate to gigabytes, and must fail before it is held in memory."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        yield from chunks
        return
    factory = _decompressor_factory(encoding)
    decompressor = factory()
    in_frame = False
    total = 0
    for chunk in chunks:
        data = chunk
        while True:
            in_frame = in_frame or bool(data)
            try:
                out = decompressor.decompress(data, _READ_CHUNK)
            except Exception as exc:
                raise ClickHouseError.make(_CANNOT_DECOMPRESS, f"Cannot decompress {encoding} body: {exc}") from exc
            total += len(out)
            if total > max_bytes:
                raise _too_large("The decompressed request body", max_bytes)
            if out:
                yield out
            if decompressor.eof:
                # clickhouse-connect compresses every insert block as a frame of its own, back to back.
                data, in_frame = decompressor.unused_data, False
                decompressor = factory()
                if not data:
                    break
            elif decompressor.needs_input:
                break
            else:
                data = b""  # more output is held back: take it before feeding more input
    if in_frame:
        raise ClickHouseError.make(_CANNOT_DECOMPRESS, f"Truncated {encoding} body")


def _form_fields(body: bytes, content_type: str) -> dict[str, str]:
    """multipart/form-data: clickhouse-connect sends the query and large bind parameters this way."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message: Any = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        if part.get_filename() is not None:
            raise ClickHouseError.make(_NOT_IMPLEMENTED, "External data is not supported by the chdb server")
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        fields[str(name)] = payload.decode("utf-8")
    return fields


# ---------------------------------------------------------------------------------------------------------
# The engine: one chdb engine, many connection handles.
#
# chdb hosts one engine per process and hands out any number of connection handles to it; statements on
# different handles run in parallel, while a handle runs one statement at a time and carries session
# state (USE, SET, temporary tables). So we give every ClickHouse HTTP session (clickhouse-connect sends a
# session_id per client by default) a handle of its own, leased exclusively for one request at a time
# (a concurrent request in the same session gets SESSION_IS_LOCKED, as from ClickHouse), and session-less
# requests borrow one from a pool. Measured against one handle behind a global lock (4 clients, each in its
# own session, 25 x insert_arrow of 10k rows + an aggregate, on 2 cores): 1.43 s vs 2.40 s, and 4.1 s vs
# 6.1 s with a 30M-row scan added; a long query also no longer stalls every other client. A handle costs
# ~0.6 ms to open.


def _summary(read_rows: int, read_bytes: int, written_rows: int, written_bytes: int, elapsed_s: float) -> str:
    fields = {
        "read_rows": read_rows,
        "read_bytes": read_bytes,
        "written_rows": written_rows,
        "written_bytes": written_bytes,
        "total_rows_to_read": read_rows,
        "elapsed_ns": int(elapsed_s * 1e9),
    }
    return json.dumps({k: str(v) for k, v in fields.items()}, separators=(",", ":"))


@dataclass
class _Result:
    fmt: str | None  # the result format, None for statements that produce no result set
    summary: str
    payload: Any = b""  # bytes or a memoryview that `keepalive` owns
    keepalive: Any = None


class _Handle:
    """A chdb connection handle and the state we track to reuse it safely."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.database = "default"  # what the handle has selected now
        self.home_database = "default"  # the session's own database, moved only by a USE statement
        self.settings: dict[str, str] = {}  # URL settings applied with SET, to be undone when not asked again
        self.disposable = False  # state that must not leak into the next lease: close instead of reusing

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def prepare(self, database: str | None, settings: dict[str, str]) -> None:
        """Bring the handle to the request's database and settings, issuing only the USE/SET that differ:
        clickhouse-connect repeats the same settings on every request, so usually nothing runs here."""
        for name in [n for n in self.settings if n not in settings]:
            try:
                self._run(f"SET {name} = DEFAULT")
            except ClickHouseError as exc:
                raise _StaleHandleError from exc  # e.g. a readonly=1 left behind: start afresh
            del self.settings[name]
        wanted = database or self.home_database
        if wanted != self.database:
            self._run(f"USE {_quote_identifier(wanted)}")
            self.database = wanted
        # readonly goes last: once set, no other setting can be changed on this handle.
        for name, value in sorted(settings.items(), key=lambda item: item[0] == "readonly"):
            if self.settings.get(name) != value:
                self._run(f"SET {name} = {_quote_literal(value)}")
                self.settings[name] = value

    def query(self, sql: bytes, fmt: str, params: dict[str, str]) -> _Result:
        started = time.perf_counter()
        try:
            result = self.conn.query(sql, fmt, params=params)
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc
        elapsed = time.perf_counter() - started
        summary = _summary(
            result.rows_read(), result.bytes_read(), result.rows_written(), result.bytes_written(), elapsed
        )
        # The view borrows the result's buffer: no copy of what can be a large result, kept alive with it.
        wrapper = result.get_memview()
        return _Result(fmt=None, summary=summary, payload=wrapper.view(), keepalive=(result, wrapper))

    def insert(self, statement: str, fmt: str, data: Iterable[bytes]) -> _Result:
        started = time.perf_counter()
        try:
            inserter = self.conn.send_insert(statement, fmt)
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc
        try:
            for chunk in data:
                inserter.append(chunk)
            done = inserter.finish()
        except (ClickHouseError, OSError):  # a body we could not decode, or the client went away
            self._abandon(inserter)
            raise
        except Exception as exc:
            self._abandon(inserter)
            raise ClickHouseError.from_engine(exc) from exc
        summary = _summary(0, 0, done.rows_written, done.bytes_written, time.perf_counter() - started)
        return _Result(fmt=None, summary=summary)

    def after_statement(self, keyword: str, sql: bytes, in_session: bool) -> None:
        """Keep our bookkeeping true after a statement that changes session state."""
        if keyword == "USE":
            if not in_session:
                self.disposable = True  # without a session a USE must not outlive its request
                return
            selected = self.conn.query("SELECT currentDatabase()", "TabSeparated").bytes().decode().strip()
            self.database = self.home_database = selected
        elif keyword == "SET":
            if not in_session:
                self.disposable = True
                return
            # The session now owns these values: never reset them as stale URL settings.
            for name in _SET_NAMES.findall(sql.decode("utf-8", errors="replace")):
                self.settings.pop(name, None)
        elif not in_session and _CREATE_TEMPORARY.match(sql):
            self.disposable = True

    def _abandon(self, inserter: Any) -> None:
        try:
            inserter.cancel()
        except Exception:
            self.disposable = True  # the handle may still hold the half-done insert

    def _run(self, sql: str) -> None:
        try:
            self.conn.query(sql, "TabSeparated")
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc


class _StaleHandleError(Exception):
    """The handle cannot be brought back to a clean state; a fresh one is needed."""


@dataclass
class _SessionSpec:
    session_id: str
    timeout_s: float
    check: bool
    close: bool


@dataclass
class _Session:
    handle: _Handle
    timeout_s: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)


class Engine:
    """Owns the chdb engine on one data path and leases connection handles to requests."""

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)
        private_dirs(self.path)
        _ensure_path_free(self.path)
        try:
            # A handle we never lease keeps the engine up while leased handles come and go.
            self._keeper = chdb.connect(self.path)
        except Exception as exc:
            raise EngineUnavailableError(f"cannot open chdb data path {self.path}: {exc}") from exc
        row = self._keeper.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().strip()
        self.version, self.timezone = row.split("\t")
        self._pool: list[_Handle] = []
        self._pool_lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()
        self._next_sweep = 0.0
        self._closed = False

    @contextlib.contextmanager
    def lease(self, session: _SessionSpec | None) -> Iterator[_Lease]:
        if session is None:
            handle = self._take_pooled()
            lease = _Lease(self, handle, None)
            try:
                yield lease
            finally:
                self._give_back_pooled(lease.handle)
            return
        entry = self._acquire_session(session)
        lease = _Lease(self, entry.handle, entry)
        try:
            yield lease
        finally:
            self._release_session(session, entry)

    def new_handle(self) -> _Handle:
        if self._closed:
            raise ClickHouseError.make(_STD_EXCEPTION, "The chdb server is shutting down")
        try:
            return _Handle(chdb.connect(self.path))
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc

    def close(self) -> None:
        """Close every handle, the keeper last: chdb shuts the engine down with its last handle."""
        with self._sessions_lock, self._pool_lock:
            self._closed = True
            handles = [s.handle for s in self._sessions.values()] + self._pool
            self._sessions.clear()
            self._pool.clear()
        for handle in handles:
            handle.close()
        with contextlib.suppress(Exception):
            self._keeper.close()

    def _take_pooled(self) -> _Handle:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        return self.new_handle()

    def _give_back_pooled(self, handle: _Handle) -> None:
        with self._pool_lock:
            if not (handle.disposable or self._closed or len(self._pool) >= _MAX_IDLE_POOLED_HANDLES):
                self._pool.append(handle)
                return
        handle.close()

    def _acquire_session(self, spec: _SessionSpec) -> _Session:
        with self._sessions_lock:
            self._sweep_sessions_locked()
            entry = self._sessions.get(spec.session_id)
            if entry is None:
                if spec.check:
                    raise ClickHouseError.make(_SESSION_NOT_FOUND, f"Session {spec.session_id} not found")
                entry = _Session(self.new_handle(), spec.timeout_s)
                self._sessions[spec.session_id] = entry
            if not entry.lock.acquire(blocking=False):
                raise ClickHouseError.make(
                    _SESSION_IS_LOCKED, f"Session {spec.session_id} is locked by a concurrent client"
                )
            entry.timeout_s = spec.timeout_s
            return entry

    def _release_session(self, spec: _SessionSpec, entry: _Session) -> None:
        with self._sessions_lock:
            entry.last_used = time.monotonic()
            # A handle left unusable takes its session with it; the client's next request starts a new one.
            closing = spec.close or self._closed or entry.handle.disposable
            if closing and self._sessions.get(spec.session_id) is entry:
                del self._sessions[spec.session_id]
            entry.lock.release()
        if closing:
            entry.handle.close()

    def _sweep_sessions_locked(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SESSION_SWEEP_INTERVAL_S
        for session_id, entry in list(self._sessions.items()):
            if now - entry.last_used > entry.timeout_s and entry.lock.acquire(blocking=False):
                del self._sessions[session_id]
                entry.handle.close()
                entry.lock.release()


class _Lease:
    """One request's exclusive use of a handle."""

    def __init__(self, engine: Engine, handle: _Handle, session: _Session | None) -> None:
        self._engine = engine
        self.handle = handle
        self._session = session

    @property
    def in_session(self) -> bool:
        return self._session is not None

    def prepare(self, database: str | None, settings: dict[str, str]) -> _Handle:
        try:
            self.handle.prepare(database, settings)
        except _StaleHandleError:
            self._replace_handle()
            self.handle.prepare(database, settings)
        return self.handle

    def _replace_handle(self) -> None:
        stale = self.handle
        self.handle = self._engine.new_handle()
        if self._session is not None:
            self._session.handle = self.handle
        stale.close()


def _ensure_path_free(path: str) -> None:
    """Fail fast and clearly when another process owns the path: ClickHouse holds an flock on `status`
    for as long as its engine is open, and chdb alone reports only 'Error initializing EmbeddedServer'."""
    status = os.path.join(path, "status")
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise EngineUnavailableError(
            f"chdb data path {path} is in use by another process (it holds the lock on {status}); "
            "only one process may open a chdb data path"
        ) from None
    finally:
        os.close(fd)  # closing drops our probe lock before chdb takes its own


# ---------------------------------------------------------------------------------------------------------
# HTTP.


@dataclass
class _QueryRequest:
    params: dict[str, str]
    read_only: bool

    @property
    def database(self) -> str | None:
        return self.params.get("database") or None

    @property
    def query_id(self) -> str:
        return self.params.get("query_id") or str(uuid.uuid4())

    @property
    def default_format(self) -> str:
        return self.params.get("default_format") or _DEFAULT_FORMAT

    @property
    def bind_params(self) -> dict[str, str]:
        return {k[len("param_") :]: v for k, v in self.params.items() if k.startswith("param_")}

    def settings(self) -> dict[str, str]:
        settings: dict[str, str] = {}
        for name, value in self.params.items():
            if name in _TRANSPORT_PARAMS or name.startswith(_TRANSPORT_PREFIXES):
                continue
            if not _IDENTIFIER.fullmatch(name):
                raise ClickHouseError.make(_BAD_ARGUMENTS, f"Invalid setting name {name!r}")
            settings[name] = value
        return settings

    def session(self) -> _SessionSpec | None:
        session_id = self.params.get("session_id")
        if not session_id:
            return None
        try:
            timeout = float(self.params.get("session_timeout") or _DEFAULT_SESSION_TIMEOUT_S)
        except ValueError:
            raise ClickHouseError.make(_BAD_ARGUMENTS, "Invalid session_timeout") from None
        if not 0 <= timeout <= _MAX_SESSION_TIMEOUT_S:
            raise ClickHouseError.make(_BAD_ARGUMENTS, f"session_timeout must be within 0..{_MAX_SESSION_TIMEOUT_S}")
        check = self.params.get("session_check", "0") not in ("", "0")
        close = self.params.get("close_session", "0") not in ("", "0")
        return _SessionSpec(session_id, timeout, check, close)

    def refuse_unsupported(self) -> None:
        if self.params.get("decompress", "0") not in ("", "0"):
            raise ClickHouseError.make(_NOT_IMPLEMENTED, "decompress=1 (ClickHouse-native compressed bodies)")


def _split_statement(
    stream: Iterator[bytes], max_query_bytes: int = MAX_QUERY_BYTES
) -> tuple[bytes, _DataInsert | None]:
    """Read just enough of the request to know what it is: a data insert (its data stays in `stream`)
    or a plain SQL text (read whole, at most `max_query_bytes`)."""
    buf = bytearray()
    for chunk in stream:
        buf += chunk
        found = _match_data_insert(bytes(buf), complete=False)
        if isinstance(found, _DataInsert):
            return b"", found
        if found is None:
            break
    else:
        found = _match_data_insert(bytes(buf), complete=True)
        if isinstance(found, _DataInsert):
            return b"", found
    for chunk in stream:
        buf += chunk
        if len(buf) > max_query_bytes:
            break
    if len(buf) > max_query_bytes:
        raise _too_large("The query text", max_query_bytes)
    return bytes(buf), None


@functools.lru_cache(maxsize=64)  # clients send the same few Host values on every request
def _is_loopback_host(host: str | None) -> bool:
    """Whether a Host header names this machine's loopback: a page on another name that resolves to
    127.0.0.1 (DNS rebinding) sends that other name."""
    if not host:
        return False
    name = host.strip()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def private_dirs(path: str) -> None:
    """Create `path` and every missing parent (`.entasis/` itself on a first `entasis up`) with mode
    0700 whatever the umask, and tighten `path` to 0700 if it existed: the database files, its
    password file and the data directory's keys are this user's alone. `os.makedirs(mode=...)`
    would apply the mode to the last directory only, and through the umask."""
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)
    os.chmod(path, 0o700)


def _write_password(path: str, password: str) -> str:
    """Write the password where the clients of this machine user find it, readable by that user only;
    atomically, so a client never reads half of it."""
    target = os.path.join(path, OWNER_PASSWORD_FILE)
    temporary = f"{target}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, password.encode())
    finally:
        os.close(fd)
    os.replace(temporary, target)
    return target


def _remove_password(target: str, password: str) -> None:
    """Remove the password file on a clean stop, unless a newer server has replaced it."""
    with contextlib.suppress(OSError):
        with open(target, encoding="utf-8") as file:
            if file.read() != password:
                return
        os.unlink(target)


def _readonly_error() -> ClickHouseError:
    return ClickHouseError.make(
        _READONLY,
        "Cannot execute query in readonly mode. For queries over HTTP, method GET implies readonly. "
        "You should use method POST for modifying queries",
    )


class ChdbHttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that finishes in-flight requests on stop and wakes idle keep-alive connections."""

    daemon_threads = False  # server_close() joins the request threads, so chdb closes after the last reply
    block_on_close = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], engine: Engine, password: str) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.engine = engine
        self.password = password.encode()
        self.stopping = False
        self._handlers: set[_Handler] = set()
        self._handlers_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr by default; route it through logging instead.
        logger.exception("error on the connection from %s", client_address)

    def stop(self) -> None:
        """Stop accepting, let busy requests finish, and hang up idle keep-alive connections."""
        with self._handlers_lock:
            if self.stopping:
                return
            self.stopping = True
            idle = [h for h in self._handlers if not h.busy]
        for handler in idle:
            handler.hang_up()
        self.shutdown()

    def track(self, handler: _Handler) -> None:
        with self._handlers_lock:
            self._handlers.add(handler)
            stopping = self.stopping
        if stopping:
            handler.hang_up()

    def untrack(self, handler: _Handler) -> None:
        with self._handlers_lock:
            self._handlers.discard(handler)

    def set_busy(self, handler: _Handler, busy: bool) -> bool:
        """Returns whether the server is stopping."""
        with self._handlers_lock:
            handler.busy = busy
            return self.stopping


class _Handler(BaseHTTPRequestHandler):
    server: ChdbHttpServer
    protocol_version = "HTTP/1.1"
    server_version = "chdb-server"
    # Headers and body go out as two writes; without TCP_NODELAY Nagle + delayed ACK adds ~40 ms per reply.
    disable_nagle_algorithm = True
    timeout = _SOCKET_TIMEOUT_S
    busy = False
    _headers_buffer: list[Any]  # BaseHTTPRequestHandler's own; _reply appends a small body to it

    def setup(self) -> None:
        super().setup()
        self.server.track(self)

    def finish(self) -> None:
        self.server.untrack(self)
        with contextlib.suppress(OSError):
            super().finish()

    def hang_up(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RD)

    def parse_request(self) -> bool:
        self.server.set_busy(self, True)
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            if self.server.set_busy(self, False):
                self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):  # called for every request: skip the formatting
            logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch(read_only=True)

    def do_POST(self) -> None:
        self._dispatch(read_only=False)

    def _dispatch(self, read_only: bool) -> None:
        try:
            body = _RequestBody(self.rfile, self.headers.get("Transfer-Encoding"), self.headers.get("Content-Length"))
        except ValueError as exc:
            self.close_connection = True  # without a length we trust we cannot find the next request
            self._reply(400, {"Content-Type": "text/plain; charset=UTF-8"}, f"{exc}\n".encode())
            return
        except ClickHouseError as exc:
            self._refuse(exc)
            return
        try:
            self._route(urlsplit(self.path), body, read_only)
        except (ConnectionError, TimeoutError) as exc:
            logger.debug("connection from %s lost: %s", self.address_string(), exc)
            self.close_connection = True

    def _route(self, url: SplitResult, body: _RequestBody, read_only: bool) -> None:
        refusal = self._foreign_request()
        if refusal is not None:
            self._refuse(refusal)
            return
        if url.path in ("/ping", "/replicas_status") or (url.path == "/" and read_only and not url.query):
            body.drain()
            self._reply(200, {"Content-Type": "text/plain; charset=UTF-8"}, b"Ok.\n")
            return
        if url.path != "/":
            body.drain()
            self._reply(404, {"Content-Type": "text/plain; charset=UTF-8"}, f"There is no handle {url.path}\n".encode())
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if not self._authenticated(params):
            self._refuse(
                ClickHouseError.make(
                    _AUTHENTICATION_FAILED,
                    f"{OWNER_USER}: Authentication failed: password is incorrect, or there is no user with such name",
                )
            )
            return
        try:
            self._serve_query(params, body, read_only)
        except ClickHouseError as exc:
            self._reply_error(body, params, exc)
        except (ConnectionError, TimeoutError):
            raise
        except Exception as exc:
            logger.exception("unexpected failure serving a query")
            self._reply_error(body, params, ClickHouseError.make(_STD_EXCEPTION, f"{type(exc).__name__}: {exc}"))

    def _foreign_request(self) -> ClickHouseError | None:
        """A request that did not come from a program of this machine: another Host than a loopback one
        (DNS rebinding) or any Origin (a browser page)."""
        if not _is_loopback_host(self.headers.get("Host")):
            return ClickHouseError.make(_ACCESS_DENIED, "The Host header must name a loopback address")
        if self.headers.get("Origin") is not None:
            return ClickHouseError.make(_ACCESS_DENIED, "Requests from web pages (with an Origin header) are refused")
        return None

    def _authenticated(self, params: dict[str, str]) -> bool:
        """ClickHouse's HTTP credentials, whichever way they come: basic auth, X-ClickHouse-User/-Key
        headers (clickhouse-connect), or `user`/`password` URL parameters."""
        authorization = self.headers.get("Authorization")
        if authorization is not None:
            scheme, _, encoded = authorization.strip().partition(" ")
            if scheme.lower() != "basic":
                return False
            try:
                user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
        elif "X-ClickHouse-User" in self.headers or "X-ClickHouse-Key" in self.headers:
            user = self.headers.get("X-ClickHouse-User") or OWNER_USER
            password = self.headers.get("X-ClickHouse-Key") or ""
        else:
            user, password = params.get("user") or OWNER_USER, params.get("password", "")
        return user == OWNER_USER and hmac.compare_digest(password.encode(), self.server.password)

    def _refuse(self, error: ClickHouseError) -> None:
        """Answer without reading the body (it may be large, or endless) and hang up after the answer."""
        self.close_connection = True
        self._reply(
            error.http_status,
            {
                "X-ClickHouse-Exception-Code": str(error.code),
                "Content-Type": "text/plain; charset=UTF-8",
            },
            error.body(self.server.engine.version),
        )

    def _serve_query(self, params: dict[str, str], body: _RequestBody, read_only: bool) -> None:
        content_type = self.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/form-data"):
            form = _form_fields(body.read_all(MAX_QUERY_BYTES), content_type)
            if "query" in params and "query" in form:
                form["query"] = params["query"] + "\n" + form["query"]
            params.update(form)
        request = _QueryRequest(params, read_only)
        request.refuse_unsupported()
        prefix = params.get("query", "").encode()
        stream = _decoded(body.chunks(), self.headers.get("Content-Encoding", ""))
        if prefix:
            stream = chain([prefix + b"\n"], stream)
        sql, insert = _split_statement(stream)
        refuse_outside_access(insert.statement.encode() if insert is not None else sql)
        engine = self.server.engine
        if insert is not None:
            if read_only:
                raise _readonly_error()
            data = chain([insert.head], stream) if insert.head else stream
            with engine.lease(request.session()) as lease:
                handle = lease.prepare(request.database, request.settings())
                result = handle.insert(insert.statement, insert.fmt, data)
        else:
            keyword = _leading_keyword(sql)
            if read_only and keyword not in _READ_ONLY_KEYWORDS:
                raise _readonly_error()
            with engine.lease(request.session()) as lease:
                handle = lease.prepare(request.database, request.settings())
                result = handle.query(sql, request.default_format, request.bind_params)
                handle.after_statement(keyword, sql, lease.in_session)
            if keyword in _RESULT_KEYWORDS:
                result.fmt = _trailing_format(sql) or request.default_format
        self._reply_result(request, result)

    def _reply_result(self, request: _QueryRequest, result: _Result) -> None:
        headers = {
            "X-ClickHouse-Query-Id": request.query_id,
            "X-ClickHouse-Timezone": request.params.get("session_timezone") or self.server.engine.timezone,
            "X-ClickHouse-Summary": result.summary,
        }
        if result.fmt is not None:
            headers["X-ClickHouse-Format"] = result.fmt
            headers["Content-Type"] = _CONTENT_TYPES.get(result.fmt, "application/octet-stream")
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        self._reply(200, headers, result.payload)

    def _reply_error(self, body: _RequestBody, params: dict[str, str], error: ClickHouseError) -> None:
        if body.oversized:
            self._refuse(error)
            return
        try:
            body.drain()
        except (ConnectionError, TimeoutError, ClickHouseError):
            self.close_connection = True  # the client will not read a reply to a body we could not consume
            return
        logger.debug("query failed: %s", error.text)
        headers = {
            "X-ClickHouse-Exception-Code": str(error.code),
            "X-ClickHouse-Query-Id": params.get("query_id") or str(uuid.uuid4()),
            "Content-Type": "text/plain; charset=UTF-8",
        }
        self._reply(error.http_status, headers, error.body(self.server.engine.version))

    def _reply(self, status: int, headers: dict[str, str], payload: Any) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            if len(payload) <= _COALESCED_REPLY_BYTES:
                # Headers and a small body in one write: one syscall less on every point query.
                self._headers_buffer.extend((b"\r\n", payload))
                self.flush_headers()
                return
            self.end_headers()
            self.wfile.write(payload)
        except OSError as exc:
            logger.debug("reply to %s failed: %s", self.address_string(), exc)
            self.close_connection = True


# ---------------------------------------------------------------------------------------------------------
# Entry points.


@contextlib.contextmanager
def _stop_on_signals(server: ChdbHttpServer) -> Iterator[None]:
    """SIGTERM/SIGINT stop the server; shutdown() blocks until serve_forever returns, so it runs off the
    main thread (where serve_forever and the signal handler both live)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        threading.Thread(target=server.stop, name="chdb-server-stop", daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(path: str, host: str = "127.0.0.1", port: int = 18123, password: str | None = None) -> None:
    """Own the chdb data path and serve ClickHouse's HTTP interface until SIGTERM/SIGINT. Without a
    password one is drawn at random; either way it is written to `<path>/http-password` (mode 0600)
    before the port opens."""
    engine = Engine(path)
    password = password or secrets.token_urlsafe(32)
    try:
        password_file = _write_password(engine.path, password)
        server = ChdbHttpServer((host, port), engine, password)
    except OSError:
        engine.close()
        raise
    # The handlers stay until the engine is closed: a second SIGTERM while draining must not kill us.
    with _stop_on_signals(server):
        try:
            logger.info("password of user %r in %s (read by this machine user only)", OWNER_USER, password_file)
            logger.info("chdb server ready on http://%s:%d (path %s)", host, server.server_port, engine.path)
            server.serve_forever(poll_interval=0.2)
            server.server_close()  # joins the request threads: in-flight requests finish first
        finally:
            engine.close()
            _remove_password(password_file, password)
        logger.info("chdb server stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.dev.chdb_server", description="Serve a chdb data path over ClickHouse's HTTP interface."
    )
    parser.add_argument("--path", required=True, help="chdb data directory (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18123, help="0 picks a free port (see the ready line)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve(args.path, args.host, args.port)
    except EngineUnavailableError as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
