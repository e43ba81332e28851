"""Soak: `entasis up` with its default simulated feed, left running, plus one burst.

    python -m tests.bench.bench_soak --minutes 15 [--burst-at 2] [--burst-trades 200000]
    python -m tests.bench.bench_soak --broker-alone    # the cause, on the broker alone

Full mode starts `python -m infra.cli up` (broker, database owner, worker, API, default
feed) on free ports in a scratch directory; at minute `--burst-at` it publishes
`--burst-trades` simulated trades as fast as possible (`entasis simulate --count`, a replay
burst on top of the live feed). Every minute it samples each process's CPU seconds (over that
minute) and RSS from /proc, and the pipeline's lag: wall clock minus the newest stored trade's
event time (the simulated feed stamps trades with the wall clock, so a pipeline that keeps up
stays at the sink's flush delay; the burst runs on other symbols). At the end it prints a
least-squares slope per hour of each series, from the minute after the burst on (start-up
and burst left out). Figures only, never pass/fail.

`--broker-alone` measures the cause of a broker whose CPU grows with the data it holds: one
Tansu on memory storage, one topic partition pre-filled with N one-message batches, then 10 s
of 20 produced messages/s with K consumers (fetch wait W), and 5 s idle (see docs/embedded.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infra.cli.feeds import DEFAULT_SIM_SYMBOLS
from infra.config.api import ApiSettings
from infra.config.settings import ClickHouseSettings, Settings
from infra.dev.broker import tansu_command
from infra.dev.processes import free_port, wait_for_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The burst's own symbols: its simulated event times run ahead of the wall clock (a count is
# spread at the simulator's rate), so the lag is read on the live feed's symbols alone.
BURST_SYMBOLS = ("SOL-USDT", "XRP-USDT")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_of(pid: int) -> dict[str, int]:
    """The stack's processes by role, found by parent id and command line."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            words = [a.decode() for a in argv if a]
            if "broker" in words and "tansu" in words[0]:
                found["broker"] = int(entry.name)
            elif "infra.cli" in words:
                found[words[words.index("infra.cli") + 1]] = int(entry.name)
    return found


def slope_per_hour(minutes: list[float], values: list[float]) -> float:
    if len(minutes) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(minutes), np.asarray(values), 1)[0]) * 60.0


@dataclass
class Samples:
    minutes: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # CPU-s used during the minute
    rss: dict[str, list[float]] = field(default_factory=dict)
    lag_s: list[float] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)


def pipeline_lag(settings: Settings) -> tuple[float, int]:
    from infra.store.clickhouse import make_client

    client = make_client(settings)
    try:
        count, newest = client.query(
            "SELECT count(), toUnixTimestamp64Nano(maxIf(event_ts, symbol IN {live:Array(String)})) FROM trades",
            parameters={"live": list(DEFAULT_SIM_SYMBOLS)}).result_rows[0]
    finally:
        client.close()
    return (time.time() - int(newest) / 1e9 if count else float("nan")), int(count)


