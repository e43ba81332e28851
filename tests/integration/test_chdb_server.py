"""infra/dev/chdb_server.py: its body and statement helpers, then the server as a real subprocess driven by the
stock clickhouse-connect HTTP client."""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import os
import signal
import socket
import stat
import threading
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from pathlib import Path
from urllib.parse import urlsplit

import lz4.frame
import pyarrow as pa
import pytest
from backports import zstd
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from infra.dev import chdb_server
from infra.store.clickhouse import client_for_url
from tests.integration import chdb_fixture
from tests.integration.chdb_fixture import launch_chdb_server, start_chdb_server

chdb_server_module = chdb_fixture.chdb_server_module  # pytest finds fixtures by module attribute name

pytestmark = pytest.mark.integration

TRADES_DDL = """
CREATE TABLE {name} (
    id UInt64,
    price Decimal(38, 8),
    ts DateTime64(9, 'UTC'),
    symbol LowCardinality(String),
    side Enum8('buy' = 1, 'sell' = 2)
) ENGINE = MergeTree ORDER BY id
"""
COLUMNS = ["id", "price", "ts", "symbol", "side"]
ROWS = [
    (
        1,
        Decimal("123456789012345678901234567890.12345678"),
        datetime(2024, 1, 2, 3, 4, 5, 123456, UTC),
        "BTC-USD",
        "buy",
    ),
    (2, Decimal("-0.00000001"), datetime(2024, 1, 2, 3, 4, 6, tzinfo=UTC), "ETH-USD", "sell"),
    (3, Decimal("0"), datetime(1970, 1, 1, tzinfo=UTC), "", "buy"),
]


@pytest.fixture
def db(chdb_server_module: str) -> Iterator[Client]:
    """A client on a fresh database of the module's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    client_for_url(chdb_server_module).command(f"CREATE DATABASE {name}")
    client = client_for_url(chdb_server_module, database=name)
    yield client
    client.close()


def _split_credential(url: str) -> tuple[str, dict[str, str]]:
    """The fixture's URL (credential inside) as a bare URL and the basic-auth header curl would send."""
    parts = urlsplit(url)
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    return f"{parts.scheme}://{parts.hostname}:{parts.port}", {"Authorization": f"Basic {token}"}


