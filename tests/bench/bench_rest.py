"""REST read path: `python -m tests.bench.bench_rest [--seconds 8] [--connections 32]`.

Three HTTPS servers, one at a time, each one uvicorn worker (uvloop, httptools) configured by
`api.main.uvicorn_config` with the same self-signed certificate:
- `hello`: FastAPI's hello world, an async route (the anchor; measured first and last, the faster
  run counts);
- `store`: the API answering from ClickHouse only (the embedded database owner over HTTP), as
  before the read model;
- `memory`: the same API with its read model (api/read_model.py) in front of the store, filled
  with the same data the store holds, as the consumer would fill it.

Data: one day of synthetic trades (one a second) and its 1m candles for BENCH-USDT on one venue,
and a live order book of 100 levels a side in the API's hub, as the feed would have published it.
Requests: `/market/price/BENCH-USDT` and `/market/history/BENCH-USDT?interval=1m` over the day
(1440 candles, the last one still open); with the read model also `/market/orderbook/BENCH-USDT`
(depth 20, from the hub) and `/market/trades/BENCH-USDT` (a page of 100 trades of one hour; the
read model holds the last 24 h of trades, so from memory). A JWT on every request, as a client sends it,
rotating over 600 accounts so the rate limit runs at its default of 1000 a minute per account.

Load: `wrk` (Debian package `wrk`) on loopback, bounded in time: first closed-loop at
`--connections` for the maximum rate (req/s, p50, p99), then paced (a Lua `delay` per connection)
near a fixed rate for the latency targets (p99 at 1,000 req/s for price, 200 req/s for history,
500 req/s for the order book and trades; the anchor, hello, at 1,000 and 500 req/s alike).
Figures are printed beside the anchor from the same run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from random import Random

from tests.bench.report import report

SYMBOL = "BENCH-USDT"
VENUE = "benchx"
NS = 10**9
DAY_NS = 86_400 * NS
MINUTE_NS = 60 * NS
BOOK_LEVELS = 100
T0 = 1_723_075_200 * NS  # 2024-08-08T00:00:00Z

Trade = tuple[int, str, Decimal, Decimal]
CandleTuple = tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]


# --- data ----------------------------------------------------------------------------------


def day_of_trades() -> list[Trade]:
    """(event_ns, trade_id, price, size): one trade a second, a seeded random walk."""
    rng = Random(7)
    price = 60_000 * 100
    out: list[Trade] = []
    for i in range(86_400):
        price += rng.randint(-50, 50)
        size = Decimal(rng.randint(1, 5000)) / 1000
        out.append((T0 + i * NS + 123_000_000, str(10_000_000 + i), Decimal(price) / 100, size))
    return out


def minute_candles(trades: list[Trade]) -> list[CandleTuple]:
    """Closed 1m candles of every minute but the last (still open, served from trades)."""
    buckets: dict[int, list[tuple[int, str, Decimal, Decimal]]] = {}
    for t in trades:
        buckets.setdefault(t[0] // MINUTE_NS * MINUTE_NS, []).append(t)
    out = []
    for open_ns in sorted(buckets)[:-1]:
        rows = buckets[open_ns]
        prices = [r[2] for r in rows]
        out.append((open_ns, prices[0], max(prices), min(prices), prices[-1], sum((r[3] for r in rows), Decimal(0))))
    return out


def load_store(url: str, database: str) -> None:
    from infra.store.clickhouse import client_for_url
    from infra.store.migrate import apply_migrations

    admin = client_for_url(url)
    admin.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    admin.close()
    client = client_for_url(url, database=database)
    apply_migrations(client)
    trades = day_of_trades()
    client.insert(
        "trades",
        [[VENUE, SYMBOL, tid, p, s, "buy", ns, ns + 1000] for ns, tid, p, s in trades],
        column_names=["venue", "symbol", "trade_id", "price", "size", "side", "event_ts", "recv_ts"],
    )
    client.insert(
        "candles",
        [[VENUE, SYMBOL, "1m", o, op, h, lo, c, v, 60, "a", "b", 0, 1, o + 1, 1]
         for o, op, h, lo, c, v in minute_candles(trades)],
        column_names=["venue", "symbol", "interval", "open_ts", "open", "high", "low", "close", "volume", "trades",
                      "first_trade_id", "last_trade_id", "revision", "is_final", "event_ts", "version"],
    )  # fmt: skip
    client.close()


def publish_book(app: object) -> None:
    """The order book the feed would have published last: 100 levels a side around the day's close."""
    from api.ws.protocol import format_levels

    mid = day_of_trades()[-1][2]
    tick = Decimal("0.01")
    bids = format_levels([[mid - tick * (i + 1), Decimal(i % 7 + 1) / 10] for i in range(BOOK_LEVELS)])
    asks = format_levels([[mid + tick * (i + 1), Decimal(i % 5 + 1) / 10] for i in range(BOOK_LEVELS)])
    app.state.market_hub.publish_book(VENUE, SYMBOL, bids, asks, T0 + DAY_NS - NS)  # type: ignore[attr-defined]


