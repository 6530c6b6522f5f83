"""Fault injection: a backend wrapper that fails, drops or corrupts chosen calls of a real backend.

    fb = FaultyBackend(LocalBackend(path))
    fb.fail("save", nth=3, ftype=FileType.PACK, error=enospc)   # third pack save raises NoSpaceError
    fb.drop_write(nth=1, ftype=FileType.PACK)                     # first pack save "succeeds", stores nothing
    fb.corrupt_read(nth=1, ftype=FileType.PACK, position=10)     # first pack load returns a flipped byte
    fb.delay("load", seconds=0.5, nth=2)                          # second load waits half a second first
    fb.fail_every(20, error=transient_error)                      # every 20th call of any kind fails transiently
    fb.calls["save"], fb.calls_of("save", FileType.PACK)          # call counters

Counting is per (operation, file type filter): ``nth`` is 1-based and counts only the calls that
match the fault's filter. A fault fires ``times`` times in a row (default once), then is spent.
Everything else is delegated unchanged to the wrapped backend. Thread-safe.
"""

from __future__ import annotations

import builtins
import errno
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from weightvault.backends.base import Backend, FileType
from weightvault.backends.local import convert_os_error
from weightvault.backends.wrapper import WrapperBackend
from weightvault.errors import BackendError, TransientBackendError

__all__ = ["FaultyBackend", "Op", "backend_error", "enospc", "os_error", "transient_error"]

Op = Literal["save", "load", "stat", "list", "remove"]
ErrorFactory = Callable[[FileType, str], BaseException]
_OPS: tuple[Op, ...] = ("save", "load", "stat", "list", "remove")


def os_error(code: int) -> ErrorFactory:
    """An error factory raising what LocalBackend raises for ``OSError(code)`` on that object."""

    def make(ftype: FileType, name: str) -> BaseException:
        exc = OSError(code, os.strerror(code))
        converted = convert_os_error(exc, f"{ftype.value}/{name}")
        converted.__cause__ = exc
        return converted

    return make


enospc: ErrorFactory = os_error(errno.ENOSPC)


def backend_error(ftype: FileType, name: str) -> BaseException:
    """A permanent storage failure naming the object (e.g. EIO on a dying disk)."""
    return BackendError(f"I/O error on {ftype.value}/{name}: injected fault")


def transient_error(ftype: FileType, name: str) -> BaseException:
    """A failure worth retrying (what S3 throttling or a connection reset turns into)."""
    return TransientBackendError(f"{ftype.value}/{name}: injected transient fault (503 SlowDown)")


@dataclass
class _Fault:
    op: Op
    action: Literal["raise", "drop", "corrupt", "delay"]
    nth: int
    times: int
    ftype: FileType | None
    error: ErrorFactory | None = None
    position: int = 0
    seconds: float = 0.0
    seen: int = 0
    fired: int = 0

    def matches(self, op: Op, ftype: FileType) -> bool:
        """Count a matching call; True when this call is one the fault fires on."""
        if op != self.op or (self.ftype is not None and ftype is not self.ftype):
            return False
        self.seen += 1
        if self.seen >= self.nth and self.fired < self.times:
            self.fired += 1
            return True
        return False


class FaultyBackend(WrapperBackend):
    """Wraps ``inner``; see the module docstring. ``fired`` lists (op, file type, name) of fired faults."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()
        self.fired: builtins.list[tuple[str, FileType, str]] = []
        self._typed: Counter[tuple[str, FileType]] = Counter()
        self._faults: builtins.list[_Fault] = []
        self._every: tuple[int, ErrorFactory] | None = None
        self._all_calls = 0
        self._lock = threading.Lock()

    # -- configuring faults ----------------------------------------------------------------------
    def fail(
        self, op: Op, *, error: ErrorFactory = backend_error, nth: int = 1, times: int = 1,
        ftype: FileType | None = None,
    ) -> None:
        """Raise ``error(ftype, name)`` on the ``nth`` matching call of ``op`` (and ``times - 1`` after)."""
        self._add(_Fault(op, "raise", nth, times, ftype, error=error))

    def drop_write(self, *, nth: int = 1, times: int = 1, ftype: FileType | None = None) -> None:
        """Report success for the ``nth`` matching save without storing anything."""
        self._add(_Fault("save", "drop", nth, times, ftype))

    def corrupt_read(self, *, nth: int = 1, times: int = 1, ftype: FileType | None = None, position: int = 0) -> None:
        """Flip the bits of byte ``position`` (modulo the length read) in the ``nth`` matching load."""
        self._add(_Fault("load", "corrupt", nth, times, ftype, position=position))

    def delay(self, op: Op, *, seconds: float, nth: int = 1, times: int = 1, ftype: FileType | None = None) -> None:
        """Sleep ``seconds`` before the ``nth`` matching call of ``op`` (then run it normally)."""
        self._add(_Fault(op, "delay", nth, times, ftype, seconds=seconds))

    def fail_every(self, k: int, *, error: ErrorFactory = transient_error) -> None:
        """Raise ``error`` on every ``k``-th call of any operation, from now until ``clear()``."""
        if k < 1:
            raise ValueError("fail_every needs k >= 1")
        with self._lock:
            self._every = (k, error)
            self._all_calls = 0

    def clear(self) -> None:
        """Forget every fault that has not fired yet (and ``fail_every``); counters are kept."""
        with self._lock:
            self._faults.clear()
            self._every = None

    def calls_of(self, op: Op, ftype: FileType) -> int:
        return self._typed[(op, ftype)]

    def _add(self, fault: _Fault) -> None:
        if fault.op not in _OPS or fault.nth < 1 or fault.times < 1:
            raise ValueError(f"invalid fault {fault}")
        with self._lock:
            self._faults.append(fault)

    def _hit(self, op: Op, ftype: FileType, name: str) -> _Fault | None:
        with self._lock:
            self.calls[op] += 1
            self._typed[(op, ftype)] += 1
            hit = None
            for f in self._faults:
                if f.matches(op, ftype) and hit is None:
                    hit = f
            self._faults = [f for f in self._faults if f.fired < f.times]
            if hit is not None:
                self.fired.append((op, ftype, name))
            periodic = None
            if self._every is not None:
                self._all_calls += 1
                if self._all_calls % self._every[0] == 0:
                    periodic = self._every[1]
                    self.fired.append((op, ftype, name))
        if periodic is not None:
            raise periodic(ftype, name)
        if hit is not None and hit.action == "raise":
            assert hit.error is not None
            raise hit.error(ftype, name)
        if hit is not None and hit.action == "delay":
            time.sleep(hit.seconds)
        return hit

    # -- the Backend protocol --------------------------------------------------------------------


    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        fault = self._hit("save", ftype, name)
        if fault is None or fault.action != "drop":
            self.inner.save(ftype, name, data, create_only=create_only)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        fault = self._hit("load", ftype, name)
        data = self.inner.load(ftype, name, offset, length)
        if fault is not None and fault.action == "corrupt" and data:
            buf = bytearray(data)
            buf[fault.position % len(buf)] ^= 0xFF
            data = bytes(buf)
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        self._hit("stat", ftype, name)
        return self.inner.stat(ftype, name)

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        self._hit("list", ftype, "")
        return self.inner.list(ftype)

    def remove(self, ftype: FileType, name: str) -> None:
        fault = self._hit("remove", ftype, name)
        if fault is None or fault.action != "drop":
            self.inner.remove(ftype, name)