def _open(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def _fresh_table(client: Client) -> str:
    name = f"trades_{uuid.uuid4().hex[:8]}"
    client.command(TRADES_DDL.format(name=name))
    return name


def _naive_utc(value: datetime) -> datetime:
    # clickhouse-connect's default tz_mode returns UTC columns as naive UTC datetimes, as from ClickHouse.
    return value.astimezone(UTC).replace(tzinfo=None)


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip", "deflate"])
def test_body_decoding_spans_frames_and_chunk_boundaries(encoding: str) -> None:
    blocks = [bytes([n]) * 70_000 + b"tail%d" % n for n in range(3)]
    if encoding == "lz4":
        frames = b"".join(lz4.frame.compress(block) for block in blocks)  # one frame per block, as clickhouse-connect
    elif encoding == "zstd":
        frames = b"".join(zstd.compress(block) for block in blocks)
    elif encoding == "gzip":
        frames = gzip.compress(b"".join(blocks))
    else:
        frames = zlib.compress(b"".join(blocks))
    pieces = [frames[i : i + 777] for i in range(0, len(frames), 777)]

    assert b"".join(chdb_server._decoded(iter(pieces), encoding)) == b"".join(blocks)
    with pytest.raises(chdb_server.ClickHouseError, match="CANNOT_DECOMPRESS"):
        b"".join(chdb_server._decoded(iter([frames[:-5]]), encoding))


@pytest.mark.parametrize(
    ("text", "statement", "fmt", "data"),
    [
        (b"INSERT INTO t (a, b) FORMAT Native\n\x01\x02", "INSERT INTO t (a, b) ", "Native", b"\x01\x02"),
        (b"insert into t format CSV \r\n1,2\n", "insert into t ", "CSV", b"1,2\n"),
        (b"INSERT INTO t FORMAT Native\n\n\x20x", "INSERT INTO t ", "Native", b"\n\x20x"),  # one LF only
        (b"INSERT INTO t FORMAT CSV", "INSERT INTO t ", "CSV", b""),
    ],
)
def test_data_insert_split_follows_clickhouse(text: bytes, statement: str, fmt: str, data: bytes) -> None:
    assert chdb_server._match_data_insert(text, complete=True) == chdb_server._DataInsert(statement, fmt, data)


@pytest.mark.parametrize(
    "text", [b"SELECT 1", b"INSERT INTO t VALUES (1, 'FORMAT x')", b"INSERT INTO t SELECT * FROM s FORMAT CSV"]
)
def test_other_statements_run_as_sql(text: bytes) -> None:
    assert chdb_server._match_data_insert(text, complete=True) is None


def test_ping_and_handshake(chdb_server_module: str) -> None:
    base, _ = _split_credential(chdb_server_module)
    assert _open(f"{base}/ping") == b"Ok.\n"  # a health check needs no credential, as with ClickHouse
    client = client_for_url(chdb_server_module)
    assert client.server_version and client.server_version.split(".")[0].isdigit()
    assert client.command("SELECT 1") == 1


def test_command_and_query_parameters(db: Client) -> None:
    table = _fresh_table(db)
    assert "price" in str(db.command(f"SHOW CREATE TABLE {table}"))
    assert db.command("SELECT 1 WHERE 0") == ""  # a result set, just empty
    db.command(f"INSERT INTO {table} (id, price, ts, symbol, side) VALUES (7, 1.5, now64(9), 'X', 'sell')")
    assert db.command(f"SELECT count() FROM {table}") == 1

    server_side = db.query("SELECT {x:UInt32} + 1 AS y, {s:String} AS s", parameters={"x": 41, "s": "it's"})
    assert server_side.result_rows == [(42, "it's")]
    client_side = db.query(f"SELECT id FROM {table} WHERE symbol = %(sym)s", parameters={"sym": "X"})
    assert client_side.result_rows == [(7,)]
    # Large bind parameters make clickhouse-connect switch to a multipart/form-data body.
    big = db.query("SELECT length({s:String})", parameters={"s": "x" * 50_000})
    assert big.result_rows == [(50_000,)]


@pytest.mark.parametrize("compress", [True, "zstd", "gzip", False], ids=["lz4", "zstd", "gzip", "plain"])
def test_insert_rows_round_trip_exactly(chdb_server_module: str, db: Client, compress: bool | str) -> None:
    client = client_for_url(chdb_server_module, database=db.database or "default", compress=compress)
    table = _fresh_table(client)

    summary = client.insert(table, ROWS, column_names=COLUMNS)

    assert summary.written_rows == len(ROWS)
    back = client.query(f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY id").result_rows
    assert back == [(i, price, _naive_utc(ts), sym, side) for i, price, ts, sym, side in ROWS]
    assert all(type(row[1]) is Decimal for row in back)
    nanos = client.query(f"SELECT toUnixTimestamp64Nano(ts) FROM {table} ORDER BY id").result_rows
    assert [n for (n,) in nanos] == [int(ts.timestamp()) * 10**9 + ts.microsecond * 1000 for _, _, ts, _, _ in ROWS]


def test_insert_arrow_round_trips_exactly(db: Client) -> None:
    table = _fresh_table(db)
    ts_ns = [1_700_000_000_123_456_789, 1_700_000_000_123_456_790, 0]
    expected = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.uint64()),
            "price": pa.array(
                [Decimal("99999999999999999999999999999.99999999"), Decimal("-1.00000001"), Decimal("0.1")],
                pa.decimal128(38, 8),
            ),
            "ts": pa.array(ts_ns, pa.timestamp("ns", tz="UTC")),
            "symbol": pa.array(["BTC-USD", "ETH-USD", "BTC-USD"]),
        }
    )

    db.insert_arrow(table, expected)

    back = db.query_arrow(f"SELECT id, price, ts, symbol FROM {table} ORDER BY id")
    assert back.column("id").to_pylist() == [1, 2, 3]
    assert back.column("price").type == pa.decimal128(38, 8)
    assert back.column("price").to_pylist() == expected.column("price").to_pylist()
    assert back.column("ts").cast(pa.int64()).to_pylist() == ts_ns
    assert back.column("symbol").to_pylist() == ["BTC-USD", "ETH-USD", "BTC-USD"]
    with localcontext(prec=76):  # Decimal(38, 8) sums exceed the default 28 significant digits
        exact_sum = sum(expected.column("price").to_pylist(), Decimal(0))
    assert db.query(f"SELECT sum(price) FROM {table}").result_rows == [(exact_sum,)]


