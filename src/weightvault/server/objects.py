"""The repository server's decisions on one object operation, shared by the HTTP handlers
(``app``) and the dashboard's in-process storage (``dashboard``): name checks, the role rule and
the maintenance window (``authorise``), create-only puts that never turn into overwrites
(``put``), removals counted once (``delete``), and the refusal of an upload before its body is
kept (``may_upload``). Each raises ``Refused`` with the status and the rule."""

from __future__ import annotations

import re

from weightvault.backends.base import Backend, FileType
from weightvault.errors import ObjectExistsError, ObjectNotFoundError
from weightvault.server.rules import Op, Verdict, decide
from weightvault.server.state import Call, Refused, ServerState, forget_owner, record_owner, reserved
from weightvault.server.users import User
from weightvault.server.windows import open_window

__all__ = ["TYPES", "authorise", "delete", "may_upload", "object_type", "put"]

TYPES = {t.value: t for t in FileType}
_HEX = re.compile(r"^[0-9a-f]{16,64}$")


def object_type(call: Call, tname: str, name: str) -> FileType:
    ftype = TYPES.get(tname)
    if ftype is None:
        raise Refused(404, f"unknown object type {tname!r} (types: {', '.join(sorted(TYPES))})")
    call.type, call.name = tname, name[:80]
    if (ftype is FileType.CONFIG and name != "config") or (ftype is not FileType.CONFIG and not _HEX.match(name)):
        raise Refused(400, f"invalid {tname} object name {name[:80]!r} (names are 16-64 lowercase hex digits;"
                      " the config object is 'config')")
    return ftype


def authorise(st: ServerState, call: Call, user: User, op: Op, ftype: FileType | None, *,
               own_lock: bool = False) -> Verdict:
    assert call.repo is not None
    role = st.role(user, call.repo)
    if role is None:
        raise Refused(403, f"user {user.name} has no role on repository {call.repo}", rule="no role")
    verdict = decide(role, op, ftype, own_lock=own_lock)
    if not verdict.allowed:
        raise Refused(403, verdict.rule, rule=verdict.rule)
    if verdict.risky:
        window = open_window(st.config.windows, st.config.state_dir, st.now())
        if window is None:
            names = "; ".join(w.text for w in st.config.windows)
            raise Refused(403, f"{op.value} of {ftype.value if ftype else 'objects'} is allowed only inside the"
                          f" maintenance window ({names}); an admin can open a break-glass window",
                          rule="maintenance window")
        call.extra["window"] = window
    return verdict


def put(st: ServerState, call: Call, user: User, b: Backend, ftype: FileType, data: bytes, create_only: bool) -> int:
    """Store ``data``; the status to answer (201 created, 200 stored over or the same bytes
    again). A new name is always stored create-only, so no race turns a create (never windowed,
    allowed to appenders) into an overwrite: a name taken meanwhile is judged as an existing one."""
    assert call.repo is not None and call.name is not None
    repo, name = call.repo, call.name
    try:
        old: int | None = b.stat(ftype, name)
    except ObjectNotFoundError:
        old = None
    if old is None:
        authorise(st, call, user, Op.CREATE, ftype)
        if ftype is FileType.SNAPSHOT and st.role(user, repo) == "append":
            st.count_snapshot(user.name, repo)
        recorded = ftype is FileType.LOCK and record_owner(st, repo, name, user.name)
        try:
            with reserved(st, repo, b, len(data)):
                b.save(ftype, name, data, create_only=True)
            return 201
        except ObjectExistsError:
            if recorded:  # taken meanwhile: not ours
                forget_owner(st, repo, name)
        except BaseException:
            if recorded:
                forget_owner(st, repo, name)
            raise
    return existing(st, call, user, b, ftype, data, create_only)


def existing(st: ServerState, call: Call, user: User, b: Backend, ftype: FileType, data: bytes,
              create_only: bool) -> int:
    assert call.repo is not None and call.name is not None
    authorise(st, call, user, Op.RESEND, ftype)  # before anything is read or answered
    if create_only:
        raise Refused(412, f"{ftype.value}/{call.name} exists (create-only)", result="ok")
    own = ftype is FileType.LOCK and st.lock_owner(call.repo, call.name) == user.name
    with st.object_lock(call.repo, ftype, call.name):  # the size replaced is the size counted
        try:
            before = b.stat(ftype, call.name)
        except ObjectNotFoundError:  # removed meanwhile: store it as a new object
            before = None
        if before is not None and before == len(data) and b.load(ftype, call.name) == data:
            return 200
        authorise(st, call, user, Op.OVERWRITE, ftype, own_lock=own)
        with reserved(st, call.repo, b, len(data) - (before or 0)):
            b.save(ftype, call.name, data)
    return 200


def delete(st: ServerState, call: Call, user: User, b: Backend, ftype: FileType) -> None:
    """Remove an object. Removing one that is not there changes nothing and is answered 204 to any
    role (a retried removal of a client's own lock, whose owner record went with the first)."""
    assert call.repo is not None and call.name is not None
    with st.object_lock(call.repo, ftype, call.name):  # two removals of one object count its size once
        try:
            size = b.stat(ftype, call.name)
        except ObjectNotFoundError:
            if st.role(user, call.repo) is None:
                raise Refused(403, f"user {user.name} has no role on repository {call.repo}",
                              rule="no role") from None
            call.extra["absent"] = True
            return
        own = ftype is FileType.LOCK and st.lock_owner(call.repo, call.name) == user.name
        authorise(st, call, user, Op.DELETE, ftype, own_lock=own)
        b.remove(ftype, call.name)
        st.add_used(call.repo, -size)
        if ftype is FileType.LOCK:
            forget_owner(st, call.repo, call.name)


def may_upload(st: ServerState, call: Call, user: User, ftype: FileType) -> Refused | None:
    """Why no put of ``ftype`` by this user can succeed, decided before the body is kept."""
    assert call.repo is not None
    role = st.role(user, call.repo)
    if role is None:
        return Refused(403, f"user {user.name} has no role on repository {call.repo}", rule="no role")
    verdict = decide(role, Op.CREATE, ftype)
    if verdict.allowed or decide(role, Op.OVERWRITE, ftype, own_lock=True).allowed:
        return None
    return Refused(403, verdict.rule, rule=verdict.rule)
