"""Retries with exponential backoff and full jitter, as a wrapper around any backend.

Only ``TransientBackendError`` is retried (throttling, 5xx, timeouts, connection resets: the
backends classify); permanent errors (access denied, no such bucket, not found) pass through at
once. Attempt ``i`` (from 1) waits ``uniform(0, min(max_delay, base_delay * 2**(i-1)))`` first
("full jitter", so many clients backing off together spread out). Every retry is counted in
``stats`` and logged (without object contents or credentials).

A ``create_only`` save whose earlier attempt failed transiently may have reached the store, and
so may one the storage client retried by itself after a lost answer (botocore does, unseen
here); when a save finds the name taken, the object is read back and the save succeeds if it
holds exactly our bytes (so a lock we created is not mistaken for someone else's; an object
with other bytes is another writer's, and the save fails as it should).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from weightvault.backends.base import Backend, FileType
from weightvault.backends.wrapper import WrapperBackend
from weightvault.errors import ObjectExistsError, ObjectNotFoundError, TransientBackendError

__all__ = ["RetryPolicy", "RetryStats", "RetryingBackend"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # total tries per call, the first included
    base_delay: float = 0.25
    max_delay: float = 20.0


@dataclass
class RetryStats:
    calls: int = 0
    retries: int = 0
    gave_up: int = 0
    by_op: dict[str, int] = field(default_factory=dict)


class RetryingBackend(WrapperBackend):
    """Wraps ``inner``; same protocol. Thread-safe if ``inner`` is."""

    def __init__(
        self,
        inner: Backend,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(inner)
        self.policy = policy or RetryPolicy()
        self.stats = RetryStats()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()


    def _call(self, op: str, fn: Callable[[], T]) -> T:
        with self._lock:
            self.stats.calls += 1
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return fn()
            except TransientBackendError as exc:
                if attempt == self.policy.attempts:
                    with self._lock:
                        self.stats.gave_up += 1
                    exc.hint = exc.hint or (
                        f"the storage kept failing ({self.policy.attempts} attempts); try again later"
                    )
                    raise
                cap = min(self.policy.max_delay, self.policy.base_delay * 2 ** (attempt - 1))
                with self._lock:
                    delay = self._rng.uniform(0, cap)
                    self.stats.retries += 1
                    self.stats.by_op[op] = self.stats.by_op.get(op, 0) + 1
                log.info("retrying %s after a transient error (attempt %d): %s", op, attempt, exc.message)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def create(self) -> None:
        self._call("create", self.inner.create)

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        if not create_only:
            self._call("save", lambda: self.inner.save(ftype, name, data))
            return
        def attempt() -> None:
            try:
                self.inner.save(ftype, name, data, create_only=True)
            except ObjectExistsError:
                try:
                    landed = self.inner.load(ftype, name) == data
                except ObjectNotFoundError:
                    landed = False
                if landed:
                    return  # our own earlier attempt landed (also one the storage client retried itself)
                raise

        self._call("save", attempt)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call("load", lambda: self.inner.load(ftype, name, offset, length))

    def stat(self, ftype: FileType, name: str) -> int:
        return self._call("stat", lambda: self.inner.stat(ftype, name))

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        # a listing is retried as a whole (materialised), so a failure midway never yields twice
        yield from self._call("list", lambda: list(self.inner.list(ftype)))

    def remove(self, ftype: FileType, name: str) -> None:
        self._call("remove", lambda: self.inner.remove(ftype, name))


    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        self._call("retain", lambda: self.inner.retain(ftype, name, until))

    def remove_temp(self, min_age: float) -> int:
        return self._call("remove_temp", lambda: self.inner.remove_temp(min_age))


