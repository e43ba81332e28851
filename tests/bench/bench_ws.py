"""WebSocket fan-out: `python -m tests.bench.bench_ws [--seconds 5] [--max-clients 1600]`.

Tick-to-client latency: from the moment a trade batch is handed to the producer for the raw topic
(`md.trades.v1`) to the moment a client (picows) has parsed the `market` message carrying it.
The trade's price *is* its send time (seconds since the epoch, 6 decimals), so every process reads
the latency off the message with no bookkeeping; the hosts share one clock (one machine).

Setup: the embedded Tansu broker (or ENTASIS_TEST_KAFKA_BOOTSTRAP); the API in a subprocess (one
uvicorn worker, uvloop + httptools, its one MarketFeed consumer); the producer here; clients in
`--client-procs` processes, every client subscribed to all `--symbols` symbols on the `market`
channel, so each receives up to one message per tick.

Reported: p50/p99 at 1k and 5k ticks/s with one client; then, at 1k ticks/s, 100 clients (the
target: every update delivered, p99 < 15 ms, >= 100k deliveries/s per API process, see
docs/architecture.md) and clients doubling from 200 until p99 passes 100 ms. Then the same with
the ticks published inside the API (the fan-out alone, no broker hop), and the same figures for
the anchor in the same run: a bare uvicorn fan-out (`plain_fanout_app`, ticks published
in-process) with the same clients. With `--tls both` (the default) all of it once more over
TLS, every server (the anchor too) with a development certificate and the API's cipher list,
as `entasis api` serves, up to 200 clients. Reported, never asserted. On a 2-core machine the client
processes share the CPUs with the server, so the capacity figure is a lower bound.

The producer is the ingest's own publisher (confluent-kafka, the connectors' linger) and the
clients are picows: with aiokafka and `websockets` clients the bench's own processes took more
CPU than the server (the plain anchor's p99 at 100 clients was 463 ms with them, 5 ms now).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.bench.report import report

NS = "bench-ws."
SYMBOL_FMT = "BW{}-USDT"


# --- server subprocess -------------------------------------------------------------------


def tls_paths(tls_dir: str) -> tuple[Path, Path]:
    """The development certificate and key of a `--tls` run."""
    return Path(tls_dir) / "cert.pem", Path(tls_dir) / "key.pem"



def plain_fanout_app(publishers: list[Any]) -> Any:
    """The anchor: a bare Starlette WebSocket route on the same uvicorn, no hub, no queue, no
    conflation: each tick is rendered once and sent to every socket in turn. What one process can
    deliver when nothing stands between the tick and the sockets."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from api.ws.protocol import market_message

    sockets: set[WebSocket] = set()

    async def plain(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()  # the subscribe frame
        await websocket.send_text('{"type": "subscribed"}')
        sockets.add(websocket)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            sockets.discard(websocket)

    async def publish(symbol: str, price: Decimal, event_ts_ns: int, volume: Decimal) -> None:
        text = market_message("bench", symbol, price, event_ts_ns, volume)
        for websocket in tuple(sockets):
            try:
                await websocket.send_text(text)
            except Exception:
                sockets.discard(websocket)

    publishers.append(publish)
    return Starlette(routes=[WebSocketRoute("/ws/market", plain)])


def run_server(port: int, bootstrap: str, tls_dir: str = "") -> None:
    """The API with its feed (`bootstrap` given) or without a broker (`bootstrap` = "direct": ticks are
    published into the hub by this process, which isolates the fan-out from the broker; "plain": the
    anchor, `plain_fanout_app`, direct too). Commands on stdin: `RUN rate seconds symbols` (direct
    mode: publish ticks), `STATS` (feed-arrival latency since the last STATS, ms: the raw topic -> API
    part of the tick-to-client latency). `tls_dir`: serve HTTPS with the development certificate
    there, with the API's own cipher list (api/main.py), as `entasis api` serves."""
    import uvicorn

    from api.app import create_app
    from api.ws import MarketFeed, MarketHub, install_market_websocket
    from api.ws.server_protocol import SendManyWebSocketProtocol
    from infra.config.collector import settle_garbage_collector
    from infra.config.settings import Settings
    from tests.api.conftest import test_api_settings
    from tests.api.test_ws_support import NoStore

    arrivals: list[float] = []

    class TimingHub(MarketHub):
        def publish_trades(self, venue: str, symbol: str, price: Decimal, event_ts_ns: int, volume: Decimal) -> None:
            arrivals.append((time.time() - float(price)) * 1000)
            super().publish_trades(venue, symbol, price, event_ts_ns, volume)

    direct = bootstrap in ("direct", "plain")
    publishers: list[Any] = []
    if bootstrap == "plain":
        app = plain_fanout_app(publishers)
        hub = None
    else:
        app = create_app(
            repository=NoStore(),  # type: ignore[arg-type]
            # one benchmark account opens every socket, from one address: its caps lifted (the
            # per-account socket cap of 10 would refuse the 11th client)
            api_settings=test_api_settings(
                rate_limit="1000000/minute",
                address_budget="1000000/minute",
                ws_max_sockets_per_account=1_000_000,
                ws_max_sockets=1_000_000,
            ),
            key_repository=NoStore(),  # type: ignore[arg-type]
        )
        hub = install_market_websocket(app, TimingHub(max_subscriptions=100))
    feed = None
    if not direct:
        assert hub is not None
        feed = MarketFeed(Settings(kafka_bootstrap=bootstrap, topic_namespace=NS), hub)  # type: ignore[call-arg]

    async def publish(rate: float, seconds: float, symbols: int) -> int:
        sent = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            while sent < int(elapsed * rate):
                now = time.time_ns()
                args = (SYMBOL_FMT.format(sent % symbols), Decimal(now // 1000) / 1_000_000, now, Decimal("0.001"))
                if hub is not None:
                    hub.publish_trades("bench", *args)
                else:
                    await publishers[0](*args)
                sent += 1
            await asyncio.sleep(0.0005)
        return sent

    async def commands() -> None:
        try:
            await serve_commands()
        except Exception:
            # The driver waits on this process's stdout: a failed command must end the process (its
            # stdout closes and the driver fails at once) instead of leaving the driver waiting.
            import traceback

            traceback.print_exc()
            os._exit(1)

    async def serve_commands() -> None:
        loop = asyncio.get_running_loop()
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
            if line[0] == "RUN":
                print(f"DONE {await publish(float(line[1]), float(line[2]), int(line[3]))}", flush=True)
            elif line[0] == "STATS":
                print(json.dumps({"p50": percentile(arrivals, 0.5), "p99": percentile(arrivals, 0.99)}), flush=True)
                arrivals.clear()

    async def main() -> None:
        # The API's own WebSocket protocol (api/main.py uvicorn_config); the anchor gets uvicorn's.
        ws: Any = "auto" if bootstrap == "plain" else SendManyWebSocketProtocol
        tls: dict[str, Any] = {}
        if tls_dir:
            from api.main import TLS12_CIPHERS

            cert, key = tls_paths(tls_dir)
            tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_ciphers": TLS12_CIPHERS}
        config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", http="httptools", ws=ws,
                                log_level="warning", **tls)
        server = uvicorn.Server(config)
        if feed is not None:
            await feed.start()
            await asyncio.wait_for(feed.assigned.wait(), 60)
        commander = asyncio.create_task(commands())
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        if bootstrap != "plain":
            settle_garbage_collector()  # as `entasis api` serves (api/main.py run)
        print("READY", flush=True)
        await serving
        commander.cancel()
        if feed is not None:
            await feed.stop()

    import uvloop

    uvloop.run(main())


# --- client subprocess -------------------------------------------------------------------


def run_clients(port: int, count: int, symbols: int, token: str, tls_dir: str = "") -> None:
    """Open `count` sockets, subscribe, print READY; then record latencies until stdin says STOP,
    and print them (ms, one JSON list).

    The clients are picows (frames parsed in C): they share the 2 cores with the server, so the
    lighter they are the less they disturb what is measured (the `websockets` clients used before
    took about as much CPU as the server at 100 clients). The same clients read both servers."""
    import orjson
    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    latencies: list[float] = []
    recording = False
    subscribe = orjson.dumps({"action": "subscribe", "channel": "market",
                              "symbols": [SYMBOL_FMT.format(i) for i in range(symbols)]})  # fmt: skip

    class Client(WSListener):
        def __init__(self) -> None:
            self.ready = asyncio.get_running_loop().create_future()

        def on_ws_connected(self, transport: WSTransport) -> None:
            transport.send(WSMsgType.TEXT, subscribe)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.PING:
                transport.send_pong(frame.get_payload_as_bytes())
                return
            if frame.msg_type != WSMsgType.TEXT:
                return
            if not self.ready.done():  # the subscription's acknowledgement
                self.ready.set_result(None)
                return
            if recording:
                price = orjson.loads(frame.get_payload_as_bytes()).get("price")
                if price is not None:
                    latencies.append((time.time() - float(price)) * 1000)

    async def main() -> None:
        nonlocal recording
        url = f"{'wss' if tls_dir else 'ws'}://127.0.0.1:{port}/ws/market"
        headers = {"Authorization": f"Bearer {token}"}
        context = ssl.create_default_context(cafile=tls_paths(tls_dir)[0]) if tls_dir else None
        clients: list[tuple[WSTransport, Client]] = []
        for _ in range(count):
            transport, listener = await ws_connect(Client, url, extra_headers=headers, ssl_context=context)
            assert isinstance(listener, Client)
            clients.append((transport, listener))
        await asyncio.gather(*(listener.ready for _, listener in clients))
        print("READY", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # START
        recording = True
        await loop.run_in_executor(None, sys.stdin.readline)  # STOP
        recording = False
        print(json.dumps([round(x, 3) for x in latencies]), flush=True)
        for transport, _ in clients:
            transport.disconnect()

    uvloop.run(main())


# --- driver --------------------------------------------------------------------------------


def _trade_batch(symbol: str, seq: int) -> bytes:
    import orjson

    from schemas.wire import TRADE_BATCH

    now = time.time_ns()
    price = format(Decimal(now // 1000) / 1_000_000, "f")
    return orjson.dumps({"schema": TRADE_BATCH, "venue": "bench", "symbol": symbol,
                         "trades": [[str(seq), price, "0.001", "buy", now, now]]})  # fmt: skip


async def produce(bootstrap: str, rate: float, seconds: float, symbols: int) -> int:
    """Ticks into the raw topic through the ingest's own publisher (confluent-kafka, its default
    linger of a few ms), as a connector sends them."""
    from schemas import topics
    from streams.ingest.publisher import KafkaPublisher

    topic = topics.TRADES.full_name(NS)
    publisher = KafkaPublisher(bootstrap)
    sent = 0
    try:
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                symbol = SYMBOL_FMT.format(sent % symbols)
                publisher.publish(topic, f"bench:{symbol}".encode(), _trade_batch(symbol, sent))
                sent += 1
            await asyncio.sleep(0.0005)
    finally:
        await asyncio.to_thread(publisher.close)  # flushes: every tick is on the broker when it returns
    return sent


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ticks(args: argparse.Namespace, server: Any, rate: float, seconds: float) -> int:
    if args.direct:
        server.stdin.write(f"RUN {rate} {seconds} {args.symbols}\n".encode())
        await server.stdin.drain()
        return int((await server.stdout.readline()).split()[1])
    return await produce(args.bootstrap, rate, seconds, args.symbols)


async def measure(
    args: argparse.Namespace, server: Any, port: int, clients: int, rate: float, token: str
) -> dict[str, Any]:
    procs = min(args.client_procs, clients)
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.bench_ws", "--client", str(port), str(n), str(args.symbols), token,
            args.tls_dir,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=1 << 30,  # one line holds every latency
        )
        for n in per
    ]  # fmt: skip
    for child in children:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 120)
        assert line.strip() == b"READY", line
    # warm-up: one second of ticks before recording
    await ticks(args, server, rate, 1.0)
    server.stdin.write(b"STATS\n")
    await server.stdin.drain()
    await server.stdout.readline()
    for child in children:
        assert child.stdin is not None
        child.stdin.write(b"START\n")
        await child.stdin.drain()
    sent = await ticks(args, server, rate, args.seconds)
    await asyncio.sleep(0.5)
    server.stdin.write(b"STATS\n")
    await server.stdin.drain()
    arrival = json.loads(await server.stdout.readline())  # let the last ticks arrive
    latencies: list[float] = []
    for child in children:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(b"STOP\n")
        await child.stdin.drain()
        latencies.extend(json.loads(await asyncio.wait_for(child.stdout.readline(), 120)))
        await child.wait()
    return {
        "clients": clients,
        "ticks_per_s": rate,
        "sent": sent,
        "deliveries_per_s": round(len(latencies) / args.seconds),
        "delivered_share": round(len(latencies) / max(1, sent * clients), 3),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "to_api_p50_ms": round(arrival["p50"], 2),
        "to_api_p99_ms": round(arrival["p99"], 2),
    }


async def drive_one(args: argparse.Namespace, label: str, mode: str) -> list[dict[str, Any]]:
    """Measure one server: `mode` is a bootstrap address (the API and its feed), "direct" (the API,
    ticks published into its hub) or "plain" (the anchor)."""
    from infra.dev.processes import free_port
    from tests.api.conftest import token_for

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.bench_ws", "--serve", str(port), mode, args.tls_dir,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    run = argparse.Namespace(**{**vars(args), "direct": mode in ("direct", "plain")})
    results: list[dict[str, Any]] = []

    def record(result: dict[str, Any]) -> None:
        result = {"server": label, **result}
        print(json.dumps(result), flush=True)
        results.append(result)

    try:
        assert server.stdout is not None and server.stdin is not None
        assert (await asyncio.wait_for(server.stdout.readline(), 90)).strip() == b"READY"
        await asyncio.sleep(0.5)
        token = token_for("bench-ws")
        # make the symbols known (seen on the feed) before anyone subscribes
        await ticks(run, server, 1000, 0.1)
        await asyncio.sleep(1.0)
        for rate in (1000.0, 5000.0):
            record(await measure(run, server, port, 1, rate, token))
        record(await measure(run, server, port, 100, 1000.0, token))  # the target: 1k ticks/s to 100 clients
        clients = 200
        while clients <= args.max_clients:
            result = await measure(run, server, port, clients, 1000.0, token)
            record(result)
            if result["p99_ms"] > 100:
                break
            clients *= 2
    finally:
        if server.returncode is None:
            server.terminate()
        await server.wait()
    return results


def report_p99(figure: str, row: dict[str, Any], plain: dict[str, Any]) -> None:
    report("ws", figure, row["p99_ms"], "ms", anchor="plain fan-out (in-process)", anchor_value=plain.get("p99_ms"),
           target="< 15 ms", higher_is_better=False)


async def drive(args: argparse.Namespace) -> None:
    from infra.cli.topics import create_topics

    if not args.direct:
        await asyncio.to_thread(create_topics, args.bootstrap, NS)
    if args.tls in ("off", "both"):
        await drive_pass(argparse.Namespace(**{**vars(args), "tls_dir": ""}), "")
    if args.tls in ("on", "both"):
        from api.tls import ensure_self_signed

        tls_dir = tempfile.mkdtemp(prefix="bench-ws-tls-")
        ensure_self_signed(*tls_paths(tls_dir))
        print("-- over TLS (wss://), as `entasis api` serves", flush=True)
        # Every server of this pass over TLS, the anchor too; up to 200 clients (the TLS figures
        # reported are at 100 and the peak), to keep `bench all` within its minutes.
        tls_args = {**vars(args), "tls_dir": tls_dir, "max_clients": min(args.max_clients, 200)}
        await drive_pass(argparse.Namespace(**tls_args), "over TLS: ")


async def drive_pass(args: argparse.Namespace, prefix: str) -> None:
    """The API through the broker, the API's fan-out alone and the plain anchor; the figures'
    names start with `prefix`."""
    api = await drive_one(args, "api", "direct" if args.direct else args.bootstrap)
    # The API again with its ticks published in-process: the fan-out alone, without the broker
    # hop (the embedded broker answers a fetch that found nothing after sleeping half its wait,
    # docs/embedded.md), so the two parts of the latency are seen apart.
    fanout = [] if args.direct or args.no_direct else await drive_one(args, "api-direct", "direct")
    if args.no_anchor:
        return
    anchor = await drive_one(args, "plain-anchor", "plain")
    by_clients = {(r["clients"], r["ticks_per_s"]): r for r in anchor}
    target = next((r for r in api if r["clients"] == 100), None)
    direct = next((r for r in fanout if r["clients"] == 100), None)
    if target is not None:
        plain = by_clients.get((100, target["ticks_per_s"]), {})
        report(
            "ws",
            f"{prefix}market channel, 1k ticks/s to 100 clients: deliveries",
            target["deliveries_per_s"],
            "/s",
            anchor="plain uvicorn fan-out",
            anchor_value=plain.get("deliveries_per_s"),
            target="every update, >= 100k/s per process",
        )
        report_p99(f"{prefix}same: p99 raw topic -> client", target, plain)
    if direct is not None:
        report_p99(f"{prefix}same, ticks published in the API (fan-out alone): p99 tick -> client", direct,
                   by_clients.get((100, direct["ticks_per_s"]), {}))
    peak = max(api, key=lambda r: r["deliveries_per_s"])
    report(
        "ws",
        f"{prefix}peak deliveries (1k ticks/s, {peak['clients']} clients)",
        peak["deliveries_per_s"],
        "/s",
        anchor="plain fan-out peak",
        anchor_value=max(r["deliveries_per_s"] for r in anchor),
    )
    for row in api:
        other = by_clients.get((row["clients"], row["ticks_per_s"]))
        if other is not None:
            ratio = row["deliveries_per_s"] / max(1, other["deliveries_per_s"])
            print(f"{row['clients']} clients at {row['ticks_per_s']:.0f} ticks/s: api {row['deliveries_per_s']}/s "
                  f"(share {row['delivered_share']}, p99 {row['p99_ms']} ms) vs plain {other['deliveries_per_s']}/s "
                  f"(share {other['delivered_share']}, p99 {other['p99_ms']} ms): {ratio:.2f}", flush=True)  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        run_server(int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        run_clients(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], *sys.argv[6:7])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--max-clients", type=int, default=1280)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--bootstrap", default=os.environ.get("ENTASIS_TEST_KAFKA_BOOTSTRAP"))
    parser.add_argument("--direct", action="store_true", help="no broker: ticks published in the API process")
    parser.add_argument("--no-anchor", action="store_true", help="skip the plain fan-out anchor")
    parser.add_argument("--no-direct", action="store_true", help="skip the fan-out-alone run")
    parser.add_argument("--tls", choices=("off", "on", "both"), default="both",
                        help="serve plain ws://, HTTPS (wss://, a development certificate, as `entasis api` serves), "
                             "or both, one pass after the other (default)")
    args = parser.parse_args()
    broker = None
    if not args.bootstrap and not args.direct:
        from infra.dev.broker import start_tansu
        from infra.dev.processes import free_port

        port = free_port()
        broker = start_tansu(port, log=Path(tempfile.mkdtemp()) / "tansu.log")
        args.bootstrap = f"127.0.0.1:{port}"
    try:
        asyncio.run(drive(args))
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)


if __name__ == "__main__":
    main()
