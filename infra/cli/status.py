"""`entasis status`: is the running system ready, and if not, where does it stand?

    entasis status                      # the system `entasis up` runs here (it leaves <data dir>/up.json)
    entasis status --json               # the same, as one JSON object, for scripts
    entasis status --watch 2            # redrawn every 2 s until Ctrl-C
    entasis status --api https://api:8443 --cafile ca.pem --worker http://worker:9101 \\
                   --connectors http://feed:9102        # any deployment, by its addresses

Read, never written: each process's own operator endpoints (`/healthz`, `/readyz`, `/metrics`:
the API, the worker, the live connectors), the broker (committed offsets of every consumer group
on the deployment's topics against each partition's end, the dead-letter topic's size, the last
trades published) and the database (the newest trade stored per stream). Whatever cannot be
reached is reported as such, with its error, and the rest is still shown.

Exit status: 0 when every process it checked is ready (`/readyz` 200), 1 when one is not or
cannot be reached, or when there was nothing to check; 2 for bad arguments.

Addresses: `--api`, `--worker`, `--connectors`, `--bootstrap` when given; else what `entasis
up` wrote to `<data dir>/up.json` while it runs (its ports are chosen when it starts); else the
settings (ENTASIS_API_HOST/PORT, ENTASIS_WORKER_METRICS_HOST/PORT, ENTASIS_CONNECTOR_METRICS_HOST/PORT,
ENTASIS_KAFKA_BOOTSTRAP). A process with no address is not checked (a worker without a metrics
port, a deployment without connectors).

The broker's end offsets are read with a fetch of each partition's last batch, not from its
ListOffsets answer: the embedded broker (Tansu) answers ListOffsets with the last batch's base
offset + 1, not the end (README, "The embedded infrastructure").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.config.settings import Settings

UP_FILE = "up.json"  # written by `entasis up` (infra/cli/stack.py) while it runs
STATUS_GROUP_PREFIX = "entasis-status-"  # this command's own reader, never a real group
TRADES_TAIL = 200  # messages read back from the end of each trades partition: the streams' last trades

# (name, labels) -> value, for the samples of one scrape
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ---------------------------------------------------------------------------------------------
# where to look


@dataclass(frozen=True)
class Targets:
    api: str | None = None
    cafile: str | None = None
    worker: str | None = None
    connectors: str | None = None
    bootstrap: str | None = None
    source: str = "settings"  # where the addresses came from: flags, up.json, settings


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_up_file(data_dir: Path) -> dict[str, Any] | None:
    """What a running `entasis up` wrote about itself; None when there is none or its process is gone."""
    try:
        found = json.loads((data_dir / UP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and _pid_alive(found.get("pid")) else None


def write_up_file(folder: Path, **addresses: Any) -> Path:
    """For `entasis up`: where its processes answer, for `entasis status` (removed when it stops)."""
    path = folder / UP_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **addresses}, indent=1))
    tmp.replace(path)
    return path


def remove_up_file(folder: Path) -> None:
    path = folder / UP_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def up_settings(settings: Settings, up: Mapping[str, Any]) -> Settings:
    """`settings` as the running `entasis up` has them: its topic namespace, database and data
    directory (the database owner's password lies there), and its staleness limit."""
    clickhouse = settings.clickhouse.model_copy(
        update={k: up[f"clickhouse_{k}"] for k in ("url", "database") if isinstance(up.get(f"clickhouse_{k}"), str)}
    )
    update: dict[str, Any] = {"clickhouse": clickhouse}
    if isinstance(up.get("namespace"), str):
        update["topic_namespace"] = up["namespace"]
    if isinstance(up.get("data_dir"), str):
        update["data_dir"] = Path(up["data_dir"])
    if isinstance(up.get("stale_feed_seconds"), int | float):
        update["stale_feed_seconds"] = float(up["stale_feed_seconds"])
    return settings.model_copy(update=update)


def targets(settings: Settings, args: argparse.Namespace, up: Mapping[str, Any] | None = None) -> Targets:
    if up is not None:
        base = Targets(
            api=up.get("api"),
            cafile=up.get("cafile"),
            worker=up.get("worker"),
            connectors=up.get("connectors"),
            bootstrap=up.get("bootstrap"),
            source="up.json",
        )
    else:
        api = settings.api
        scheme = "https" if api.tls_enabled else "http"
        worker, connector = settings.worker, settings.connector
        base = Targets(
            api=f"{scheme}://{api.host}:{api.port}",  # a certificate a CA signed: the system's trust (--cafile else)
            worker=f"http://{worker.metrics_host}:{worker.metrics_port}" if worker.metrics_port else None,
            connectors=(
                f"http://{connector.metrics_host}:{connector.metrics_port}" if connector.metrics_port else None
            ),
            bootstrap=settings.kafka_bootstrap,
        )
    flags = {
        "api": args.api,
        "cafile": args.cafile,
        "worker": args.worker,
        "connectors": args.connectors,
        "bootstrap": args.bootstrap,
    }
    given = {k: v for k, v in flags.items() if v}
    if not given:
        return base
    source = "flags" if base.source == "settings" else f"flags, {base.source}"
    return Targets(**{**asdict(base), **given, "source": source})


# ---------------------------------------------------------------------------------------------
# the processes' own endpoints


@dataclass
class Component:
    """One process, as its operator endpoints describe it."""

    name: str
    url: str | None
    reachable: bool = False
    healthy: bool = False
    ready: bool = False
    checks: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    samples: Samples = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "reachable": self.reachable,
            "healthy": self.healthy,
            "ready": self.ready,
            "checks": self.checks,
            "error": self.error,
        }


