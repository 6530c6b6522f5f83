"""Repository locks: ``locks/<random id>``, plaintext JSON, created with create-only saves.

A backup, restore or check takes a shared lock; ``forget`` and ``prune`` take a *maintenance* lock,
which coexists with shared locks but excludes other maintenance locks (prune's two-phase deletion
keeps running backups safe, docs/FORMAT.md); ``repair index`` takes an exclusive lock, which
excludes every other lock. The maintenance field is new in format v4; an older weightvault reads
such a lock as shared, which is safe: it never runs prune. A lock is *stale* when its process is
gone (same host, pid not alive) or it has not been refreshed for ``STALE_AFTER`` seconds. Stale
locks still block (a crashed prune may have left work half done) but are reported as stale with
the command that removes them: ``weightvault unlock``.

Waiting (``lock_wait``, the CLI's ``--retry-lock DURATION``): an operation that finds its lock
taken retries until the deadline, and a maintenance or exclusive one queues meanwhile: it saves a
*ticket* (a lock document with ``"waiting": true``, refreshed like a lock) and takes its lock only
when no held lock conflicts *and* no live ticket older than its own would conflict with it, so
waiting maintenance operations are served first come, first served (a `check` loop cannot starve
a `forget --prune`, nor the other way round). Shared locks (backups, restores) never wait for
tickets. A ticket is not a lock: it excludes nothing, and an older weightvault, which reads it as
a lock of its kind, is only more careful.
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
from contextvars import ContextVar
from dataclasses import dataclass

from weightvault.backends.base import Backend, FileType
from weightvault.errors import ObjectExistsError, ObjectNotFoundError, RepositoryLockedError

__all__ = ["REFRESH_EVERY", "STALE_AFTER", "LockInfo", "hold_lock", "list_locks", "lock_wait", "remove_stale_locks",
           "set_lock_wait"]

log = logging.getLogger(__name__)

STALE_AFTER = 30 * 60
REFRESH_EVERY = 5 * 60
_WAIT: ContextVar[float] = ContextVar("weightvault_lock_wait", default=0.0)
_POLL_MIN, _POLL_MAX = 0.2, 5.0


@contextlib.contextmanager
def lock_wait(seconds: float) -> Iterator[None]:
    """Within the block, a lock that is taken is waited for up to ``seconds`` (queued fairly)."""
    token = _WAIT.set(max(0.0, seconds))
    try:
        yield
    finally:
        _WAIT.reset(token)


def set_lock_wait(seconds: float) -> None:
    """The same for the rest of this context (the CLI's ``--retry-lock``)."""
    _WAIT.set(max(0.0, seconds))


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
    waiting: bool = False  # a queue ticket, not a lock

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
        what = f"queued {kind} operation (waiting {age}s)" if self.waiting else f"{kind} lock"
        return f"{what} {self.name[:12]} by {self.user}@{self.host} pid {self.pid}" + (
            "" if self.waiting else f", {age}s old")


def _doc(exclusive: bool, created: float, maintenance: bool = False, waiting: bool = False) -> bytes:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return json.dumps(
        {
            "exclusive": exclusive,
            **({"maintenance": True} if maintenance else {}),
            **({"waiting": True} if waiting else {}),
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
                         float(d["created"]), float(d["refreshed"]), bool(d.get("maintenance", False)),
                         bool(d.get("waiting", False)))
            )
        except ObjectNotFoundError:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError):
            # unreadable lock: treat as an exclusive stale lock so it is reported, not ignored
            out.append(LockInfo(name, True, "?", 0, "?", 0.0, 0.0))
    return out


def _conflicts(mine: str, exclusive: bool, maintenance: bool, locks: list[LockInfo]) -> list[LockInfo]:
    """Held locks (not tickets) that exclude a lock of this kind."""
    return [
        lk for lk in locks
        if lk.name != mine and not lk.waiting and (exclusive or lk.exclusive or (maintenance and lk.maintenance))
    ]


