"""Who may do what on the repository server: roles, operations and the one function that decides.

Roles are ordered; each holds every right of the one before it:

* ``read``: list, stat and read every object type, and take (create, refresh, remove) its own
  locks and add ledger records: what restore, verify, check and drill need (a restore holds a
  shared lock and records itself in the ledger like any operation).
* ``append``: back up. Create new packs, index files, snapshots, locks and ledger records; send an
  object again with exactly the bytes it already holds (a retried upload); refresh and remove
  *its own* locks. Never overwrite or delete anything else, never touch keys, config or plans.
* ``maintain``: forget, prune, repair: also create plans, delete and overwrite packs, index files,
  snapshots and plans, remove anyone's (stale) locks, clean temporary objects.
* ``admin``: everything, keys and config included.

A delete or an overwrite of anything but a lock is *risky*: where the server has maintenance
windows, it is allowed only inside one (or a break-glass window), whatever the role.

The server decides from the operation and the object type it sees on the wire and from what it
stores (whether the object exists, whether the bytes are the same, who created a lock); nothing a
client says about itself is trusted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from weightvault.backends.base import FileType

__all__ = ["ROLES", "Op", "Verdict", "decide", "role_at_least"]

ROLES = ("read", "append", "maintain", "admin")


class Op(enum.Enum):
    LIST = "list"
    STAT = "stat"
    READ = "read"
    CREATE = "create"        # a put of a name that does not exist
    RESEND = "resend"        # a put of a name that exists, with the same bytes
    OVERWRITE = "overwrite"  # a put of a name that exists, with other bytes
    DELETE = "delete"
    INIT = "init"            # create the repository's directories (``init``)
    CLEAN = "clean"          # remove temporary objects (``prune``)
    SPACE = "space"          # free and total bytes


# object types each role may create (a write of a new name)
_CREATE = {
    "read": {FileType.LOCK, FileType.LEDGER},
    "append": {FileType.PACK, FileType.INDEX, FileType.SNAPSHOT, FileType.LOCK, FileType.LEDGER},
    "maintain": {FileType.PACK, FileType.INDEX, FileType.SNAPSHOT, FileType.LOCK, FileType.LEDGER, FileType.PLAN},
    "admin": set(FileType),
}
# object types each role may delete or overwrite (any object of the type, not only its own)
_CHANGE = {
    "maintain": {FileType.PACK, FileType.INDEX, FileType.SNAPSHOT, FileType.PLAN, FileType.LOCK},
    "admin": set(FileType),
}
_READS = {Op.LIST, Op.STAT, Op.READ, Op.SPACE}


@dataclass(frozen=True)
class Verdict:
    """``allowed``; ``rule``: why, in words a refusal message can quote; ``risky``: a delete or an
    overwrite that maintenance windows govern (the caller checks the window)."""

    allowed: bool
    rule: str
    risky: bool = False


def role_at_least(role: str, wanted: str) -> bool:
    return ROLES.index(role) >= ROLES.index(wanted)


def decide(role: str, op: Op, ftype: FileType | None, *, own_lock: bool = False) -> Verdict:
    """The verdict for ``role`` doing ``op`` on an object of ``ftype`` (None for the repository as
    a whole: INIT, CLEAN, SPACE). ``own_lock``: the object is a lock this user created."""
    if role not in ROLES:
        return Verdict(False, f"unknown role {role!r}")
    if op in _READS:
        return Verdict(True, f"role {role} may read")
    if op is Op.INIT:
        return _needs(role, "admin", "create a repository")
    if op is Op.CLEAN:
        return _needs(role, "maintain", "remove temporary objects")
    assert ftype is not None, op
    what = ftype.value
    if op in (Op.CREATE, Op.RESEND):
        if ftype in _CREATE.get(role, set()):
            return Verdict(True, f"role {role} may create {what} objects")
        return Verdict(False, f"role {role} may not create {what} objects")
    verb = "delete" if op is Op.DELETE else "overwrite"
    if ftype is FileType.LOCK and own_lock:
        return Verdict(True, f"a client may {verb} its own locks")
    if ftype in _CHANGE.get(role, set()):
        return Verdict(True, f"role {role} may {verb} {what} objects", risky=ftype is not FileType.LOCK)
    if ftype is FileType.LOCK:
        return Verdict(False, f"role {role} may {verb} only the locks it created (another client's lock needs"
                       " maintain)")
    return Verdict(False, f"role {role} may not {verb} {what} objects (append-only: nothing stored is ever"
                   " changed or removed by this role)")


def _needs(role: str, wanted: str, what: str) -> Verdict:
    if role_at_least(role, wanted):
        return Verdict(True, f"role {role} may {what}")
    return Verdict(False, f"only role {wanted} or above may {what} (this user has {role})")