def _get(url: str, context: ssl.SSLContext | None, timeout_s: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": "application/json, text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def parse_samples(text: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def probe(name: str, url: str | None, cafile: str | None = None, timeout_s: float = 3.0) -> Component:
    """`/healthz`, `/readyz` and `/metrics` of one process; what failed is in `error`."""
    component = Component(name, url)
    if url is None:
        component.error = "no address (not checked)"
        return component
    base = url.rstrip("/")
    context = None
    if base.startswith("https:"):
        context = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    try:
        status, _ = _get(base + "/healthz", context, timeout_s)
        component.reachable = True
        component.healthy = status == 200
        status, body = _get(base + "/readyz", context, timeout_s)
        component.ready = status == 200
        with contextlib.suppress(ValueError):
            component.checks = json.loads(body).get("checks", {})
        status, body = _get(base + "/metrics", context, timeout_s)
        if status == 200:
            component.samples = parse_samples(body.decode())
        elif component.error is None:
            component.error = f"/metrics answered {status}"
    except (OSError, ValueError) as exc:  # refused, timed out, TLS, a malformed answer
        reason = getattr(exc, "reason", None) or exc
        component.error = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
    return component


def _series(samples: Samples, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(labels), value) for (n, labels), value in samples.items() if n == name]


# ---------------------------------------------------------------------------------------------
# the broker


@dataclass
class GroupLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


@dataclass
class BrokerView:
    reachable: bool = False
    error: str | None = None
    lag: list[GroupLag] = field(default_factory=list)
    ends: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # (topic, partition) -> (low, end)
    dead_letters: int | None = None
    # stream -> (trade id, event ns, receive ns) of the newest trade among the last ones published
    last_published: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def _declared(namespace: str, topic: str) -> bool:
    from schemas import topics

    return topic.startswith(namespace) and any(spec.name == topic[len(namespace) :] for spec in topics.ALL_TOPICS)


def broker_view(bootstrap: str, namespace: str, timeout_s: float = 5.0) -> BrokerView:
    """Committed offsets of every consumer group on the deployment's topics, each partition's end,
    the dead letters held, and the last trade published per stream."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
    from confluent_kafka.admin import AdminClient, OffsetSpec

    view = BrokerView()
    quiet: dict[str, Any] = {"log_level": 0, "logger": _Silent()}
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000), **quiet})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        view.error = f"no broker answers at {bootstrap}: {exc.args[0] if exc.args else exc}"
        return view
    view.reachable = True
    partitions = [
        (name, p) for name, topic in metadata.topics.items() if _declared(namespace, name) for p in topic.partitions
    ]
    if not partitions:
        view.error = f"no topics of namespace {namespace!r} on {bootstrap} (run `entasis topics create`)"
        return view
    try:
        low = _list_offsets(admin, partitions, OffsetSpec.earliest(), timeout_s)
        hint = _list_offsets(admin, partitions, OffsetSpec.latest(), timeout_s)
    except KafkaException as exc:
        view.error = f"offsets: {exc.args[0] if exc.args else exc}"
        return view
    trades_topic = namespace + "md.trades.v1"
    ends, tail = _fetch_ends(bootstrap, partitions, low, hint, {trades_topic: TRADES_TAIL}, timeout_s)
    view.ends = {tp: (low[tp], ends[tp]) for tp in partitions}
    dead = [tp for tp in partitions if tp[0] == namespace + "md.deadletter.v1"]
    view.dead_letters = sum(ends[tp] - low[tp] for tp in dead) if dead else None
    view.last_published = _last_trades(tail)

    try:
        groups = admin.list_consumer_groups(request_timeout=timeout_s).result()
        names = sorted(g.group_id for g in groups.valid if not g.group_id.startswith(STATUS_GROUP_PREFIX))
    except KafkaException as exc:
        view.error = f"consumer groups: {exc.args[0] if exc.args else exc}"
        return view
    for name in names:
        try:
            futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(name)], request_timeout=timeout_s)
            committed = next(iter(futures.values())).result().topic_partitions or []
        except KafkaException as exc:
            view.error = f"offsets of group {name}: {exc.args[0] if exc.args else exc}"
            continue
        for tp in committed:
            key = (tp.topic, tp.partition)
            if key in ends and tp.offset >= 0:
                view.lag.append(GroupLag(name, tp.topic, tp.partition, tp.offset, ends[key]))
    view.lag.sort(key=lambda row: (row.group, row.topic, row.partition))
    return view


class _Silent:
    """librdkafka's log lines (a refused connection is logged every retry) are not for this output."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def isEnabledFor(self, level: int) -> bool:  # the logging.Logger interface
        return False


def _list_offsets(
    admin: Any, partitions: list[tuple[str, int]], spec: Any, timeout_s: float
) -> dict[tuple[str, int], int]:
    from confluent_kafka import TopicPartition

    futures = admin.list_offsets({TopicPartition(t, p): spec for t, p in partitions}, request_timeout=timeout_s)
    return {(tp.topic, tp.partition): max(0, future.result().offset) for tp, future in futures.items()}


def _fetch_ends(
    bootstrap: str,
    partitions: list[tuple[str, int]],
    low: Mapping[tuple[str, int], int],
    hint: Mapping[tuple[str, int], int],
    tail: Mapping[str, int],
    timeout_s: float,
) -> tuple[dict[tuple[str, int], int], list[Any]]:
    """Each partition's end (the high watermark of a fetch of its last batch), and the messages of
    the partitions in `tail` (topic -> how many back from the end)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    ends = {tp: hint[tp] for tp in partitions}
    wanted = [tp for tp in partitions if hint[tp] > low[tp]]
    if not wanted:
        return ends, []
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{STATUS_GROUP_PREFIX}{uuid.uuid4().hex[:8]}",  # assigned, never joined or committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "fetch.queue.backoff.ms": 10,
            "log_level": 0,
            "logger": _Silent(),
        }
    )
    kept: list[Any] = []
    try:
        consumer.assign([TopicPartition(t, p, max(low[(t, p)], hint[(t, p)] - tail.get(t, 1))) for t, p in wanted])
        pending = set(wanted)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                key = (message.topic(), message.partition())
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(key)
                    continue
                if message.topic() in tail:
                    kept.append(message)
        for t, p in wanted:
            _, high = consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            if high is not None and high >= 0:
                ends[(t, p)] = max(ends[(t, p)], high)
    finally:
        consumer.close()
    return ends, kept


def _last_trades(messages: Iterable[Any]) -> dict[str, tuple[str, int, int]]:
    from schemas.wire import WireError, decode_trade_batch

    last: dict[str, tuple[str, int, int]] = {}
    for message in messages:
        try:
            venue, symbol, rows = decode_trade_batch(message.value())
        except WireError:
            continue
        if rows:
            stream, newest = f"{venue}:{symbol}", max(rows, key=lambda r: r.event_ts_ns)
            seen = last.get(stream)
            if seen is None or newest.event_ts_ns >= seen[1]:
                last[stream] = (newest.trade_id, newest.event_ts_ns, newest.recv_ts_ns)
    return last


# ---------------------------------------------------------------------------------------------
# the database


def stored_newest(
    settings: Settings, streams: Iterable[str], timeout_s: float = 5.0
) -> tuple[dict[str, int], str | None]:
    """The newest stored trade's event time per stream (nanoseconds), and the error if the database
    did not answer. One primary-key range read per stream (`trades` is ordered by venue, symbol, time)."""
    from infra.store.clickhouse import make_client

    wanted = sorted(streams)
    if not wanted:
        return {}, None
    try:
        client = make_client(settings, connect_timeout=timeout_s, send_receive_timeout=timeout_s)
    except Exception as exc:
        return {}, f"{type(exc).__name__}: {str(exc)[:200]}"
    out: dict[str, int] = {}
    try:
        for stream in wanted:
            venue, symbol = stream.split(":", 1)
            rows = client.query(
                "SELECT toUnixTimestamp64Nano(max(event_ts)), count() > 0 FROM trades "
                "WHERE venue = {v:String} AND symbol = {s:String}",
                parameters={"v": venue, "s": symbol},
            ).result_rows
            if rows and rows[0][1]:
                out[stream] = int(rows[0][0])
    except Exception as exc:
        return out, f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        client.close()
    return out, None


# ---------------------------------------------------------------------------------------------
# the whole picture


def _label_key(labels: Mapping[str, str]) -> str:
    return f"{labels.get('venue', '?')}:{labels.get('symbol', '?')}"


def feeds_table(
    worker: Component,
    connectors: Component,
    broker: BrokerView,
    stored: Mapping[str, int],
    stale_after_s: float,
    now_ns: int | None = None,
) -> list[dict[str, Any]]:
    """One row per stream (venue:symbol) that any source knows. The last trade's age is the
    connector's where one runs, else that of the newest trade on the trades topic (its receive time)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    rows: dict[str, dict[str, Any]] = {}

    def row(stream: str) -> dict[str, Any]:
        return rows.setdefault(
            stream,
            {
                "feed": stream,
                "state": None,
                "last_trade_age_s": None,
                "trades": None,
                "backfilled": None,
                "reconnects": None,
                "stalls": None,
                "gaps": None,
                "watermark_delay_s": None,
                "published_event_ns": None,
                "stored_event_ns": None,
                "sink_lag_s": None,
            },
        )

    samples = connectors.samples
    for labels, value in _series(samples, "entasis_connector_feed_state"):
        if value == 1.0:
            row(_label_key(labels))["state"] = labels.get("state")
    for name, column in (
        ("entasis_connector_trades_total", "trades"),
        ("entasis_connector_backfilled_trades_total", "backfilled"),
        ("entasis_connector_reconnects_total", "reconnects"),
        ("entasis_connector_stalls_total", "stalls"),
        ("entasis_connector_last_trade_age_seconds", "last_trade_age_s"),
    ):
        for labels, value in _series(samples, name):
            row(_label_key(labels))[column] = int(value) if name.endswith("_total") else round(value, 3)
    gaps: dict[str, int] = {}
    for name in ("entasis_connector_trade_gaps_total", "entasis_connector_book_gaps_total"):
        for labels, value in _series(samples, name):
            gaps[_label_key(labels)] = gaps.get(_label_key(labels), 0) + int(value)
    for stream, n in gaps.items():
        row(stream)["gaps"] = n
    for labels, value in _series(worker.samples, "entasis_worker_candle_watermark_delay_seconds"):
        r = row(_label_key(labels))
        r["watermark_delay_s"] = round(value, 3)
        if r["state"] is None and stale_after_s > 0:  # no connector speaks for it: judged by its trades
            r["state"] = "fresh" if value <= stale_after_s else "stale"
    for stream, (_, event_ns, recv_ns) in broker.last_published.items():
        r = row(stream)
        r["published_event_ns"] = event_ns
        if r["last_trade_age_s"] is None:
            r["last_trade_age_s"] = round(max(0, now_ns - recv_ns) / 1e9, 3)
        newest = stored.get(stream)
        r["stored_event_ns"] = newest
        if newest is not None:
            r["sink_lag_s"] = round(max(0, event_ns - newest) / 1e9, 3)
    return [rows[k] for k in sorted(rows)]


def gather(settings: Settings, where: Targets, timeout_s: float = 3.0) -> dict[str, Any]:
    """Everything `entasis status` shows, as one JSON-able object."""
    api = probe("api", where.api, where.cafile, timeout_s)
    worker = probe("worker", where.worker, None, timeout_s)
    connectors = probe("connectors", where.connectors, None, timeout_s)
    broker = (
        broker_view(where.bootstrap, settings.topic_namespace, timeout_s)
        if where.bootstrap
        else BrokerView(error="no address (not checked)")
    )
    stored: dict[str, int] = {}
    db_error = None
    if broker.last_published:
        stored, db_error = stored_newest(settings, broker.last_published, timeout_s)
    checked = [c for c in (api, worker, connectors) if c.url is not None]
    ready = bool(checked) and all(c.ready for c in checked)
    worker_dead = {
        labels.get("source", "?"): int(v) for labels, v in _series(worker.samples, "entasis_worker_dead_letters_total")
    }
    return {
        "ready": ready,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "addresses_from": where.source,
        "components": {c.name: c.as_json() for c in (api, worker, connectors)},
        "broker": {
            "bootstrap": where.bootstrap,
            "reachable": broker.reachable,
            "error": broker.error,
            "namespace": settings.topic_namespace,
        },
        "database": {
            "url": settings.clickhouse.url,
            "database": settings.clickhouse.database,
            "checked": bool(broker.last_published),  # asked only for the streams the broker has trades of
            "error": db_error,
        },
        "consumer_lag": [{**asdict(r), "lag": r.lag} for r in broker.lag],
        "feeds": feeds_table(worker, connectors, broker, stored, settings.stale_feed_seconds),
        "dead_letters": {"on_topic": broker.dead_letters, "published_by_worker": worker_dead},
        "sink": {
            labels.get("table", "?"): int(v) for labels, v in _series(worker.samples, "entasis_worker_sink_rows_total")
        },
        "api": _api_summary(api),
    }


def _api_summary(api: Component) -> dict[str, Any]:
    s = api.samples
    if not s:
        return {}
    answered = _series(s, "entasis_api_requests_total")
    requests = sum(v for _, v in answered)
    errors = sum(v for labels, v in answered if labels.get("status", "").startswith("5"))
    return {
        "requests": int(requests),
        "server_errors": int(errors),
        "rate_limited": int(s.get(("entasis_api_rate_limited_total", ()), 0)),
        "websocket_sessions": int(s.get(("entasis_api_websocket_sessions", ()), 0)),
        "market_feed_consuming": bool(s.get(("entasis_api_market_feed_consuming", ()), 0)),
    }


# ---------------------------------------------------------------------------------------------
# the table


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in (header, *rows)]