def _ahead(ticket: LockInfo | None, exclusive: bool, maintenance: bool, locks: list[LockInfo]) -> list[LockInfo]:
    """Live tickets queued before ``ticket`` (all of them without one) that this lock would
    exclude; only maintenance and exclusive locks queue."""
    if not (exclusive or maintenance):
        return []
    return [
        lk for lk in locks
        if lk.waiting and (ticket is None or (lk.created, lk.name) < (ticket.created, ticket.name))
        and (exclusive or lk.exclusive or lk.maintenance) and not lk.stale()
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
    name = ""
    try:
        # inside the try: an interrupt (Ctrl-C) after the lock file is linked but before save()
        # returns must still remove it, or it would outlive this process and block as a stale lock
        name, created = _acquire(backend, exclusive, maintenance, _WAIT.get())
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


def _save_lock(backend: Backend, exclusive: bool, maintenance: bool, waiting: bool, created: float) -> str:
    """Save a new lock document; an interrupt half-way (Ctrl-C once the file is linked, before
    ``save`` returns) removes it again, or it would block others as a stale lock."""
    name = secrets.token_hex(16)
    try:
        backend.save(FileType.LOCK, name, _doc(exclusive, created, maintenance, waiting), create_only=True)
    except ObjectExistsError:
        raise  # a random 128-bit name taken: not ours to remove
    except BaseException:
        with contextlib.suppress(Exception):
            backend.remove(FileType.LOCK, name)
        raise
    return name


def _take(backend: Backend, exclusive: bool, maintenance: bool) -> tuple[str, float, list[LockInfo]]:
    """Save the lock, then look again: ``(name, created, [])``, or ``("", 0, lost_to)`` after
    removing it again when a racing lock conflicts."""
    created = time.time()
    name = _save_lock(backend, exclusive, maintenance, False, created)
    try:
        lost = _conflicts(name, exclusive, maintenance, list_locks(backend))
    except BaseException:
        backend.remove(FileType.LOCK, name)
        raise
    if lost:
        backend.remove(FileType.LOCK, name)
        return "", 0.0, lost
    return name, created, []


def _acquire(backend: Backend, exclusive: bool, maintenance: bool, wait: float) -> tuple[str, float]:
    """Take the lock (module docstring), waiting up to ``wait`` seconds in the queue; returns its
    name and creation time."""
    deadline, delay = time.monotonic() + wait, _POLL_MIN
    ticket: LockInfo | None = None
    refreshed = time.monotonic()
    try:
        while True:
            locks = list_locks(backend)
            blocking = _conflicts("", exclusive, maintenance, locks) + _ahead(ticket, exclusive, maintenance, locks)
            if not blocking:
                name, created, blocking = _take(backend, exclusive, maintenance)
                if name:
                    return name, created
            if time.monotonic() >= deadline:
                _raise_locked(backend, blocking)
            if ticket is None and (exclusive or maintenance):
                created = time.time()
                tname = _save_lock(backend, exclusive, maintenance, True, created)
                ticket = LockInfo(tname, exclusive, socket.gethostname(), os.getpid(), "", created, created,
                                  maintenance, True)
            elif ticket is not None and time.monotonic() - refreshed > REFRESH_EVERY:
                backend.save(FileType.LOCK, ticket.name, _doc(exclusive, ticket.created, maintenance, True))
                refreshed = time.monotonic()
            time.sleep(min(delay * (0.5 + secrets.randbelow(1000) / 1000), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, _POLL_MAX)
    finally:
        if ticket is not None:
            backend.remove(FileType.LOCK, ticket.name)


def remove_stale_locks(backend: Backend, remove_all: bool = False) -> list[LockInfo]:
    """Remove stale locks (or every lock with ``remove_all``); returns what was removed."""
    removed = []
    for lk in list_locks(backend):
        if remove_all or lk.stale():
            backend.remove(FileType.LOCK, lk.name)
            removed.append(lk)
    return removed
