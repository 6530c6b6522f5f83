"""Per-stage time accounting for backup and restore (``backup --json`` / ``restore --json``).

``Stages`` sums the seconds spent in each named stage over every thread, so on N threads a stage
can add up to more than the wall time: the numbers say where the work went (and how long a
thread waited for another), which is what a user needs to find the bottleneck. Timing costs two
``perf_counter`` calls per chunk."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Stages"]


class Stages:
    def __init__(self) -> None:
        self._t: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self._t[name] = self._t.get(name, 0.0) + seconds

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def as_dict(self) -> dict[str, float]:
        """Stage -> seconds (summed over threads), rounded to the millisecond."""
        with self._lock:
            return {k: round(v, 3) for k, v in self._t.items()}
