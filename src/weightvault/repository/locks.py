"""Repository locks: ``locks/<random id>``, plaintext JSON, created with create-only saves.

A backup (and check) takes a shared lock; destructive operations take an exclusive one. Shared
locks coexist; an exclusive lock excludes every other lock. A lock is *stale* when its process is
gone (same host, pid not alive) or it has not been refreshed for ``STALE_AFTER`` seconds. Stale
locks still block (a crashed prune may have left work half done) but are reported as stale with
the command that removes them: ``weightvault unlock``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from weightvault.backends.base import Backend, FileType
from weightvault.errors import ObjectExistsError, ObjectNotFoundError, RepositoryLockedError

__all__ = ["REFRESH_EVERY", "STALE_AFTER", "LockInfo", "hold_lock", "list_locks", "remove_stale_locks"]

log = logging.getLogger(__name__)

STALE_AFTER = 30 * 60
REFRESH_EVERY = 5 * 60


@dataclass(frozen=True, slots=True)
class LockInfo:
    name: str
    exclusive: bool
    host: str
    pid: int
    user: str
    created: float
    refreshed: float

    def stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self.refreshed > STALE_AFTER:
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        age = int(time.time() - self.created)
        return f"{kind} lock {self.name[:12]} by {self.user}@{self.host} pid {self.pid}, {age}s old"


def _doc(exclusive: bool, created: float) -> bytes:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return json.dumps(
        {
            "exclusive": exclusive,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": user,
            "created": created,
            "refreshed": time.time(),
        }
    ).encode()


def list_locks(backend: Backend) -> list[LockInfo]:
    out = []
    for name, _ in backend.list(FileType.LOCK):
        try:
            d = json.loads(backend.load(FileType.LOCK, name))
            out.append(
                LockInfo(name, bool(d["exclusive"]), str(d["host"]), int(d["pid"]), str(d["user"]),
                         float(d["created"]), float(d["refreshed"]))
            )
        except ObjectNotFoundError:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError):
            # unreadable lock: treat as an exclusive stale lock so it is reported, not ignored
            out.append(LockInfo(name, True, "?", 0, "?", 0.0, 0.0))
    return out


def _conflicts(mine: str, exclusive: bool, locks: list[LockInfo]) -> list[LockInfo]:
    return [lk for lk in locks if lk.name != mine and (exclusive or lk.exclusive)]


def _raise_locked(backend: Backend, conflicts: list[LockInfo]) -> None:
    stale = [c for c in conflicts if c.stale()]
    lines = "; ".join(c.describe() + (" (STALE)" if c.stale() else "") for c in conflicts)
    hint = (
        "the stale lock(s) belong to processes that are gone or stopped refreshing; remove them with"
        f" `weightvault -r {backend.location} unlock`"
        if stale
        else "wait for the other operation to finish, then retry"
    )
    raise RepositoryLockedError(f"repository {backend.location} is locked: {lines}", hint=hint)


@contextlib.contextmanager
def hold_lock(backend: Backend, exclusive: bool) -> Iterator[None]:
    """Acquire a lock for the duration of the block, refreshing it in the background."""
    existing = list_locks(backend)
    conflicts = _conflicts("", exclusive, existing)
    if conflicts:
        _raise_locked(backend, conflicts)
    name = secrets.token_hex(16)
    created = time.time()
    try:
        # inside the try: an interrupt (Ctrl-C) after the lock file is linked but before save()
        # returns must still remove it, or it would outlive this process and block as a stale lock
        try:
            backend.save(FileType.LOCK, name, _doc(exclusive, created), create_only=True)
        except ObjectExistsError:
            name = ""  # a random 128-bit name taken: not ours to remove
            raise
        conflicts = _conflicts(name, exclusive, list_locks(backend))  # lost a race?
        if conflicts:
            _raise_locked(backend, conflicts)
        stop = threading.Event()

        def refresh() -> None:
            # Overwriting also re-creates the lock if someone removed it with `unlock` meanwhile.
            while not stop.wait(REFRESH_EVERY):
                try:
                    backend.save(FileType.LOCK, name, _doc(exclusive, created))
                except Exception as exc:  # keep running; the failure is logged
                    log.warning("could not refresh repository lock %s: %s (it will look stale after %d s)",
                                name[:12], exc, STALE_AFTER)

        t = threading.Thread(target=refresh, name="weightvault-lock-refresh", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
    finally:
        if name:
            backend.remove(FileType.LOCK, name)


def remove_stale_locks(backend: Backend, remove_all: bool = False) -> list[LockInfo]:
    """Remove stale locks (or every lock with ``remove_all``); returns what was removed."""
    removed = []
    for lk in list_locks(backend):
        if remove_all or lk.stale():
            backend.remove(FileType.LOCK, lk.name)
            removed.append(lk)
    return removed
