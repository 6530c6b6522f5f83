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
* ``thaw(t, name, days, tier)`` (``supports_cold`` True): make an object that a cold storage
  class (S3 GLACIER, DEEP_ARCHIVE) keeps offline readable again for ``days``: returns "online"
  (readable now), "restoring" (a request is under way) or "requested" (this call asked for it).
  Idempotent. Reading an offline object raises ColdDataError (never a transient error).
* Data packs only: the engine saves packs that hold file data inside ``data_pack_saves()``; a
  backend with a cold storage class puts only those there (``saving_data_pack()``), so trees,
  index, snapshots, keys and locks stay readable without a thaw.
* Permanent failures raise BackendError subclasses with a message naming the object;
  ENOSPC raises NoSpaceError. A failed fsync is reported, never retried as success.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from weightvault.errors import BackendError

__all__ = ["THAW_STATES", "Backend", "FileType", "NoColdStorage", "data_pack_saves", "save_pack", "saving_data_pack"]

THAW_STATES = ("online", "restoring", "requested")
_DATA_PACK: contextvars.ContextVar[bool] = contextvars.ContextVar("wv_data_pack", default=False)


@contextlib.contextmanager
def data_pack_saves(is_data: bool = True) -> Iterator[None]:
    """Mark the saves made inside (in this thread) as saves of data packs (or not)."""
    token = _DATA_PACK.set(is_data)
    try:
        yield
    finally:
        _DATA_PACK.reset(token)


def save_pack(backend: Backend, name: str, data: bytes, *, data_blobs: bool) -> None:
    """Save pack ``name``; ``data_blobs``: it holds file data (a cold storage class may take it)."""
    with data_pack_saves(data_blobs):
        backend.save(FileType.PACK, name, data)


def saving_data_pack() -> bool:
    """True inside ``data_pack_saves()``: the object being saved is a pack of file data."""
    return _DATA_PACK.get()


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

    @property
    def supports_cold(self) -> bool:
        """True if objects here may sit in an offline storage class and ``thaw`` works."""
        ...

    def thaw(self, ftype: FileType, name: str, days: int, tier: str) -> str:
        """Make ``name`` readable for ``days`` (``tier``: Expedited, Standard or Bulk); returns one
        of ``THAW_STATES``. A backend whose ``supports_cold`` is False raises BackendError."""
        ...

    def total_space(self) -> int | None:
        """Bytes of storage usable here (used + available, as ``df`` computes Use%; blocks reserved
        for root excluded), or None if unknown (object storage)."""
        ...


class NoColdStorage:
    """The cold-storage members of a backend that has no offline storage class."""

    if TYPE_CHECKING:
        @property
        def location(self) -> str: ...

    @property
    def supports_cold(self) -> bool:
        return False

    def thaw(self, ftype: FileType, name: str, days: int, tier: str) -> str:
        raise BackendError(f"cold storage is not supported by {self.location}: nothing there is ever offline")