# --- server subprocess -------------------------------------------------------------------


def serve(mode: str, port: int, url: str, database: str, cert: str, key: str) -> None:
    import uvicorn
    from fastapi import FastAPI

    from api.main import uvicorn_config
    from infra.config.collector import settle_garbage_collector
    from tests.api.conftest import test_api_settings

    settings = test_api_settings(
        rate_limit="1000/minute",  # the default, per account: the load spreads over ACCOUNTS
        address_budget="100000000/minute",  # one load generator on one address: its flood cap lifted
        tls_cert=Path(cert),
        tls_key=Path(key),
        symbols_cache_seconds=5.0,
    )
    if mode == "hello":
        app = FastAPI()

        # FastAPI's own hello world: an async route, answered on the event loop.
        @app.get("/hello")
        async def hello() -> dict[str, str]:
            return {"hello": "world"}
    else:
        from api.app import create_app
        from api.market_memory import MemoryMarket
        from api.read_model import MemTrade, ReadModel, VersionedCandle
        from infra.store.clickhouse import client_for_url
        from infra.store.repository import CandleRow
        from infra.store.risk_repository import RiskRepository

        class NoKeys:
            def get(self, key_id: str) -> None:
                return None

            def close(self) -> None:
                pass

        repository = RiskRepository(lambda: client_for_url(url, database=database), symbols_ttl_s=5.0)
        if mode == "memory":
            model = ReadModel()
            trades = day_of_trades()
            # What the consumer would have applied: the last trade, then the store fills the past in.
            model.apply_trades(VENUE, SYMBOL, [MemTrade(*trades[-1], "buy")])
            model.apply_candle(VENUE, SYMBOL, "1m", VersionedCandle(1, CandleRow(*minute_candles(trades)[-1])))
            repository.memory = MemoryMarket(model, repository)
        keys = NoKeys()
        app = create_app(repository=repository, api_settings=settings, key_repository=keys)  # type: ignore[arg-type]
        publish_book(app)
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, settings, "warning"))
    if mode != "hello":
        settle_garbage_collector()  # as `entasis api` serves (api/main.py run)
    server.run()


# --- driver ----------------------------------------------------------------------------------

# Each request carries the next of many accounts' tokens, so the rate limit runs at its default
# (1000 a minute per account) as it does in service, instead of one account at millions a minute.
_WRK_LUA = """
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  wrk.headers["Authorization"] = "Bearer " .. tokens[i]
  return wrk.format(nil)
end
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS"))
if delay_ms then function delay() return delay_ms end end
"""
PACED_CONNECTIONS = 20  # each waits `delay` between requests: 20 x 1000 / rate ms apart
# req/s of the paced runs per path: the issues' latency targets, and the anchor at each of them
PACED_TARGETS = {"hello": (1000, 500), "price": (1000,), "history": (200,), "orderbook": (500,), "trades": (500,)}
ACCOUNTS = 600  # enough that no account passes 1000 requests a minute in any run here


