"""Progress counters shared by long operations; the CLI renders them, the library never prints."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Progress", "ProgressCallback"]


@dataclass
class Progress:
    """Counters of a running operation. ``total_*`` are 0 when unknown."""

    phase: str = ""
    files_done: int = 0
    bytes_done: int = 0
    total_files: int = 0
    total_bytes: int = 0
    current: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


ProgressCallback = Callable[[Progress], None]


class Reporter:
    """Thread-safe updates with rate-limited callbacks (at most every ``interval`` seconds)."""

    def __init__(self, callback: ProgressCallback | None, phase: str, interval: float = 0.1) -> None:
        self.state = Progress(phase=phase)
        self._cb = callback
        self._interval = interval
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, files: int = 0, nbytes: int = 0, current: str | None = None) -> None:
        with self._lock:
            self.state.files_done += files
            self.state.bytes_done += nbytes
            if current is not None:
                self.state.current = current
        self._maybe_emit()

    def set_totals(self, files: int, nbytes: int) -> None:
        self.state.total_files, self.state.total_bytes = files, nbytes
        self._maybe_emit(force=True)

    def _maybe_emit(self, force: bool = False) -> None:
        if self._cb is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self._interval:
            self._last = now
            self._cb(self.state)

    def done(self) -> None:
        self._maybe_emit(force=True)
