"""The Backend protocol: a flat store of named, immutable objects grouped by file type.

Contract (every backend passes ``weightvault.testing.backend_conformance``):

* ``save(t, name, data)`` stores ``data`` atomically and durably: after it returns, the object is
  complete and survives a crash; before, readers see either nothing or (for overwrite) the old
  object, never a prefix. Saving the same name twice with the same bytes is idempotent. With
  ``create_only=True`` it raises ObjectExistsError if the name exists (used for locks).
* ``load(t, name, offset, length)`` returns exactly the requested range or raises
  ObjectNotFoundError / BackendError; ``length=None`` reads to the end.
* ``list(t)`` yields (name, size) of complete objects only (never temp files), in no given order.
* ``remove(t, name)`` is idempotent: removing a missing object is not an error.
* Capabilities are properties (``supports_retention``); every backend has every method, and one
  lacking the capability refuses the call with a BackendError saying so. Callers check the
  property, never ``getattr``. Wrappers (retry, limits, faults, counting) forward every member
  explicitly, so a capability is never lost under a wrapper.
* ``retain(t, name, until)`` (``supports_retention`` True): the store keeps the object from being
  deleted or overwritten until ``until`` (S3 Object Lock); it only ever extends a retention.
* ``remove_temp(min_age)`` removes what interrupted saves left behind (temp files, incomplete
  multipart uploads) once older than ``min_age`` seconds, never anything ``list`` shows.
* Permanent failures raise BackendError subclasses with a message naming the object;
  ENOSPC raises NoSpaceError. A failed fsync is reported, never retried as success.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from datetime import datetime
from typing import Protocol

__all__ = ["Backend", "FileType"]


class FileType(enum.Enum):
    CONFIG = "config"
    KEY = "keys"
    PACK = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"
    PLAN = "plans"  # format v4: prune's deletion plans
    LEDGER = "ledger"  # format v4: the hash-chained record of operations


class Backend(Protocol):
    @property
    def location(self) -> str:
        """Human-readable location for messages (never contains credentials)."""
        ...

    def create(self) -> None:
        """Prepare an empty store (directories, bucket prefix). Fails if it holds a config."""
        ...

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None: ...

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, ftype: FileType, name: str) -> int:
        """Size in bytes; ObjectNotFoundError if missing."""
        ...

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]: ...

    def remove(self, ftype: FileType, name: str) -> None: ...

    @property
    def supports_retention(self) -> bool:
        """True if ``retain`` works here (S3 with an Object Lock mode); constant for a backend."""
        ...

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        """Keep the object from deletion and overwriting until ``until`` (timezone-aware). Only
        ever extends a retention: an object already retained longer is left as it is. Idempotent.
        ObjectNotFoundError if missing. A backend whose ``supports_retention`` is False raises
        BackendError ("retention is not supported by ...") and changes nothing."""
        ...

    def remove_temp(self, min_age: float) -> int:
        """Remove temporary objects left by interrupted saves (a crash, a kill) that are older than
        ``min_age`` seconds, and return how many were removed. ``min_age`` exists because a save
        still running in another process looks exactly like an interrupted one: the caller picks
        an age no running save reaches. Never touches complete objects (anything ``list`` yields).
        Idempotent; a temp object vanishing meanwhile is not an error. 0 where a backend leaves
        no temporary objects."""
        ...

    def free_space(self) -> int | None:
        """Bytes free at the destination, or None if unknown."""
        ...

    def total_space(self) -> int | None:
        """Bytes of storage usable here (used + available, as ``df`` computes Use%; blocks reserved
        for root excluded), or None if unknown (object storage)."""
        ...
