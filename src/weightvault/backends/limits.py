"""Concurrency and bandwidth limits, as a wrapper around any backend.

* ``max_concurrent``: at most this many calls run at once (a semaphore); others wait.
* ``upload_bps`` / ``download_bps``: bytes per second through ``save`` / ``load``, enforced by a
  token bucket shared by all threads (burst: one second's worth, at least one object's size is
  always let through, so large objects are never starved). ``None`` means unlimited.

Listing, stat, remove, retain and remove_temp are counted against the concurrency limit only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TypeVar

from weightvault.backends.base import Backend, FileType
from weightvault.backends.wrapper import WrapperBackend

__all__ = ["LimitedBackend", "TokenBucket", "parse_rate"]

T = TypeVar("T")

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_rate(text: str) -> int:
    """'50M', '50MB', '10MiB', '800k' (per second) -> bytes per second; ValueError if malformed."""
    t = text.strip().lower().removesuffix("/s")
    i = len(t)
    while i and not t[i - 1].isdigit() and t[i - 1] != ".":
        i -= 1
    number, unit = t[:i], t[i:].strip()
    if not number or unit not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a rate; use e.g. 50M, 10MiB or 800k (bytes per second)")
    value = int(float(number) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"rate {text!r} must be positive")
    return value


class TokenBucket:
    """``rate`` bytes per second, burst ``rate`` bytes. ``take(n)`` blocks until n bytes may pass."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(rate)
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:  # one taker at a time: waiting is fair in arrival order
            now = self._clock()
            self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            if wait:
                self._sleep(wait)
                self._last = self._clock()
                self._tokens = 0.0


class LimitedBackend(WrapperBackend):
    """Wraps ``inner``; same protocol."""

    def __init__(
        self,
        inner: Backend,
        *,
        max_concurrent: int | None = None,
        upload_bps: int | None = None,
        download_bps: int | None = None,
    ) -> None:
        super().__init__(inner)
        self._slots = threading.BoundedSemaphore(max_concurrent) if max_concurrent else None
        self.upload = TokenBucket(upload_bps) if upload_bps else None
        self.download = TokenBucket(download_bps) if download_bps else None


    def _run(self, fn: Callable[[], T]) -> T:
        if self._slots is None:
            return fn()
        with self._slots:
            return fn()

    def create(self) -> None:
        self._run(self.inner.create)

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        if self.upload is not None:
            self.upload.take(len(data))
        self._run(lambda: self.inner.save(ftype, name, data, create_only=create_only))

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._run(lambda: self.inner.load(ftype, name, offset, length))
        if self.download is not None:
            self.download.take(len(data))
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        return self._run(lambda: self.inner.stat(ftype, name))

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        yield from self._run(lambda: list(self.inner.list(ftype)))

    def remove(self, ftype: FileType, name: str) -> None:
        self._run(lambda: self.inner.remove(ftype, name))


    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        self._run(lambda: self.inner.retain(ftype, name, until))

    def remove_temp(self, min_age: float) -> int:
        return self._run(lambda: self.inner.remove_temp(min_age))