@pytest.mark.parametrize("compress", [True, "zstd", "gzip"], ids=["lz4", "zstd", "gzip"])
def test_large_inserts_stream_in_pieces(chdb_server_module: str, db: Client, compress: bool | str) -> None:
    """Several insert blocks (one compressed frame each, chunked) and an Arrow body of several MiB."""
    client = client_for_url(chdb_server_module, database=db.database or "default", compress=compress)
    client.command("CREATE TABLE wide (id UInt64, v Float64) ENGINE = MergeTree ORDER BY id")
    rows = 400_000
    client.insert("wide", [list(range(rows)), [i / 4 for i in range(rows)]], ["id", "v"], column_oriented=True)
    arrow = pa.table({"id": pa.array(range(rows, 2 * rows), pa.uint64()), "v": pa.array([0.5] * rows)})
    client.insert_arrow("wide", arrow)

    totals = client.query("SELECT count(), sum(id), sum(v) FROM wide").result_rows
    assert totals == [(2 * rows, sum(range(2 * rows)), sum(i / 4 for i in range(rows)) + 0.5 * rows)]


def test_arrow_stream_and_block_stream(db: Client) -> None:
    with db.query_arrow_stream("SELECT number FROM numbers(100000)") as stream:
        assert sum(batch.num_rows for batch in stream) == 100_000
    with db.query_row_block_stream("SELECT number FROM numbers(100000)") as blocks:
        assert sum(row[0] for block in blocks for row in block) == sum(range(100_000))


def test_sql_errors_surface_as_database_error(db: Client) -> None:
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE") as caught:
        db.query("SELECT * FROM no_such_table")
    assert "DB::Exception" in str(caught.value)
    with pytest.raises(DatabaseError, match="SYNTAX_ERROR"):
        db.command("SELEKT 1")
    # An insert the engine rejects: the server still consumes the body, and the connection stays usable.
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
        db.insert("no_such_table", [(1,)], column_names=["id"], column_type_names=["UInt64"])
    assert db.command("SELECT 2") == 2


def test_settings_apply_per_query_and_persist_per_session(chdb_server_module: str, db: Client) -> None:
    default_threads = db.command("SELECT getSetting('max_threads')")
    assert db.query("SELECT getSetting('max_threads')", settings={"max_threads": 1}).result_rows == [(1,)]
    assert db.command("SELECT getSetting('max_threads')") == default_threads  # undone for the next query

    db.command("SET max_threads = 1")  # clickhouse-connect sends a session_id: SET lasts for the session
    assert db.command("SELECT getSetting('max_threads')") == 1
    other = client_for_url(chdb_server_module)
    assert other.command("SELECT getSetting('max_threads')") == default_threads

    db.command("CREATE TEMPORARY TABLE scratch (a UInt8)")
    db.command("INSERT INTO scratch VALUES (1), (2)")
    assert db.command("SELECT count() FROM scratch") == 2


def test_get_is_read_only(chdb_server_module: str) -> None:
    base, auth = _split_credential(chdb_server_module)
    assert _open(f"{base}/?query=SELECT%2040%2B2", auth) == b"42\n"
    with pytest.raises(urllib.error.HTTPError) as caught:
        _open(f"{base}/?query=CREATE%20DATABASE%20nope", auth)
    assert caught.value.code == 403
    assert caught.value.headers["X-ClickHouse-Exception-Code"] == "164"
    # A second statement after a read-only one must not slip through (chdb would run both).
    with pytest.raises(urllib.error.HTTPError) as caught:
        _open(f"{base}/?query=SELECT%201%3B%20CREATE%20DATABASE%20nope", auth)
    assert caught.value.headers["X-ClickHouse-Exception-Code"] == "62"


