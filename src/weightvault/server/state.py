"""What the repository server's handlers share: configuration, users, the audit log, metrics, open
backends, quota accounting, lock owners and the snapshot rate limit.

A request the server refuses is raised as ``Refused`` (status, reason, the rule that refused it)
and audited like any other; ``Call`` collects one request's audit fields as it is handled.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from weightvault.backends.base import Backend, FileType
from weightvault.backends.factory import open_backend
from weightvault.server.audit import AuditLog
from weightvault.server.config import ServerConfig
from weightvault.server.guard import Guard
from weightvault.server.metrics import ServerMetrics
from weightvault.server.users import User, UserStore

__all__ = ["Call", "Refused", "ServerState", "forget_owner", "record_owner", "reserved"]

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request answered with ``status`` and ``reason`` (and audited as refused, or as an error)."""

    def __init__(self, status: int, reason: str, *, rule: str = "", headers: dict[str, str] | None = None,
                 result: str = "refused") -> None:
        super().__init__(reason)
        self.status, self.reason, self.rule, self.headers, self.result = status, reason, rule, headers or {}, result


@dataclass
class Call:
    """One request's audit fields, filled in as it is handled."""

    addr: str
    user: str | None = None
    repo: str | None = None
    op: str = "-"
    type: str | None = None
    name: str | None = None
    nbytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ServerState:
    """What the handlers share: configuration, users, audit log, metrics, open backends, quotas."""

    def __init__(self, config: ServerConfig, *, clock: Any = None) -> None:
        self.config = config
        self.users = UserStore(config.state_dir / "users.json")
        self.guard = Guard(self.users, config.login_failures)
        self.audit = AuditLog(config.state_dir / "audit.jsonl")
        self.metrics = ServerMetrics()
        self.now = clock or (lambda: datetime.now(UTC))
        self._backends: dict[str, Backend] = {}
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()
        self._snapshots: dict[tuple[str, str], collections.deque[float]] = {}
        self._object_locks = [threading.Lock() for _ in range(64)]
        self.audit_down: str | None = None  # why the audit log cannot be written, while it cannot
        self.refused_while_down = 0

    def backend(self, repo: str) -> Backend:
        """The backend of ``repo`` (no I/O); 404 for a name the server does not serve."""
        cfg = self.config.repository(repo)
        if cfg is None:
            raise Refused(404, f"no repository named {repo!r} on this server")
        with self._lock:
            b = self._backends.get(repo)
            if b is None:
                b = self._backends[repo] = open_backend(cfg.location)
            return b

    def created(self, repo: str) -> bool:
        """Whether ``repo`` has been created (``init``): its directory exists; a repository kept
        elsewhere (``[repositories]`` with a URL) always counts as created."""
        cfg = self.config.repository(repo)
        return cfg is not None and ("://" in cfg.location or os.path.isdir(cfg.location))

    def require_created(self, repo: str) -> None:
        if not self.created(repo):
            raise Refused(404, f"repository {repo!r} does not exist on this server yet (an admin creates it with"
                          " 'weightvault -r URL init')")

    def owner_path(self, repo: str, lock: str) -> str:
        return os.path.join(self.config.state_dir, "lock-owners", repo, lock)

    def lock_owner(self, repo: str, lock: str) -> str | None:
        try:
            with open(self.owner_path(repo, lock)) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def used(self, repo: str, backend: Backend) -> int:
        """Stored bytes of ``repo`` (listed once, then kept up to date by this server's puts and
        deletes)."""
        with self._lock:
            if repo in self._used:
                return self._used[repo]
        total = sum(size for t in FileType if t is not FileType.CONFIG for _, size in backend.list(t))
        with self._lock:
            return self._used.setdefault(repo, total)

    def add_used(self, repo: str, delta: int) -> None:
        with self._lock:
            if repo in self._used:
                self._used[repo] += delta

    def object_lock(self, repo: str, ftype: FileType, name: str) -> threading.Lock:
        """A lock shared by every request on this object (striped: unrelated objects may share one)."""
        return self._object_locks[hash((repo, ftype, name)) % len(self._object_locks)]

    def role(self, user: User, repo: str) -> str | None:
        """``user``'s role on ``repo``: a grant naming the repository, else ``private_repos``'s role
        on the repository named like the user, else the ``*`` grant, else None."""
        named = user.roles.get(repo)
        if named is not None:
            return named
        if self.config.private_role is not None and repo == user.name:
            return self.config.private_role
        return user.roles.get("*")

    def count_snapshot(self, user: str, repo: str) -> None:
        """Count one new snapshot by ``user`` in ``repo`` against ``snapshot_rate``; Refused (403)
        when the last hour already holds that many (a flood meant to push good snapshots out of a
        count-based retention)."""
        limit = self.config.snapshot_rate
        if limit is None:
            return
        now = self.now().timestamp()
        with self._lock:
            times = self._snapshots.setdefault((user, repo), collections.deque())
            while times and times[0] <= now - 3600:
                times.popleft()
            if len(times) >= limit:
                raise Refused(403, f"user {user} has created {len(times)} snapshots in repository {repo} within the"
                              f" last hour (snapshot_rate = {limit}/h for role append); the data it sent is kept"
                              " and the next backup reuses it; an admin can raise snapshot_rate",
                              rule="snapshot rate")
            times.append(now)

    def record(self, call: Call, status: int, result: str, reason: str, seconds: float) -> bool:
        """Audit and count one request; False (and the record logged) if the audit log could not
        be written: the server then serves nothing until ``resume_audit`` can."""
        rec = {"user": call.user, "addr": call.addr, "repo": call.repo, "op": call.op, "type": call.type,
               "name": call.name, "bytes": call.nbytes, "status": status, "result": result, "reason": reason or None,
               **call.extra}
        try:
            self.audit.append(**rec)
        except OSError as exc:
            self.audit_down = str(exc)
            log.error("the audit log cannot be written (%s); this request's record: %s", exc, rec)
            return False
        known = bool(call.repo) and self.created(call.repo or "")
        self.metrics.observe(call, status, result, seconds, known_repo=known)
        return True

    def resume_audit(self) -> bool:
        """While the audit log cannot be written: try to append a record saying it was down (and
        how many requests were refused meanwhile). True once it could; nothing else is served until."""
        if self.audit_down is None:
            return True
        try:
            self.audit.append(user=None, addr="-", repo=None, op="audit-resumed", type=None, name=None, bytes=0,
                              status=0, result="ok", reason=f"the audit log could not be written ({self.audit_down});"
                              f" {self.refused_while_down} request(s) were refused meanwhile")
        except OSError:
            self.refused_while_down += 1
            return False
        self.audit_down, self.refused_while_down = None, 0
        return True


@contextlib.contextmanager
def reserved(st: ServerState, repo: str, b: Backend, adding: int) -> Iterator[None]:
    """Count ``adding`` bytes against the repository's quota (507 if it would go over) while the
    body runs; given back if it fails."""
    cfg = st.config.repository(repo)
    quota = cfg.quota if cfg is not None else None
    used = st.used(repo, b) if quota is not None else 0
    with st._lock:
        if quota is not None and adding > 0 and st._used.get(repo, used) + adding > quota:
            raise Refused(507, f"repository {repo} would go over its quota of {quota} bytes"
                          f" ({st._used.get(repo, used)} stored, {adding} more sent)", rule="quota")
        if repo in st._used:
            st._used[repo] += adding
    try:
        yield
    except BaseException:
        st.add_used(repo, -adding)
        raise


def record_owner(st: ServerState, repo: str, lock: str, user: str) -> bool:
    """Remember who created a lock; never replaces an owner already recorded (a lock created by
    another client meanwhile stays theirs). True if this call recorded it."""
    path = st.owner_path(repo, lock)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(user)
    return True


def forget_owner(st: ServerState, repo: str, lock: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(st.owner_path(repo, lock))

