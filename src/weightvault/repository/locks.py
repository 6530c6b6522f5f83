"""Repository locks: ``locks/<random id>``, plaintext JSON, created with create-only saves.

A backup, restore or check takes a shared lock; ``forget`` and ``prune`` take a *maintenance* lock,
which coexists with shared locks but excludes other maintenance locks (prune's two-phase deletion
keeps running backups safe, docs/FORMAT.md); ``repair index`` takes an exclusive lock, which
excludes every other lock. The maintenance field is new in format v4; an older weightvault reads
such a lock as shared, which is safe: it never runs prune. A lock is *stale* when its process is
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
    maintenance: bool = False

    def stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - self.refreshed > STALE_AFTER or self.process_gone()

    def process_gone(self) -> bool:
        """True only when the lock's process is certainly gone: same host, no such pid."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "maintenance" if self.maintenance else "shared"
        age = int(time.time() - self.created)
        return f"{kind} lock {self.name[:12]} by {self.user}@{self.host} pid {self.pid}, {age}s old"


def _doc(exclusive: bool, created: float, maintenance: bool = False) -> bytes:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return json.dumps(
        {
            "exclusive": exclusive,
            **({"maintenance": True} if maintenance else {}),
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
                         float(d["created"]), float(d["refreshed"]), bool(d.get("maintenance", False)))
            )
        except ObjectNotFoundError:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError):
            # unreadable lock: treat as an exclusive stale lock so it is reported, not ignored
            out.append(LockInfo(name, True, "?", 0, "?", 0.0, 0.0))
    return out


def _conflicts(mine: str, exclusive: bool, maintenance: bool, locks: list[LockInfo]) -> list[LockInfo]:
    return [
        lk for lk in locks
        if lk.name != mine and (exclusive or lk.exclusive or (maintenance and lk.maintenance))
    ]


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
def hold_lock(backend: Backend, exclusive: bool, maintenance: bool = False) -> Iterator[str]:
    """Acquire a lock for the duration of the block, refreshing it in the background; yields the
    lock's name. The lock file exists (durably) before the block starts."""
    existing = list_locks(backend)
    conflicts = _conflicts("", exclusive, maintenance, existing)
    if conflicts:
        _raise_locked(backend, conflicts)
    name = secrets.token_hex(16)
    created = time.time()
    try:
        # inside the try: an interrupt (Ctrl-C) after the lock file is linked but before save()
        # returns must still remove it, or it would outlive this process and block as a stale lock
        try:
            backend.save(FileType.LOCK, name, _doc(exclusive, created, maintenance), create_only=True)
        except ObjectExistsError:
            name = ""  # a random 128-bit name taken: not ours to remove
            raise
        conflicts = _conflicts(name, exclusive, maintenance, list_locks(backend))  # lost a race?
        if conflicts:
            _raise_locked(backend, conflicts)
        stop = threading.Event()

        def refresh() -> None:
            # Overwriting also re-creates the lock if someone removed it with `unlock` meanwhile.
            while not stop.wait(REFRESH_EVERY):
                try:
                    backend.save(FileType.LOCK, name, _doc(exclusive, created, maintenance))
                except Exception as exc:  # keep running; the failure is logged
                    log.warning("could not refresh repository lock %s: %s (it will look stale after %d s)",
                                name[:12], exc, STALE_AFTER)

        t = threading.Thread(target=refresh, name="weightvault-lock-refresh", daemon=True)
        t.start()
        try:
            yield name
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
