"""The dashboard inside ``weightvault serve``: the server's users log in, unlock the repositories
they have a role on with the repository's password (kept in their session's memory only), and
every storage call the dashboard then makes goes through ``UserBackend``: decided by the same role
rules and maintenance windows as a request over HTTP (``objects``), audited in the same log
(address ``dashboard:<browser address>``) and counted in the same metrics. A ``read`` user's
dashboard can therefore read and nothing else, whatever the page asks; an ``append`` user's
cannot delete; a prune runs only inside a window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

from weightvault import api
from weightvault.backends.base import Backend, FileType, NoColdStorage
from weightvault.errors import (
    AccessDeniedError,
    BackendError,
    NoSpaceError,
    ObjectExistsError,
    ObjectNotFoundError,
    TransientBackendError,
    UsageError,
    WeightvaultError,
)
from weightvault.server.objects import authorise, delete, may_upload, object_type, put
from weightvault.server.rules import ROLES, Op
from weightvault.server.state import Call, Refused, ServerState
from weightvault.server.users import User

__all__ = ["DashboardHooks", "UserBackend"]

T = TypeVar("T")


def _error(r: Refused) -> WeightvaultError:
    if r.status in (401, 403):
        return AccessDeniedError(f"refused by the repository server: {r.reason}", hint="ask an admin for the role,"
                                 " or wait for the maintenance window" if r.rule == "maintenance window" else None)
    if r.status == 404:
        return ObjectNotFoundError(r.reason)
    if r.status == 412:
        return ObjectExistsError(r.reason)
    if r.status == 507:
        return NoSpaceError(r.reason)
    if r.status == 503:
        return TransientBackendError(r.reason)
    return BackendError(r.reason)


class UserBackend(NoColdStorage):
    """Repository ``repo`` of the server as user ``user`` may use it (see the module doc)."""

    def __init__(self, st: ServerState, repo: str, user: str, addr: str) -> None:
        self.st, self.repo, self.user_name, self.addr = st, repo, user, f"dashboard:{addr}"
        self._inner = st.backend(repo)

    @property
    def location(self) -> str:
        return f"{self.repo} (on this server, as {self.user_name})"

    def _user(self) -> User:
        user = self.st.users.get(self.user_name)  # a removed user's session stops working at once
        if user is None:
            raise AccessDeniedError(f"user {self.user_name} no longer exists on this server")
        return user

    def _run(self, op: str, ftype: FileType | None, name: str | None, work: Callable[[Call, User], T]) -> T:
        if self.st.audit_down is not None and not self.st.resume_audit():
            raise TransientBackendError("the server's audit log cannot be written; nothing is served until it can")
        call = Call(addr=self.addr, user=self.user_name, repo=self.repo, op=op)
        t0 = time.perf_counter()
        status, result, reason = 200, "ok", ""
        try:
            if ftype is not None:
                object_type(call, ftype.value, name or ("config" if ftype is FileType.CONFIG else "0" * 16))
                if name is None:
                    call.name = None
            out = work(call, self._user())
            return out
        except Refused as r:
            status, result, reason = r.status, r.result, r.reason
            raise _error(r) from None
        except WeightvaultError as exc:
            status, result, reason = 500, "error", exc.message
            raise
        finally:
            if not self.st.record(call, status, result, reason, time.perf_counter() - t0):
                raise TransientBackendError("the server's audit log cannot be written")

    # -- the Backend protocol --------------------------------------------------------------------
    def create(self) -> None:
        def work(call: Call, user: User) -> None:
            authorise(self.st, call, user, Op.INIT, None)
            self._inner.create()
        self._run("init", None, None, work)

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        def work(call: Call, user: User) -> None:
            refusal = may_upload(self.st, call, user, ftype)
            if refusal is not None:
                raise refusal
            self.st.require_created(self.repo)
            call.nbytes = len(data)
            put(self.st, call, user, self._inner, ftype, data, create_only)
        self._run("put", ftype, name, work)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        def work(call: Call, user: User) -> bytes:
            authorise(self.st, call, user, Op.READ, ftype)
            data = self._inner.load(ftype, name, offset, length)
            call.nbytes = len(data)
            return data
        return self._run("read", ftype, name, work)

    def stat(self, ftype: FileType, name: str) -> int:
        def work(call: Call, user: User) -> int:
            authorise(self.st, call, user, Op.STAT, ftype)
            return self._inner.stat(ftype, name)
        return self._run("stat", ftype, name, work)

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        def work(call: Call, user: User) -> list[tuple[str, int]]:
            authorise(self.st, call, user, Op.LIST, ftype)
            return sorted(self._inner.list(ftype)) if self.st.created(self.repo) else []
        return iter(self._run("list", ftype, None, work))

    def remove(self, ftype: FileType, name: str) -> None:
        def work(call: Call, user: User) -> None:
            self.st.require_created(self.repo)
            delete(self.st, call, user, self._inner, ftype)
        self._run("delete", ftype, name, work)

    @property
    def supports_retention(self) -> bool:
        return False

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        raise BackendError("retention locks are not available through the repository server")

    def remove_temp(self, min_age: float) -> int:
        def work(call: Call, user: User) -> int:
            authorise(self.st, call, user, Op.CLEAN, None)
            return self._inner.remove_temp(min_age)
        return self._run("clean", None, None, work)

    def _space(self, measure: Callable[[], int | None]) -> int | None:
        def work(call: Call, user: User) -> int | None:
            authorise(self.st, call, user, Op.SPACE, None)
            return measure()
        return self._run("space", None, None, work)

    def free_space(self) -> int | None:
        return self._space(self._inner.free_space)

    def total_space(self) -> int | None:
        return self._space(self._inner.total_space)


_check: type[Backend] = UserBackend  # the protocol is satisfied


class DashboardHooks:
    """What the dashboard asks of the server: who logs in, which repositories they may see, and
    a repository opened as them."""

    def __init__(self, st: ServerState) -> None:
        self.st = st

    def login(self, name: str, password: str, addr: str) -> tuple[str, dict[str, str]] | str:
        """(user, role per repository) for a right password, else why not (the failed-login limit
        of the server applies; the attempt is audited like any login)."""
        import base64

        header = "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
        auth = self.st.guard.authenticate(header, f"dashboard:{addr}")
        call = Call(addr=f"dashboard:{addr}", user=auth.name if auth.user is not None else None, op="login")
        self.st.record(call, auth.status, "ok" if auth.user is not None else "refused", auth.reason, 0.0)
        if auth.user is None:
            return auth.reason
        return auth.user.name, self.roles(auth.user.name)

    def roles(self, name: str) -> dict[str, str]:
        user = self.st.users.get(name)
        if user is None:
            return {}
        names = set(self.st.config.repositories) | ({n for n in user.roles if n != "*"})
        if self.st.config.private_role is not None:
            names.add(name)
        if "*" in user.roles and self.st.config.root is not None and self.st.config.root.is_dir():
            names |= {p.name for p in self.st.config.root.iterdir() if p.is_dir()}
        out = {}
        for repo in sorted(names):
            role = self.st.role(user, repo) if self.st.config.repository(repo) is not None else None
            if role in ROLES and self.st.created(repo):
                out[repo] = role
        return out

    def open(self, name: str, repo: str, password: str, addr: str) -> api.Repository:
        if repo not in self.roles(name):
            raise UsageError(f"user {name} has no role on a repository {repo!r} here")
        return api.open_repository_on(UserBackend(self.st, repo, name, addr), password)

    def audit(self, name: str, *, user: str | None = None, result: str | None = None,
              limit: int = 500) -> list[dict[str, Any]] | None:
        """The newest audit records (newest first) of the repositories ``name`` administers (every
        record for an admin of ``*``), filtered; None if ``name`` administers none."""
        u = self.st.users.get(name)
        if u is None:
            return None
        everything = u.roles.get("*") == "admin"
        mine = {repo for repo, role in self.roles(name).items() if role == "admin"}
        if not everything and not mine:
            return None
        out: list[dict[str, Any]] = []
        for rec in self.st.audit.records():
            if not everything and rec.get("repo") not in mine:
                continue
            if (user and rec.get("user") != user) or (result and rec.get("result") != result):
                continue
            out.append(rec)
        return list(reversed(out))[:limit]
