"""In-memory backend for tests. Thread-safe."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime

from weightvault.backends.base import FileType, NoColdStorage
from weightvault.errors import BackendError, ObjectExistsError, ObjectNotFoundError

__all__ = ["MemoryBackend"]


class MemoryBackend(NoColdStorage):
    def __init__(self) -> None:
        self._data: dict[tuple[FileType, str], bytes] = {}
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return f"memory:{id(self):x}"

    def create(self) -> None:
        pass

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        with self._lock:
            if create_only and (ftype, name) in self._data:
                raise ObjectExistsError(f"{ftype.value}/{name} already exists")
            self._data[(ftype, name)] = bytes(data)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            try:
                data = self._data[(ftype, name)]
            except KeyError:
                raise ObjectNotFoundError(f"{ftype.value}/{name} not found") from None
        end = len(data) if length is None else offset + length
        if offset < 0 or end > len(data):
            raise ObjectNotFoundError(f"{ftype.value}/{name}: range {offset}+{length} past end {len(data)}")
        return data[offset:end]

    def stat(self, ftype: FileType, name: str) -> int:
        return len(self.load(ftype, name))

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        with self._lock:
            items = [(n, len(d)) for (t, n), d in self._data.items() if t == ftype]
        yield from items

    def remove(self, ftype: FileType, name: str) -> None:
        with self._lock:
            self._data.pop((ftype, name), None)

    def remove_temp(self, min_age: float) -> int:
        """Saves are atomic in memory: nothing temporary is ever left. Always 0."""
        return 0

    @property
    def supports_retention(self) -> bool:
        return False

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        raise BackendError(f"retention is not supported by the in-memory backend ({self.location})")

    def free_space(self) -> int | None:
        return None

    def total_space(self) -> int | None:
        return None