def soak(minutes: int, burst_at: int, burst_trades: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="entasis-soak-"))
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", data_dir=work,  # the owner's password is there
                        clickhouse=ClickHouseSettings(url=f"http://127.0.0.1:{free_port()}"),
                        api=ApiSettings(port=free_port()))
    env = dict(os.environ, **settings.to_env())
    root = Path(__file__).resolve().parents[2]
    up = subprocess.Popen([sys.executable, "-m", "infra.cli", "up", "--data-dir", str(work)], cwd=root, env=env,
                          stdout=(work / "up.log").open("wb"), stderr=subprocess.STDOUT)
    burst: subprocess.Popen[bytes] | None = None
    samples = Samples()
    try:
        wait_for_port(settings.api.host, settings.api.port, timeout_s=180, what="entasis up")
        pids = children_of(up.pid)
        pids["up"] = up.pid
        print(f"up: {pids} in {work}", flush=True)
        last = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        for minute in range(1, minutes + 1):
            if minute == burst_at + 1 and burst_trades:
                burst = subprocess.Popen([sys.executable, "-m", "infra.cli", "simulate", "--count", str(burst_trades),
                                          "--seed", "11", "--symbols", *BURST_SYMBOLS], cwd=root, env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            time.sleep(max(0.0, started + 60 * minute - time.monotonic()))
            if up.poll() is not None:
                raise RuntimeError(f"entasis up exited with {up.returncode}; see {work / 'up.log'}")
            samples.minutes.append(float(minute))
            for name, pid in pids.items():
                now = cpu_seconds(pid)
                samples.cpu.setdefault(name, []).append(now - last[name])
                samples.rss.setdefault(name, []).append(rss_mb(pid))
                last[name] = now
            try:
                lag, stored = pipeline_lag(settings)
            except Exception as exc:  # a busy database is a figure too, not the end of the soak
                print(f"lag query failed: {exc}", flush=True)
                lag, stored = float("nan"), -1
            samples.lag_s.append(lag)
            samples.stored.append(stored)
            print(f"min {minute:3d}: " + "  ".join(
                f"{n} {samples.cpu[n][-1]:5.1f}cpu-s {samples.rss[n][-1]:6.0f}MB" for n in pids)
                + f"  lag {lag:6.1f}s stored {stored}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: slopes of the minutes so far", flush=True)
    finally:
        for proc in (burst, up):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return summarise(samples, first_minute=burst_at + 2 if burst_trades else 2)


def summarise(samples: Samples, first_minute: float = 2) -> dict[str, object]:
    """Slopes from `first_minute` on: start-up and the burst's own minutes are not the trend."""
    keep = [i for i, m in enumerate(samples.minutes) if m >= first_minute]
    mins = [samples.minutes[i] for i in keep]
    out: dict[str, object] = {"minutes": len(samples.minutes)}
    print(f"\nslopes per hour over minutes {mins[0] if mins else '-'}..{mins[-1] if mins else '-'}:")
    for name in samples.cpu:
        cpu = slope_per_hour(mins, [samples.cpu[name][i] for i in keep])
        rss = slope_per_hour(mins, [samples.rss[name][i] for i in keep])
        first, final = samples.cpu[name][0], samples.cpu[name][-1]
        print(f"  {name:8s} CPU {cpu:+7.2f} CPU-s/min per hour (min 1: {first:.1f}, last: {final:.1f});"
              f"  RSS {rss:+8.1f} MB/hour (last {samples.rss[name][-1]:.0f} MB)")
        out[name] = {"cpu_s_per_min_slope_per_h": cpu, "rss_mb_slope_per_h": rss,
                     "cpu_s_per_min": samples.cpu[name], "rss_mb": samples.rss[name]}
    lag = slope_per_hour(mins, [samples.lag_s[i] for i in keep])
    print(f"  lag      {lag:+7.2f} s per hour (last {samples.lag_s[-1] if samples.lag_s else float('nan'):.1f} s)")
    out["lag"] = {"slope_s_per_h": lag, "lag_s": samples.lag_s, "stored": samples.stored}
    return out


# --- the broker alone -----------------------------------------------------------------------

async def _broker_alone(prefills: tuple[int, ...], rate: float) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    port = free_port()
    boot = f"127.0.0.1:{port}"
    broker = subprocess.Popen(tansu_command("127.0.0.1", port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tp = TopicPartition("soak", 0)

    async def consume(wait_ms: int, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=boot, group_id=None, enable_auto_commit=False,
                                    fetch_max_wait_ms=wait_ms)
        await consumer.start()
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        try:
            while not stop.is_set():
                await consumer.getmany(timeout_ms=100)
        finally:
            await consumer.stop()

    try:
        wait_for_port("127.0.0.1", port, what="tansu")
        admin = AIOKafkaAdminClient(bootstrap_servers=boot)
        await admin.start()
        await admin.create_topics([NewTopic("soak", 1, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=boot, acks="all")
        await producer.start()
        payload, held = b"x" * 2000, 0
        try:
            for target in prefills:
                while held < target:  # one message per batch: the broker stores one object per batch
                    await producer.send_and_wait("soak", payload, partition=0)
                    held += 1
                print(f"N={held} batches held, broker RSS {rss_mb(broker.pid):.0f} MB", flush=True)
                for consumers, wait_ms in ((0, 500), (1, 500), (4, 500), (1, 100), (1, 10), (4, 10)):
                    stop = asyncio.Event()
                    tasks = [asyncio.create_task(consume(wait_ms, stop)) for _ in range(consumers)]
                    await asyncio.sleep(2)
                    before, t0, sent = cpu_seconds(broker.pid), time.monotonic(), 0
                    while time.monotonic() - t0 < 10:
                        await producer.send_and_wait("soak", payload, partition=0)
                        sent += 1
                        await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
                    busy = cpu_seconds(broker.pid) - before
                    held += sent
                    await asyncio.sleep(2)  # consumers caught up: nothing new to fetch
                    before = cpu_seconds(broker.pid)
                    await asyncio.sleep(5)
                    idle = (cpu_seconds(broker.pid) - before) * 2
                    stop.set()
                    await asyncio.gather(*tasks)
                    print(f"  N={held:6d} K={consumers} wait={wait_ms:4d} ms: producing {rate:.0f} msg/s "
                          f"{busy:5.2f} CPU-s/10 s; idle {idle:5.2f} CPU-s/10 s", flush=True)
        finally:
            await producer.stop()
    finally:
        broker.kill()
        broker.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=int, default=15)
    p.add_argument("--burst-at", type=int, default=2, help="minute after which the burst is published")
    p.add_argument("--burst-trades", type=int, default=200_000, help="0: no burst")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--broker-alone", action="store_true", help="measure the broker alone (see above)")
    p.add_argument("--prefill", type=int, nargs="+", default=[0, 10_000, 30_000],
                   help="--broker-alone: batches held before each round")
    args = p.parse_args(argv)
    if args.broker_alone:
        asyncio.run(_broker_alone(tuple(args.prefill), rate=20.0))
        return 0
    figures = soak(args.minutes, args.burst_at, args.burst_trades)
    line = json.dumps(figures)
    print(line)
    if args.json:
        Path(args.json).write_text(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