def _n(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}" if value < 100 else f"{value:,.0f}{unit}"
    return f"{value:,}{unit}"


def render(status: Mapping[str, Any]) -> str:
    lines = [
        f"Entasis {'READY' if status['ready'] else 'NOT READY'} at {status['checked_at']} "
        f"(addresses from {status['addresses_from']})",
        "",
    ]
    rows = []
    for name, c in status["components"].items():
        if c["url"] is None:
            rows.append([name, "-", "not checked", "", "no address"])
            continue
        state = "ready" if c["ready"] else "NOT READY" if c["reachable"] else "UNREACHABLE"
        checks = ", ".join(f"{k}={v.get('state')}" for k, v in c["checks"].items() if isinstance(v, dict))
        rows.append([name, c["url"], state, checks, c["error"] or ""])
    broker = status["broker"]
    rows.append(
        [
            "broker",
            broker["bootstrap"] or "-",
            "reachable" if broker["reachable"] else "UNREACHABLE" if broker["bootstrap"] else "not checked",
            f"namespace={broker['namespace'] or '(none)'}",
            broker["error"] or "",
        ]
    )
    db = status["database"]
    db_state = "UNREACHABLE" if db["error"] else "reachable" if db["checked"] else "not checked"
    rows.append(["database", db["url"], db_state, f"database={db['database']}", db["error"] or ""])
    lines += _table(["PROCESS", "ADDRESS", "STATE", "CHECKS", "ERROR"], rows)

    feeds = status["feeds"]
    if feeds:
        lines += [
            "",
            *_table(
                [
                    "FEED",
                    "STATE",
                    "LAST TRADE",
                    "WATERMARK",
                    "TRADES",
                    "BACKFILLED",
                    "RECONNECTS",
                    "STALLS",
                    "GAPS",
                    "SINK LAG",
                ],
                [
                    [
                        f["feed"],
                        f["state"] or "-",
                        _n(f["last_trade_age_s"], " s"),
                        _n(f["watermark_delay_s"], " s"),
                        _n(f["trades"]),
                        _n(f["backfilled"]),
                        _n(f["reconnects"]),
                        _n(f["stalls"]),
                        _n(f["gaps"]),
                        _n(f["sink_lag_s"], " s") if f["published_event_ns"] is not None else "-",
                    ]
                    for f in feeds
                ],
            ),
        ]
    lag = status["consumer_lag"]
    if lag:
        namespace = broker["namespace"]
        lines += [
            "",
            *_table(
                ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"],
                [
                    [
                        r["group"],
                        r["topic"].removeprefix(namespace),
                        str(r["partition"]),
                        _n(r["committed"]),
                        _n(r["end"]),
                        _n(r["lag"]),
                    ]
                    for r in lag
                ],
            ),
        ]
        total: dict[str, int] = {}
        for r in lag:
            total[r["group"]] = total.get(r["group"], 0) + r["lag"]
        lines.append("lag by group: " + ", ".join(f"{g} {n:,}" for g, n in total.items()))
    dead = status["dead_letters"]
    by_source = ", ".join(f"{k} {v:,}" for k, v in sorted(dead["published_by_worker"].items()))
    lines += [
        "",
        f"dead letters: {_n(dead['on_topic'])} on the topic"
        + (f"; published by this worker: {by_source}" if by_source else ""),
    ]
    if status["sink"]:
        lines.append("stored by the worker: " + ", ".join(f"{t} {n:,}" for t, n in sorted(status["sink"].items())))
    api = status["api"]
    if api:
        lines.append(
            f"api: {api['requests']:,} requests ({api['server_errors']:,} 5xx, {api['rate_limited']:,} "
            f"rate-limited), {api['websocket_sessions']} WebSocket sessions, market feed "
            f"{'consuming' if api['market_feed_consuming'] else 'NOT consuming'}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the command


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    up = read_up_file(Path(args.data_dir) if args.data_dir else settings.data_dir)
    if up is not None and args.run_id is None:
        settings = up_settings(settings, up)
    where = targets(settings, args, up)
    while True:
        status = gather(settings, where, timeout_s=args.timeout)
        if args.json:
            print(json.dumps(status), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\x1b[H\x1b[2J", end="")
            print(render(status), flush=True)
        if not args.watch:
            return 0 if status["ready"] else 1
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0 if status["ready"] else 1


def add_parser(sub: Any) -> None:
    """Add `status` to the `entasis` sub-command parsers."""
    status = sub.add_parser("status", help="is the running system ready: processes, feeds, lag, sink, dead letters")
    status.add_argument("--api", metavar="URL", help="the API's base URL (default: up.json, else the settings)")
    status.add_argument("--cafile", help="the certificate that signs the API's (default: up.json's)")
    status.add_argument("--worker", metavar="URL", help="the worker's metrics base URL, e.g. http://127.0.0.1:9101")
    status.add_argument("--connectors", metavar="URL", help="the connectors' metrics base URL (`entasis connect`)")
    status.add_argument("--bootstrap", metavar="HOST:PORT", help="the broker (default: up.json, else the settings)")
    status.add_argument("--data-dir", help="where `entasis up` keeps up.json (default .entasis)")
    status.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each answer (default 3)")
    status.add_argument("--run-id", metavar="NAME", help="an isolated run's topics, group and database")
    status.set_defaults(func=cmd_status)
