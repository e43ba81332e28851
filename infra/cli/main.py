"""`entasis`: the one command line of the engine.

    entasis up [--replay PATH] [--speed X]   broker, database, migrations, topics, worker, API, feed
    entasis broker | db | migrate | topics create | worker | api | replay PATH | simulate
    entasis bench [candles|pipeline|parser|chdb|all] [ARGS...]   benchmarks (tests/bench), reported only
    entasis token | keys create|list|revoke   credentials for the API

Every sub-command reads the same ENTASIS_* settings (infra/config/settings.py); `up` passes the
addresses of what it started to its children through those variables. `--run-id NAME` (replay,
worker, api, up) isolates a run: its settings are derived once, by `infra.config.run.for_run`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from infra.cli import history as history_cli
from infra.cli import live as live_cli
from infra.cli import portfolio as portfolio_cli
from infra.cli import replay as replay_cli
from infra.cli import risk as risk_cli
from infra.cli import status as status_cli
from infra.config.run import BadRunId, for_run, is_run
from infra.config.settings import Settings, get_settings

log = logging.getLogger("entasis")


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from infra.store.clickhouse import ensure_database, make_client
    from infra.store.migrate import apply_migrations

    ensure_database(settings)
    client = make_client(settings)
    try:
        applied = apply_migrations(client)
    finally:
        client.close()
    print(f"migrations applied: {applied or 'none (already up to date)'}")
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from infra.cli.topics import create_topics
    from infra.config.kafka import librdkafka_options

    created = create_topics(settings.kafka_bootstrap, settings.topic_namespace, replication=settings.topic_replication,
                            security=librdkafka_options(settings))
    print(f"topics created: {created or 'none (all exist)'}")
    return 0


def cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    from infra.dev.broker import start_tansu

    port = int(settings.kafka_bootstrap.rsplit(":", 1)[1])
    proc = start_tansu(port)
    print(f"tansu broker on 127.0.0.1:{port} (memory storage: nothing survives a restart)")
    return _wait_child(proc)


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from infra.dev.chdb_server import serve

    url = settings.clickhouse.url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    serve(str(Path(args.path or settings.data_dir / "chdb").resolve()), "127.0.0.1", port)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    import faust

    from infra.config.collector import settle_garbage_collector
    from streams.app import build_worker

    if is_run(settings):
        replay_cli.prepare_run(settings)  # a run's worker may start before anything else of the run
    worker = build_worker(settings)
    settle_garbage_collector()  # the worker's hot path allocates several hundred objects a message
    try:
        faust.Worker(worker.app, loglevel=args.loglevel, quiet=True).execute_from_commandline()
    finally:
        if worker.trade_store is not None:
            worker.trade_store.close()
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from api.main import UnsafeSettings, run, startup_problems
    from api.workers import serve_workers, worker_problems

    flags = {"tls_cert": args.tls_cert, "tls_key": args.tls_key}
    api_settings = settings.api.model_copy(update={k: v for k, v in flags.items() if v is not None})
    host, port = args.host or api_settings.host, args.port or api_settings.port
    if args.workers != 1:
        # Checked here, once, before the socket is bound: each child checks again as it starts.
        problems = worker_problems(args.workers, settings, api_settings, dev=args.dev)
        problems += startup_problems(api_settings, dev=args.dev, host=host)
        if problems:
            print(f"entasis api: {UnsafeSettings(problems)}", file=sys.stderr)
            return 2
        return serve_workers(_api_arguments(args), host, port, args.workers)
    try:
        run(host=host, port=port, settings=settings, api_settings=api_settings, dev=args.dev,
            reuse_port=args.reuse_port)
    except UnsafeSettings as exc:
        print(f"entasis api: {exc}", file=sys.stderr)
        return 2
    return 0


def _api_arguments(args: argparse.Namespace) -> list[str]:
    """`entasis api`'s own arguments, rebuilt for its worker processes (global settings travel in
    the environment, which the children inherit)."""
    out = ["api"]
    for flag, value in (("--host", args.host), ("--port", args.port), ("--tls-cert", args.tls_cert),
                        ("--tls-key", args.tls_key), ("--run-id", args.run_id)):
        if value is not None:
            out += [flag, str(value)]
    return out + (["--dev"] if args.dev else [])


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    """Print a JWT this deployment accepts (for development and scripts: `$(entasis token)`)."""
    from api.auth import issue_token, signing_key
    from api.principal import KNOWN_SCOPES
    from infra.config.settings import development_jwt_secret

    scopes = [s for part in (args.scope or [" ".join(KNOWN_SCOPES)]) for s in part.split()]
    if args.data_dir:  # `up --data-dir X`'s development secret lives in X
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    try:
        api_settings = settings.api
        # no secret configured: the data directory's random development secret (made on first use)
        dev_secret = lambda: development_jwt_secret(settings)  # noqa: E731
        _, is_dev_secret = signing_key(api_settings, dev_secret)
        token = issue_token(api_settings, args.account, scopes, ttl_s=args.ttl, dev_secret=dev_secret)
    except ValueError as exc:
        print(f"entasis token: {exc}", file=sys.stderr)
        return 2
    if is_dev_secret:
        print(f"entasis token: signed with the development secret of {settings.data_dir} (no "
              "ENTASIS_API_JWT_SECRET set): only a server started with --dev on that data directory accepts it",
              file=sys.stderr)
    print(token)
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """API keys in ClickHouse: create (the key is printed once), list, revoke."""
    from ipaddress import ip_network

    from clickhouse_connect.driver.exceptions import DatabaseError

    from api.key_repository import ApiKeyRepository
    from api.keys import ApiKeyRecord, generate_key
    from api.principal import KNOWN_SCOPES, valid_account
    from infra.store.clickhouse import make_client
    from infra.store.repository import StoreUnavailable

    repo = ApiKeyRepository(lambda: make_client(settings))
    try:
        if args.action == "create":
            scopes = [s for part in (args.scope or [" ".join(KNOWN_SCOPES)]) for s in part.split()]
            unknown = sorted(set(scopes) - set(KNOWN_SCOPES))
            if unknown or not scopes:
                print(f"entasis keys: unknown scopes {unknown}; known: {' '.join(KNOWN_SCOPES)}", file=sys.stderr)
                return 2
            if not valid_account(args.account):
                print(f"entasis keys: not a valid account id: {args.account!r}", file=sys.stderr)
                return 2
            try:
                networks = tuple(ip_network(c, strict=False) for c in args.allow or [])
            except ValueError as exc:
                print(f"entasis keys: {exc}", file=sys.stderr)
                return 2
            new = generate_key()
            repo.insert(ApiKeyRecord(new.key_id, args.account, new.key_hash, tuple(dict.fromkeys(scopes)),
                                     networks, args.label or ""))
            print(new.key)
            print(f"key id {new.key_id} for account {args.account}, scopes {' '.join(dict.fromkeys(scopes))}"
                  f"{', from ' + ' '.join(map(str, networks)) if networks else ''}. "
                  "The key is shown only now: store it safely.", file=sys.stderr)
            return 0
        if args.action == "list":
            rows = repo.list_keys(args.account, include_revoked=args.all)
            print("key_id\taccount\tscopes\tallow\tcreated_at\trevoked_at\tlabel")
            for r in rows:
                print("\t".join([r.key_id, r.account, " ".join(r.scopes),
                                 " ".join(map(str, r.allowed_networks)) or "-",
                                 r.created_at.isoformat() if r.created_at else "-",
                                 r.revoked_at.isoformat() if r.revoked_at else "-", r.label or "-"]))
            return 0
        revoked = repo.revoke(args.key_id)
        if revoked is None:
            print(f"entasis keys: no key with id {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {revoked.key_id} (account {revoked.account}); API processes refuse it within "
              "ENTASIS_API_API_KEY_CACHE_SECONDS (default 2 s)")
        return 0
    except StoreUnavailable:
        print(f"entasis keys: no database answers at {settings.clickhouse.url}", file=sys.stderr)
        return 2
    except DatabaseError as exc:
        if "UNKNOWN_TABLE" in str(exc) or "UNKNOWN_DATABASE" in str(exc):
            print("entasis keys: no api_keys table: run `entasis migrate` first", file=sys.stderr)
            return 2
        raise
    finally:
        repo.close()


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from infra.cli.feeds import simulate_into

    print(simulate_into(settings, rate=args.rate, seed=args.seed, symbols=tuple(args.symbols), count=args.count,
                        book_gaps=args.book_gaps))
    return 0


BENCHMARKS = {"candles": "bench_candles", "pipeline": "bench_pipeline", "parser": "bench_parser",
              "chdb": "bench_chdb_server", "orderbook": "bench_orderbook", "risk": "bench_risk",
              "connector": "bench_connector", "predict": "bench_predict", "ws": "bench_ws", "rest": "bench_rest",
              "soak": "bench_soak", "replay": "bench_replay_store"}
SOAKS = {"soak"}  # run for many minutes on purpose: by name only, never by `bench all`


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    """Run tests/bench modules with this interpreter, from the repository root (they import `tests`),
    passing the extra arguments to each; reports only, so the exit status is the worst module's.
    Through tests/bench/suite.py, which prints every headline figure beside its anchor in one table
    at the end (and with `--readme` writes it into README.md)."""
    import subprocess

    names = [name for name in BENCHMARKS if name not in SOAKS] if args.which == "all" else [args.which]
    root = Path(__file__).resolve().parents[2]
    # `bench all --readme`: argparse hands everything after the benchmark's name to bench_args.
    extra = [arg for arg in args.bench_args if arg != "--readme"]
    extra = extra[1:] if extra[:1] == ["--"] else extra
    command = [sys.executable, "-m", "tests.bench.suite"]
    if args.readme or "--readme" in args.bench_args:
        command += ["--readme", str(root / "README.md")]
    command += [BENCHMARKS[name] for name in names]
    if extra:
        command += ["--", *extra]
    proc = subprocess.Popen(command, cwd=root)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the suite and the benchmark too (same process group): let them stop what
        # they started (subprocess.call would SIGKILL here and orphan a broker, database or worker).
        return proc.wait() or 130


def _venue_items(settings: Settings, args: argparse.Namespace) -> list[str]:
    text = args.venues if getattr(args, "venues", None) else settings.venues
    return [part.strip() for part in text.split(",") if part.strip()]


def cmd_venues_check(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from infra.cli.venues_check import check, render

    endpoint = getattr(args, "endpoint", None) or settings.exchange_endpoint or None
    lines = asyncio.run(check(_venue_items(settings, args), endpoint=endpoint))
    print(render(lines))
    bad = sum(not line.ok for line in lines)
    print(f"{len(lines) - bad} of {len(lines)} feeds usable" + (f"; fix the {bad} marked FAIL" if bad else ""))
    return 1 if bad else 0


def cmd_connect(settings: Settings, args: argparse.Namespace) -> int:
    """The live connectors alone, publishing to the configured broker, until Ctrl-C."""
    import asyncio
    import threading

    from infra.cli.live import configured_feeds, connector_config, connectors_for, metrics_address, run_connectors
    from schemas.venues import InvalidFeed
    from streams.ingest.publisher import KafkaPublisher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        feeds = configured_feeds(settings, args.venues)
    except InvalidFeed as exc:
        print(f"bad venue configuration: {exc}", file=sys.stderr)
        return 2
    if not feeds:
        print("no venues configured: set ENTASIS_VENUES or pass --venues", file=sys.stderr)
        return 2
    publisher = KafkaPublisher.for_settings(settings)
    connectors = connectors_for(feeds, publisher, connector_config(settings, args.endpoint, args.record))
    stop = threading.Event()
    try:
        asyncio.run(run_connectors(connectors, stop, metrics_at=metrics_address(settings)))
    except KeyboardInterrupt:
        stop.set()
    finally:
        publisher.close()
    return 0


def cmd_double(settings: Settings, args: argparse.Namespace) -> int:
    """The local exchange double, playing the recorded captures until Ctrl-C."""
    import asyncio

    from infra.dev.exchange_double.run import serve

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.speed, Path(args.data), args.venue or None,
                          max_frames=args.max_frames, paused=args.paused))
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from infra.cli.live import configured_feeds
    from infra.cli.stack import Stack
    from schemas.venues import InvalidFeed

    if args.dry_run:
        return cmd_venues_check(settings, args)
    try:
        live = configured_feeds(settings, args.venues)
    except InvalidFeed as exc:
        print(f"bad venue configuration: {exc} (`entasis venues check` checks a list)", file=sys.stderr)
        return 2
    if live and args.replay:
        print("--venues and --replay exclude each other: live feeds or a recording", file=sys.stderr)
        return 2
    if args.record and not live:
        print(f"--record {args.record}: nothing to record: it records the frames of live venues (--venues or "
              f"ENTASIS_VENUES), and {'a replay' if args.replay else 'the simulated feed'} has none; the simulated "
              "feed is reproduced by its seed (--seed), a replay by its input", file=sys.stderr)
        return 2
    if args.replay:
        # a replay has no live feed that could go stale (MARKET_002 would only hide the data), and
        # decides time by event time only: a wall-clock idle close would depend on the pace
        settings = settings.model_copy(update={
            "stale_feed_seconds": 0.0,
            "candle": settings.candle.model_copy(update={"idle_timeout_s": float("inf")})})
    stack = Stack(settings, data_dir=Path(args.data_dir) if args.data_dir else settings.data_dir)
    return stack.run(replay=Path(args.replay) if args.replay else None, speed=args.speed,
                     exit_after_feed=args.exit_after_feed, sim_rate=args.rate, seed=args.seed,
                     live=live, endpoint=args.endpoint, double_port=args.exchange_double,
                     book_gaps=args.book_gaps, history_days=args.history_days,
                     ready_timeout_s=args.ready_timeout, record_dir=args.record)


def _wait_child(proc: Any) -> int:
    def forward(signum: int, _frame: Any) -> None:
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return int(proc.wait())


def _add_run_id(command: argparse.ArgumentParser) -> None:
    command.add_argument("--run-id", metavar="NAME",
                         help="an isolated run: topics run-NAME.*, database entasis_run_NAME, consumer group "
                              "entasis-run-NAME, event time only (see infra/config/run.py)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="entasis", description="Entasis Engine: real-time market data and analytics")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole system on the embedded broker and database")
    up.add_argument("--replay", help="replay recorded captures (file or directory) instead of the simulated feed")
    up.add_argument("--speed", type=float, default=None,
                    help="replay at this multiple of real time (default: full speed)")
    up.add_argument("--rate", type=float, default=20.0, help="simulated trades per second per symbol")
    up.add_argument("--seed", type=int, default=7, help="seed of the simulated feed")
    up.add_argument("--book-gaps", type=float, default=0.0, metavar="RATE",
                    help="simulated feed: drop this share of book diffs (watch book_gap -> book_resync)")
    up.add_argument("--history-days", type=int, default=90, metavar="DAYS",
                    help="days of candle history before the feed starts (default 90; 0: none): seeded for the "
                         "simulated feed, backfilled from the venues (1h and the risk intervals) for --venues")
    up.add_argument("--data-dir", help="where the embedded database lives (default .entasis)")
    up.add_argument("--ready-timeout", type=float, default=180.0, metavar="SECONDS",
                    help="how long to wait for /readyz and the feed's symbols before giving up (default 180)")
    up.add_argument("--exit-after-feed", action="store_true",
                    help="stop cleanly once the replay is fully stored (for scripts and benchmarks)")
    up.add_argument("--venues", help="live feeds, comma-separated venue:SYMBOL (default ENTASIS_VENUES), "
                                     "e.g. binance:ETH-USDT,kraken:BTC-USD")
    up.add_argument("--endpoint",
                    help="reach the venues at this exchange double URL (default ENTASIS_EXCHANGE_ENDPOINT)")
    up.add_argument("--exchange-double", type=int, nargs="?", const=18900, default=None, metavar="PORT",
                    help="start the local exchange double (recorded data, no internet) on PORT (18900) "
                         "and connect the live feeds to it; --speed paces its playback")
    live_cli.add_record_argument(up)
    up.add_argument("--dry-run", action="store_true",
                    help="check the configured venues and symbols (as `entasis venues check`) and exit")
    _add_run_id(up)
    up.set_defaults(func=cmd_up)

    venues = sub.add_parser("venues", help="live venues")
    venues_sub = venues.add_subparsers(dest="venues_command", required=True)
    vcheck = venues_sub.add_parser("check", help="check that every configured venue:SYMBOL exists on its venue")
    vcheck.add_argument("--venues", help="comma-separated venue:SYMBOL (default ENTASIS_VENUES)")
    vcheck.add_argument("--endpoint", help="an exchange double URL instead of the venues")
    vcheck.set_defaults(func=cmd_venues_check)

    connect = sub.add_parser("connect", help="run the live connectors alone (to the configured broker)")
    connect.add_argument("--venues", help="comma-separated venue:SYMBOL (default ENTASIS_VENUES)")
    connect.add_argument("--endpoint", help="an exchange double URL instead of the venues")
    live_cli.add_record_argument(connect)
    connect.set_defaults(func=cmd_connect)

    double = sub.add_parser("double", help="run the local exchange double (recorded venues on loopback)")
    double.add_argument("--host", default="127.0.0.1")
    double.add_argument("--port", type=int, default=18900)
    double.add_argument("--speed", type=float, default=1.0,
                        help="multiple of the recorded pace; 0: as fast as possible")
    double.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"),
                        help="the recorded data folder (default ../shared/data)")
    double.add_argument("--venue", action="append", help="only these venues (repeatable; default all)")
    double.add_argument("--max-frames", type=int, help="play only the first N frames of the Binance recordings")
    double.add_argument("--paused", action="store_true",
                        help="wait for POST /_control/<venue>/play before playing (subscribe first, lose nothing)")
    double.set_defaults(func=cmd_double)

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
    _add_run_id(worker)
    worker.set_defaults(func=cmd_worker)

    api = sub.add_parser("api", help="serve the REST API (HTTPS; refuses unsafe settings unless --dev)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--tls-cert", type=Path, help="PEM certificate (or ENTASIS_API_TLS_CERT)")
    api.add_argument("--tls-key", type=Path, help="PEM private key (or ENTASIS_API_TLS_KEY)")
    api.add_argument("--dev", action="store_true",
                     help="development only: allow plain HTTP, the development JWT secret and every client address")
    api.add_argument("--workers", type=int, default=1,
                     help="API processes sharing the port, each with its own read model and feed (default 1; "
                          "more than 1 needs ENTASIS_API_REDIS_URL outside --dev, see api/workers.py)")
    api.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # one of --workers N
    _add_run_id(api)
    api.set_defaults(func=cmd_api)

    token = sub.add_parser("token", help="print a JWT for development and scripts")
    token.add_argument("--account", default="dev", help="the `sub` claim (default: dev)")
    token.add_argument("--scope", action="append",
                       help="scopes, space-separated or repeated (default: all four)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until `exp` (default 3600)")
    token.add_argument("--data-dir", help="the data directory whose development secret signs (default .entasis)")
    token.set_defaults(func=cmd_token)

    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="create a key for an account; the key is printed once")
    create.add_argument("--account", required=True)
    create.add_argument("--scope", action="append", help="scopes, space-separated or repeated (default: all four)")
    create.add_argument("--allow", action="append", metavar="CIDR",
                        help="client addresses this key may be used from (repeatable; default: any allowed address)")
    create.add_argument("--label", help="a note for humans, e.g. who holds the key")
    create.set_defaults(func=cmd_keys)
    listing = keys_sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--account")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(func=cmd_keys)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys)

    replay = sub.add_parser("replay", help="publish recorded captures to the raw topics")
    replay_cli.add_arguments(replay)
    _add_run_id(replay)

    sim = sub.add_parser("simulate", help="publish a seeded simulated feed")
    sim.add_argument("--symbols", nargs="+", default=["BTC-USDT", "ETH-USDT"])
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--count", type=int, default=None, help="publish this many trades as fast as possible, then stop")
    sim.add_argument("--rate", type=float, default=20.0, help="paced: trades per second per symbol")
    sim.add_argument("--book-gaps", type=float, default=0.0, metavar="RATE",
                     help="paced: the share of book diffs dropped (e.g. 0.01), to watch book_gap -> book_resync")
    sim.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="run benchmarks (tests/bench): figures and ratios, never pass/fail")
    bench.add_argument("which", nargs="?", default="all", choices=[*BENCHMARKS, "all"])
    bench.add_argument("--readme", action="store_true",
                       help="write the table of figures, anchors and ratios into README.md")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to each benchmark, e.g. --trades 100000")
    bench.set_defaults(func=cmd_bench)
    risk_cli.add_parser(sub)
    status_cli.add_parser(sub)
    portfolio_cli.add_parser(sub)
    history_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("ENTASIS_LOGLEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    args = parser().parse_args(argv)
    started = time.monotonic()
    try:
        settings = get_settings()
    except ValueError as exc:  # UnknownSettings, or a pydantic ValidationError (a ValueError too)
        print(f"entasis {args.command}: invalid settings: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "run_id", None) is not None:
        # one derivation for every command of a run, so they all meet in the same topics and database
        args.live_settings = settings  # what a run reads from (`replay --from clickhouse`)
        try:
            settings = for_run(settings, args.run_id)
        except BadRunId as exc:
            print(f"entasis {args.command}: {exc}", file=sys.stderr)
            return 2
    code = int(args.func(settings, args))
    log.debug("%s finished in %.1fs", args.command, time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