def test_concurrent_clients_get_the_right_totals(db: Client, chdb_server_module: str) -> None:
    table = _fresh_table(db)
    database = db.database or "default"
    threads, batches, batch_rows = 4, 10, 500
    errors: list[BaseException] = []

    def worker(worker_id: int) -> None:
        try:
            client = client_for_url(chdb_server_module, database=database)  # clients are not thread-safe
            for batch in range(batches):
                base = (worker_id * batches + batch) * batch_rows
                when = datetime(2024, 1, 1, tzinfo=UTC)
                rows = [(base + i, Decimal(i) / 100, when, f"S{worker_id}", "buy") for i in range(batch_rows)]
                client.insert(table, rows, column_names=COLUMNS)
                count = client.command(f"SELECT count() FROM {table} WHERE symbol = 'S{worker_id}'")
                assert count == (batch + 1) * batch_rows
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    assert errors == []
    total_rows = threads * batches * batch_rows
    assert db.command(f"SELECT count(), uniqExact(id) FROM {table}") == [str(total_rows), str(total_rows)]
    expected_sum = threads * batches * sum(Decimal(i) / 100 for i in range(batch_rows))
    assert db.query(f"SELECT sum(price) FROM {table}").result_rows == [(expected_sum,)]


def test_data_persists_across_restarts_and_path_is_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "chdb"
    first = start_chdb_server(path)
    try:
        client = client_for_url(first.url)
        client.command("CREATE DATABASE kept")
        client.command("CREATE TABLE kept.t (id UInt64, price Decimal(38, 8)) ENGINE = MergeTree ORDER BY id")
        client.insert("kept.t", [(1, Decimal("1.00000001")), (2, Decimal("2.5"))], column_names=["id", "price"])

        second = launch_chdb_server(path, tmp_path / "second.log")
        assert second.wait(timeout=60) != 0  # fails fast rather than hanging on the engine lock
        assert "in use by another process" in (tmp_path / "second.log").read_text()
    finally:
        assert first.stop() == 0

    restarted = start_chdb_server(path)
    try:
        rows = client_for_url(restarted.url).query("SELECT id, price FROM kept.t ORDER BY id").result_rows
        assert rows == [(1, Decimal("1.00000001")), (2, Decimal("2.5"))]
    finally:
        assert restarted.stop() == 0


def test_sigterm_finishes_in_flight_queries(tmp_path: Path) -> None:
    server = start_chdb_server(tmp_path / "chdb")
    try:
        slow, watcher = client_for_url(server.url), client_for_url(server.url)
        idle = client_for_url(server.url)  # holds an idle keep-alive connection the server must hang up
        assert idle.command("SELECT 1") == 1
        outcome: dict[str, object] = {}

        def run_slow_query() -> None:
            try:
                outcome["rows"] = slow.query("SELECT sleepEachRow(0.3) FROM numbers(5)").result_rows
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run_slow_query)
        thread.start()
        in_flight = (
            "SELECT count() FROM system.processes WHERE query LIKE '%sleepEachRow%' AND query NOT LIKE '%processes%'"
        )
        while watcher.command(in_flight) == 0:
            assert thread.is_alive(), outcome
        server.process.send_signal(signal.SIGTERM)
        thread.join(timeout=60)
    finally:
        return_code = server.stop()

    assert outcome.get("rows") == [(0,)] * 5, outcome
    assert return_code == 0
    assert "chdb server stopped" in server.log()


# --- who may talk to the server, and what it refuses to run (issue 18, item 2) ------------------------------


@pytest.mark.parametrize(
    "content_length, transfer_encoding",
    [("-5", None), ("+5", None), ("5_0", None), (" 5", None), ("0x5", None), ("5", "chunked"), (None, "gzip")],
)
def test_request_framing_we_cannot_trust_is_refused(content_length: str | None, transfer_encoding: str | None) -> None:
    with pytest.raises(ValueError):
        chdb_server._RequestBody(io.BytesIO(b"SELECT 1"), transfer_encoding, content_length)


@pytest.mark.parametrize("size_line", [b"-5\r\n", b"0x5\r\n", b"5_0\r\n", b"\r\n"])
def test_chunk_sizes_must_be_plain_hex(size_line: bytes) -> None:
    body = chdb_server._RequestBody(io.BytesIO(size_line + b"SELECT 1\r\n0\r\n\r\n"), "chunked", None)
    with pytest.raises(ConnectionError):
        body.read_all(1 << 20)


