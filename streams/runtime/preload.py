"""Imports a starting worker would otherwise make on its event loop in the middle of its first
seconds of work, made on a thread of their own while it waits ~1 s for its consumer group (on
the embedded broker one whole-second sleep, see streams/app.py):

- scipy.special, for the risk estimates (~0.3 s; `streams.core.risk.special`);
- pandas, which pyarrow imports the first time it converts Python values to an array (~0.2 s):
  the worker's first candle checkpoint did that, and stalled every agent meanwhile (py-spy).

Every thread of the worker shares one interpreter lock, so this is free only while the worker
has nothing else to do: `start_preload` is called once, as the worker is built."""

from __future__ import annotations

import threading

import pyarrow as pa

from streams.core import risk


def preload() -> None:
    risk.special()
    pa.array([0])  # pyarrow's pandas shim imports pandas on the first conversion of Python values


def start_preload() -> threading.Thread:
    thread = threading.Thread(target=preload, name="preload", daemon=True)
    thread.start()
    return thread
