"""infra/dev/chdb_server.py: its body and statement helpers, then the server as a real subprocess driven by the
stock clickhouse-connect HTTP client."""

from __future__ import annotations

import gzip
import signal
import threading
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from pathlib import Path

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
    with urllib.request.urlopen(f"{chdb_server_module}/ping") as response:
        assert response.read() == b"Ok.\n"
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
    with urllib.request.urlopen(f"{chdb_server_module}/?query=SELECT%2040%2B2") as response:
        assert response.read() == b"42\n"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{chdb_server_module}/?query=CREATE%20DATABASE%20nope")
    assert caught.value.code == 403
    assert caught.value.headers["X-ClickHouse-Exception-Code"] == "164"


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