def test_bodies_are_bounded_on_the_wire() -> None:
    with pytest.raises(chdb_server.ClickHouseError, match="TOO_MANY_BYTES"):
        chdb_server._RequestBody(io.BytesIO(b""), None, "101", max_bytes=100)
    chunked = b"".join(b"%x\r\n%s\r\n" % (40, b"x" * 40) for _ in range(5)) + b"0\r\n\r\n"
    body = chdb_server._RequestBody(io.BytesIO(chunked), "chunked", None, max_bytes=100)
    with pytest.raises(chdb_server.ClickHouseError, match="TOO_MANY_BYTES"):
        body.read_all(1 << 20)
    assert body.oversized  # the rest is never drained: the connection closes instead


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", "lz4"])
def test_a_decompression_bomb_stops_at_the_limit_in_bounded_pieces(encoding: str) -> None:
    inflated = 8 * chdb_server._READ_CHUNK + 123
    compressed = _compress(encoding, b"\0" * inflated)
    assert len(compressed) < inflated // 100  # a bomb: tiny on the wire
    pieces = list(chdb_server._decoded(iter([compressed]), encoding, max_bytes=inflated))
    assert sum(map(len, pieces)) == inflated
    assert max(map(len, pieces)) <= chdb_server._READ_CHUNK  # never one huge allocation
    with pytest.raises(chdb_server.ClickHouseError, match="TOO_MANY_BYTES"):
        b"".join(chdb_server._decoded(iter([compressed]), encoding, max_bytes=inflated - 1))


def _compress(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "zstd":
        return zstd.compress(data)
    return bytes(lz4.frame.compress(data))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT * FROM `file`('/etc/hostname', 'LineAsString')",  # a quoted name is the same function
        "SELECT * FROM \"FILE\" /* between */ ('x')",
        "SELECT length(file('x'))",  # the ordinary function file() reads a file too
        "SELECT * FROM url('http://example.com/x', CSV, 'a String')",
        "SELECT * FROM s3Cluster('c', 'http://x/y')",
        "SELECT * FROM remoteSecure('10.0.0.1', system.one)",
        "SELECT * FROM Python(engine)",  # chdb: this process's own memory
        "SELECT * FROM bigquery('project', 'dataset')",
        "CREATE TABLE t (a UInt8) ENGINE = MergeTree ORDER BY a SETTINGS disk = disk(type = s3, endpoint = 'x')",
        "INSERT INTO FUNCTION file('out.csv', CSV) SELECT 1",
        "CREATE TABLE t (a UInt8) ENGINE = File(CSV, 'x.csv')",
        "CREATE TABLE t (a UInt8) ENGINE = URL('http://x/', CSV)",
        "CREATE DICTIONARY d (a UInt8) PRIMARY KEY a SOURCE(HTTP(url 'http://x/' format 'CSV')) LAYOUT(FLAT())",
        "SELECT 42 INTO OUTFILE '/tmp/x.txt'",
        "INSERT INTO t FROM INFILE '/etc/passwd' FORMAT LineAsString",
        "SYSTEM SHUTDOWN",
        "BACKUP TABLE t TO Disk('default', 'b.zip')",
        "/* it's */ SELECT * FROM file('x')",  # a quote in a comment must not hide code
        "SELECT $$it's$$, file('x')",  # nor one in a heredoc
    ],
)
def test_sql_that_reaches_outside_is_refused(sql: str) -> None:
    with pytest.raises(chdb_server.ClickHouseError, match="ACCESS_DENIED"):
        chdb_server.refuse_outside_access(sql.encode())


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; DROP TABLE t",
        "SELECT 1 -- a comment ends at the line end\n; DROP TABLE t",
        "SELECT 'a' ; SELECT 'b'",
        "SELECT 'it''s'; DROP TABLE t",  # '' inside a literal: still one literal, the ; is code
    ],
)
def test_more_than_one_statement_is_refused(sql: str) -> None:
    with pytest.raises(chdb_server.ClickHouseError, match="SYNTAX_ERROR"):
        chdb_server.refuse_outside_access(sql.encode())


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'file(x)', 'url(y)', 'a;b', $$c;d$$",  # inside literals: data, not code
        'SELECT `file`, "url" FROM t',  # columns with those names, not called
        "SELECT 1;",
        "SELECT 1; -- done\n",
        "SELECT count() FROM system.processes WHERE query LIKE '%INTO OUTFILE%'",
        "SELECT 'a\\'; file(x); SELECT '",  # one literal with an escaped quote
        "INSERT INTO t (id, price) FORMAT Native",
    ],
)
def test_ordinary_sql_passes(sql: str) -> None:
    chdb_server.refuse_outside_access(sql.encode())


