"""A backend wrapper that counts calls and bytes per file type, for tests that assert I/O costs.

    cb = CountingBackend(LocalBackend(path))
    ...
    assert cb.loads[FileType.PACK] == 3          # load calls on packs
    assert cb.load_bytes[FileType.PACK] < 1 << 20  # bytes those loads returned
    assert cb.lists[FileType.SNAPSHOT] == 1      # list calls on snapshots
    cb.saves[FileType.INDEX], cb.save_bytes[FileType.INDEX]
    cb.reset()                                   # all counters back to zero

Counters are ``collections.Counter`` keyed by ``FileType`` (a type never touched reads 0). A call
is counted when it is made, whether or not it succeeds; ``load_bytes`` counts only what a load
returned, ``save_bytes`` what a save was given. Everything is delegated unchanged. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

from weightvault.backends.base import Backend, FileType
from weightvault.backends.wrapper import WrapperBackend

__all__ = ["CountingBackend"]


class CountingBackend(WrapperBackend):
    """Wraps ``inner``; same protocol. See the module docstring."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.loads: Counter[FileType] = Counter()
        self.load_bytes: Counter[FileType] = Counter()
        self.lists: Counter[FileType] = Counter()
        self.saves: Counter[FileType] = Counter()
        self.save_bytes: Counter[FileType] = Counter()
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            for c in (self.loads, self.load_bytes, self.lists, self.saves, self.save_bytes):
                c.clear()

    # -- the Backend protocol --------------------------------------------------------------------


    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        with self._lock:
            self.saves[ftype] += 1
            self.save_bytes[ftype] += len(data)
        self.inner.save(ftype, name, data, create_only=create_only)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            self.loads[ftype] += 1
        data = self.inner.load(ftype, name, offset, length)
        with self._lock:
            self.load_bytes[ftype] += len(data)
        return data


    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        with self._lock:
            self.lists[ftype] += 1
        return self.inner.list(ftype)