def wrk(
    url: str, tokens: Path, seconds: float, connections: int, pace_ms: float | None, workdir: Path
) -> dict[str, float]:
    script = workdir / "bench.lua"
    script.write_text(_WRK_LUA)
    cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "--timeout", "5s",
           "-s", str(script)]  # fmt: skip
    env = dict(os.environ, BENCH_TOKENS=str(tokens))
    if pace_ms is not None:
        env["BENCH_DELAY_MS"] = f"{pace_ms:g}"
    out = subprocess.run([*cmd, url], capture_output=True, text=True, env=env, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if m is None:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = int(non2xx.group(1)) if non2xx else 0
    done = re.search(r"(\d+) requests in", out)
    if done is None or int(done.group(1)) == 0:  # nothing answered in time: no latency to report, not 0 ms
        return {"req_s": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "non_2xx": errors}
    return {"req_s": round(rps), "p50_ms": pct("50"), "p99_ms": pct("99"), "non_2xx": errors}


def wait_ready(base: str, cert: Path, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/openapi.json", verify=str(cert), timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def install_wrk() -> None:
    """Debian's wrk, as the test script installs what its tests need (a fresh machine has none)."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print("wrk not found: installing it (apt-get install wrk)", flush=True)
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if subprocess.run([*sudo, *command], stdout=subprocess.DEVNULL).returncode != 0:
            return


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), *sys.argv[4:8])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    # The anchor runs first and last: the store's background merges after loading can slow the first
    # server measured, so each ratio is taken against the faster of the two hello runs.
    parser.add_argument("--modes", default="hello,store,memory,hello")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measured path")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        install_wrk()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")

    import httpx

    from api.tls import self_signed
    from infra.dev.processes import free_port
    from tests.api.conftest import token_for
    from tests.integration.chdb_fixture import start_chdb_server

    work = Path(tempfile.mkdtemp(prefix="bench-rest-"))
    cert, key = work / "cert.pem", work / "key.pem"
    self_signed(cert, key)
    db = start_chdb_server(work / "chdb", work / "chdb.log")
    try:
        load_store(db.url, "bench")
        token = token_for("bench-rest")
        tokens = work / "tokens.txt"
        tokens.write_text("\n".join(token_for(f"bench-rest-{i}") for i in range(ACCOUNTS)) + "\n")
        history = (
            "/api/v1/market/history/BENCH-USDT?interval=1m&exchange=benchx"
            "&start=2024-08-08T00:00:00Z&end=2024-08-09T00:00:00Z"
        )
        price = "/api/v1/market/price/BENCH-USDT"
        orderbook = "/api/v1/market/orderbook/BENCH-USDT?depth=20&exchange=benchx"
        trades = (
            "/api/v1/market/trades/BENCH-USDT?exchange=benchx&limit=100"
            "&start=2024-08-08T12:00:00Z&end=2024-08-08T13:00:00Z"
        )
        results: dict[str, dict[str, dict[str, float]]] = {}
        for mode in args.modes.split(","):
            port = free_port()
            server = subprocess.Popen([sys.executable, "-m", "tests.bench.bench_rest", "--serve", mode, str(port),
                                       db.url, "bench", str(cert), str(key)])  # fmt: skip
            try:
                base = f"https://127.0.0.1:{port}"
                wait_ready(base, cert)
                figures: dict[str, dict[str, float]] = {}
                paths = {"hello": "/hello"} if mode == "hello" else {"price": price, "history": history}
                if mode == "memory":  # the served configuration: the latency targets for these two
                    paths.update(orderbook=orderbook, trades=trades)
                for name, path in paths.items():
                    check = httpx.get(base + path, verify=str(cert), headers={"Authorization": f"Bearer {token}"})
                    assert check.status_code == 200, check.text[:300]
                    if name == "history":
                        assert len(check.json()["data"]) == 1440
                    if name == "orderbook":
                        assert len(check.json()["bids"]) == 20
                    if name == "trades":
                        assert len(check.json()["data"]) == 100
                    wrk(base + path, tokens, args.warmup, args.connections, None, work)  # warm-up
                    figures[f"{name}_max"] = wrk(base + path, tokens, args.seconds, args.connections, None, work)
                    # paced: PACED_CONNECTIONS connections, each waiting `delay` between requests
                    for target in PACED_TARGETS[name]:
                        figures[f"{name}_at_{target}"] = wrk(
                            base + path,
                            tokens,
                            args.seconds,
                            PACED_CONNECTIONS,
                            PACED_CONNECTIONS * 1000 / target,
                            work,
                        )
                if mode == "hello" and mode in results:
                    figures = max(results[mode], figures, key=lambda f: f["hello_max"]["req_s"])
                results[mode] = figures
                print(json.dumps({mode: figures}), flush=True)
            finally:
                server.terminate()
                server.wait(timeout=30)
        hello = results.get("hello", {}).get("hello_max", {}).get("req_s")
        memory = results.get("memory")
        if memory:
            report(
                "rest",
                "GET /market/price, closed loop, 32 connections",
                memory["price_max"]["req_s"],
                "req/s",
                anchor="FastAPI hello, same TLS",
                anchor_value=hello,
                target=">= 0.6 of hello",
            )
            report(
                "rest",
                "GET /market/price p99 at ~1,000 req/s",
                memory["price_at_1000"]["p99_ms"],
                "ms",
                anchor="hello p99",
                anchor_value=results.get("hello", {}).get("hello_at_1000", {}).get("p99_ms"),
                target="< 5 ms",
                higher_is_better=False,
            )
            report(
                "rest",
                "GET /market/history (1 day of 1m) p99 at 200 req/s",
                memory["history_at_200"]["p99_ms"],
                "ms",
                target="< 30 ms",
                higher_is_better=False,
            )
            hello_at_500 = results.get("hello", {}).get("hello_at_500", {}).get("p99_ms")
            for name, figure in (
                ("orderbook", "GET /market/orderbook (depth 20, live book) p99 at 500 req/s"),
                ("trades", "GET /market/trades (100 a page, from memory) p99 at 500 req/s"),
            ):
                report(
                    "rest",
                    figure,
                    memory[f"{name}_at_500"]["p99_ms"],
                    "ms",
                    anchor="hello p99 at 500 req/s",
                    anchor_value=hello_at_500,
                    target="< 10 ms",
                    higher_is_better=False,
                )
        if hello:
            for mode in ("store", "memory"):
                if mode in results:
                    ratio = results[mode]["price_max"]["req_s"] / hello
                    print(f"{mode}: /market/price {results[mode]['price_max']['req_s']} req/s = {ratio:.3f} of hello "
                          f"({hello} req/s); target >= 0.6", flush=True)  # fmt: skip
    finally:
        db.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