def test_every_migration_and_repository_query_passes() -> None:
    from infra.store import repository
    from infra.store.migrate import load_migrations

    statements = [s for m in load_migrations() for s in m.statements]
    statements += [v for k, v in vars(repository).items() if k.endswith("_SQL") and isinstance(v, str)]
    assert len(statements) > 10
    for statement in statements:
        chdb_server.refuse_outside_access(statement.encode())


def _raw_request(base: str, request: bytes) -> bytes:
    """Send bytes as they are (no client library would send these) and read the reply's head."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
        return reply


def _post(base: str, sql: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        connection.request("POST", "/", body=sql, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        connection.close()


def test_every_query_needs_the_password_whichever_way_clickhouse_takes_it(chdb_server_module: str) -> None:
    base, auth = _split_credential(chdb_server_module)
    password = urlsplit(chdb_server_module).password or ""
    status, headers, _ = _post(base, b"SELECT 1", {})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (401, "516")
    wrong = base64.b64encode(b"default:" + b"x" * len(password)).decode()
    assert _post(base, b"SELECT 1", {"Authorization": f"Basic {wrong}"})[0] == 401
    other_user = base64.b64encode(f"admin:{password}".encode()).decode()
    assert _post(base, b"SELECT 1", {"Authorization": f"Basic {other_user}"})[0] == 401
    assert _post(base, b"SELECT 1", {"X-ClickHouse-User": "default", "X-ClickHouse-Key": "nope"})[0] == 401

    assert _post(base, b"SELECT 1", auth)[2] == b"1\n"
    assert _post(base, b"SELECT 2", {"X-ClickHouse-User": "default", "X-ClickHouse-Key": password})[2] == b"2\n"
    assert _open(f"{base}/?user=default&password={password}&query=SELECT%203") == b"3\n"
    with pytest.raises(DatabaseError, match="516"):  # the stock client, without the credential
        client_for_url(base).command("SELECT 1")


@pytest.mark.parametrize(
    "extra",
    [{"Host": "evil.example:8123"}, {"Host": "10.1.2.3"}, {"Origin": "http://evil.example"}, {"Origin": "null"}],
)
def test_requests_from_web_pages_are_refused_even_with_the_password(
    chdb_server_module: str, extra: dict[str, str]
) -> None:
    base, auth = _split_credential(chdb_server_module)
    status, headers, body = _post(base, b"SELECT 1", {**auth, **extra})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "497"), body


def test_outside_access_is_refused_through_the_server(chdb_server_module: str, tmp_path: Path) -> None:
    base, auth = _split_credential(chdb_server_module)
    status, headers, _ = _post(base, b"SELECT * FROM file('/etc/hostname', 'LineAsString')", auth)
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "497")
    target = tmp_path / "out.txt"
    status, _, _ = _post(base, f"SELECT 42 INTO OUTFILE '{target}'".encode(), auth)
    assert status == 403 and not target.exists()
    client = client_for_url(chdb_server_module)
    with pytest.raises(DatabaseError, match="ACCESS_DENIED"):
        client.command("INSERT INTO FUNCTION file('x.csv', CSV) SELECT 1")
    assert client.command("SELECT 1") == 1  # and the server goes on serving


def test_a_gzip_bomb_is_refused_without_inflating_it(chdb_server_module: str) -> None:
    base, auth = _split_credential(chdb_server_module)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"SELECT 1 -- " + b" " * (1 << 20)
    bomb = b"".join(compressor.compress(block) for _ in range(chdb_server.MAX_BODY_BYTES // len(block) + 8))
    bomb += compressor.flush()
    assert len(bomb) < 2 << 20  # under 2 MiB on the wire, over MAX_BODY_BYTES inflated
    status, headers, body = _post(base, bomb, {**auth, "Content-Encoding": "gzip"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (413, "307"), body
    assert client_for_url(chdb_server_module).command("SELECT 1") == 1


def test_negative_or_huge_lengths_are_answered_at_once(chdb_server_module: str) -> None:
    base, _ = _split_credential(chdb_server_module)
    host = urlsplit(base).netloc
    negative = _raw_request(base, f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: -5\r\n\r\nSELECT 1".encode())
    assert negative.startswith(b"HTTP/1.1 400")
    huge = _raw_request(base, f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 999999999999\r\n\r\n".encode())
    assert huge.startswith(b"HTTP/1.1 413")


def test_the_password_file_is_private_and_new_on_every_start(tmp_path: Path) -> None:
    path = tmp_path / "chdb"
    first = start_chdb_server(path)
    try:
        password_file = path / "http-password"
        assert stat.S_IMODE(os.stat(password_file).st_mode) == 0o600
        assert password_file.read_text() == first.password and len(first.password) >= 32
    finally:
        assert first.stop() == 0
    second = start_chdb_server(path)
    try:
        assert second.password != first.password
        with pytest.raises(DatabaseError, match="516"):  # the client's handshake is refused already
            client_for_url(second.base_url, password=first.password)
    finally:
        assert second.stop() == 0
    assert not (path / "http-password").exists()  # a clean stop takes its password away


def test_make_client_finds_the_embedded_owners_password(tmp_path: Path) -> None:
    from infra.config.settings import ClickHouseSettings, Settings
    from infra.store.clickhouse import make_client

    server = start_chdb_server(tmp_path / "chdb")  # <data_dir>/chdb, as `entasis db` and `entasis up` use
    try:
        section = ClickHouseSettings(url=server.base_url, database="default")  # no password configured
        settings = Settings(data_dir=tmp_path, clickhouse=section)
        assert make_client(settings).command("SELECT 1") == 1
        elsewhere = Settings(data_dir=tmp_path / "other", clickhouse=section)
        with pytest.raises(DatabaseError, match="516"):
            make_client(elsewhere)
    finally:
        server.stop()


# What stays inside the database: generators, views, local storage and table engines over local data.
def _names(text: str) -> set[str]:
    return set(text.split())


STAYS_INSIDE = {
    "table_functions": _names(
        "SQLStandardValues dictionary format fuzzJSON fuzzQuery generateRandom generateSeries generate_series input "
        "loop merge mergeTreeAnalyzeIndexes mergeTreeAnalyzeIndexesUUID mergeTreeCodecBlockCounts mergeTreeIndex "
        "mergeTreeProjection mergeTreeTextIndex null numbers numbers_mt primes prometheusQuery prometheusQueryRange "
        "timeSeriesData timeSeriesMetricFamilies timeSeriesMetrics timeSeriesSamples timeSeriesSelector "
        "timeSeriesTags values view viewExplain viewIfPermitted zeros zeros_mt"
    ),
    "table_engines": _names(
        "AggregatingMergeTree Alias Buffer CoalescingMergeTree CollapsingMergeTree Dictionary EmbeddedRocksDB "
        "FuzzJSON FuzzQuery GenerateRandom GraphiteMergeTree Join Log Loop MaterializedView Memory Merge MergeTree "
        "Null ReplacingMergeTree ReplicatedAggregatingMergeTree ReplicatedCoalescingMergeTree "
        "ReplicatedCollapsingMergeTree ReplicatedGraphiteMergeTree ReplicatedMergeTree ReplicatedReplacingMergeTree "
        "ReplicatedSummingMergeTree ReplicatedVersionedCollapsingMergeTree Set StripeLog SummingMergeTree "
        "TimeSeries TinyLog VersionedCollapsingMergeTree View"
    ),
    "database_engines": _names("Atomic Dictionary Memory Ordinary Replicated"),
}


def test_every_table_function_and_engine_is_classified(chdb_server_module: str) -> None:
    """A chdb upgrade that brings a new table function or engine fails here until it is put on one side."""
    client = client_for_url(chdb_server_module)
    unclassified = {}
    for table, inside in STAYS_INSIDE.items():
        names = {row[0] for row in client.query(f"SELECT name FROM system.{table}").result_rows}
        unclassified[table] = sorted(
            n for n in names if n not in inside and n.lower().encode() not in chdb_server._REACHES_OUTSIDE
        )
        assert not inside & {n for n in names if n.lower().encode() in chdb_server._REACHES_OUTSIDE}
    assert unclassified == {table: [] for table in STAYS_INSIDE}


def test_a_table_that_only_starts_like_a_table_function_is_just_a_table(db: Client) -> None:
    db.command("CREATE TABLE file_events (url String, cluster UInt8) ENGINE = MergeTree ORDER BY url")
    db.insert("file_events", [("https://example.com", 1)], column_names=["url", "cluster"])
    assert db.query("SELECT url, cluster FROM file_events").result_rows == [("https://example.com", 1)]
