"""`entasis`: the one command line of the engine.

    entasis up [--replay PATH] [--speed X]   broker, database, migrations, topics, worker, API, feed
    entasis broker | db | migrate | topics create | worker | api | replay PATH | simulate

Every sub-command reads the same ENTASIS_* settings (infra/settings.py); `up` passes the
addresses of what it started to its children through those variables.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from infra.settings import Settings, get_settings

log = logging.getLogger("entasis")


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from infra.clickhouse import ensure_database, make_client
    from infra.migrate import apply_migrations

    ensure_database(settings)
    client = make_client(settings)
    try:
        applied = apply_migrations(client)
    finally:
        client.close()
    print(f"migrations applied: {applied or 'none (already up to date)'}")
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from infra.topics import create_topics

    created = create_topics(settings.kafka_bootstrap, settings.topic_namespace, replication=settings.topic_replication)
    print(f"topics created: {created or 'none (all exist)'}")
    return 0


def cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    from infra.broker import start_tansu

    port = int(settings.kafka_bootstrap.rsplit(":", 1)[1])
    proc = start_tansu(port)
    print(f"tansu broker on 127.0.0.1:{port} (memory storage: nothing survives a restart)")
    return _wait_child(proc)


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from infra.chdb_server import serve

    url = settings.clickhouse_url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    serve(str(Path(args.path or settings.data_dir / "chdb").resolve()), "127.0.0.1", port)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    import faust

    from streams.app import build_worker

    worker = build_worker(settings)
    faust.Worker(worker.app, loglevel=args.loglevel, quiet=True).execute_from_commandline()
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from api.main import run

    run(host=args.host or settings.api_host, port=args.port or settings.api_port)
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from infra.feeds import replay_into

    print(replay_into(settings, Path(args.path), speed=args.speed, progress=not args.quiet))
    return 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from infra.feeds import simulate_into

    print(simulate_into(settings, rate=args.rate, seed=args.seed, symbols=tuple(args.symbols), count=args.count))
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from infra.stack import Stack

    if args.replay:
        # a replay has no live feed that could go stale: MARKET_002 would only hide the data
        settings = settings.model_copy(update={"stale_feed_seconds": 0.0})
    stack = Stack(settings, data_dir=Path(args.data_dir) if args.data_dir else settings.data_dir)
    return stack.run(replay=Path(args.replay) if args.replay else None, speed=args.speed,
                     exit_after_feed=args.exit_after_feed, sim_rate=args.rate, seed=args.seed)


def _wait_child(proc: Any) -> int:
    def forward(signum: int, _frame: Any) -> None:
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return int(proc.wait())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="entasis", description="Entasis Engine: real-time market data and analytics")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole system on the embedded broker and database")
    up.add_argument("--replay", help="replay recorded captures (file or directory) instead of the simulated feed")
    up.add_argument("--speed", type=float, default=None,
                    help="replay at this multiple of real time (default: full speed)")
    up.add_argument("--rate", type=float, default=20.0, help="simulated trades per second per symbol")
    up.add_argument("--seed", type=int, default=7, help="seed of the simulated feed")
    up.add_argument("--data-dir", help="where the embedded database lives (default .entasis)")
    up.add_argument("--exit-after-feed", action="store_true",
                    help="stop cleanly once the replay is fully stored (for scripts and benchmarks)")
    up.set_defaults(func=cmd_up)

    sub.add_parser("broker", help="run the embedded Tansu broker").set_defaults(func=cmd_broker)
    db = sub.add_parser("db", help="run the embedded database owner (ClickHouse HTTP protocol)")
    db.add_argument("--path", help="data path (default <data_dir>/chdb)")
    db.set_defaults(func=cmd_db)
    sub.add_parser("migrate", help="apply ClickHouse migrations (idempotent)").set_defaults(func=cmd_migrate)
    topics = sub.add_parser("topics", help="topic administration")
    topics.add_argument("action", choices=["create"])
    topics.set_defaults(func=cmd_topics)

    worker = sub.add_parser("worker", help="run the Faust worker (candles and sinks)")
    worker.add_argument("--loglevel", default="warning")
    worker.set_defaults(func=cmd_worker)

    api = sub.add_parser("api", help="serve the REST API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=cmd_api)

    replay = sub.add_parser("replay", help="publish recorded captures to the raw topics")
    replay.add_argument("path")
    replay.add_argument("--speed", type=float, default=None)
    replay.add_argument("--quiet", action="store_true")
    replay.set_defaults(func=cmd_replay)

    sim = sub.add_parser("simulate", help="publish a seeded simulated feed")
    sim.add_argument("--symbols", nargs="+", default=["BTC-USDT", "ETH-USDT"])
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--count", type=int, default=None, help="publish this many trades as fast as possible, then stop")
    sim.add_argument("--rate", type=float, default=20.0, help="paced: trades per second per symbol")
    sim.set_defaults(func=cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("ENTASIS_LOGLEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    args = parser().parse_args(argv)
    started = time.monotonic()
    code = int(args.func(get_settings(), args))
    log.debug("%s finished in %.1fs", args.command, time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
