"""Writes a live connector's raw frames to gzip files (`entasis connect --record DIR`).

Format and file names: `streams.core.recording`. One `Recorder` per venue; files are opened in
append mode, so a restarted connector adds to the day's file (a gzip file of several members,
which gzip readers read as one stream). A file is closed when the UTC day of the frames it
receives changes, and all are closed on `close()`.

Frames arrive on the event loop thread and are written there: a frame is small and gzip
buffers, so a write is a memory copy almost always. The buffers are flushed to disk at most
every `flush_every_s` (a sync flush costs some compression), so a killed process loses at
most that much of its recording.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

from streams.core.recording import file_name, frame_symbol, line

log = logging.getLogger(__name__)


class Recorder:
    def __init__(
        self,
        directory: str | Path,
        venue: str,
        *,
        flush_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.venue = venue
        self.flush_every_s = flush_every_s
        self._clock = clock
        self._files: dict[str | None, tuple[str, IO[bytes]]] = {}  # by symbol (None: the venue file)
        self._last_flush = clock()
        self.frames = 0
        self.failed = False

    def write(self, recv_ns: int, frame: bytes | bytearray | str) -> None:
        """Appends one frame; an I/O error is logged once and recording stops, the feed goes on
        (a full disk must not take the live data down with it)."""
        if self.failed:
            return
        try:
            self._write(recv_ns, frame)
        except OSError:
            self.failed = True
            log.exception("%s: recording into %s failed; recording stopped", self.venue, self.directory)

    def _write(self, recv_ns: int, frame: bytes | bytearray | str) -> None:
        symbol = frame_symbol(self.venue, frame)
        name = file_name(self.venue, symbol, recv_ns)
        current = self._files.get(symbol)
        if current is None or current[0] != name:
            if current is not None:
                current[1].close()  # the UTC day changed: the next day's file
            # kept open across frames (closed on rotation and in `close`): not a `with` block
            handle = cast(IO[bytes], gzip.open(self.directory / name, "ab"))  # noqa: SIM115
            current = self._files[symbol] = (name, handle)
        current[1].write(line(recv_ns, frame))
        self.frames += 1
        now = self._clock()
        if now - self._last_flush >= self.flush_every_s:
            self._last_flush = now
            self.flush()

    def flush(self) -> None:
        for _, handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        for _, handle in self._files.values():
            try:
                handle.close()
            except OSError:
                log.exception("%s: closing a recording failed", self.venue)
        self._files.clear()

    def paths(self) -> list[Path]:
        return sorted(self.directory / name for name, _ in self._files.values())
