"""A unit of work on the repository: one lock, one view of the index and of the snapshot list.

Every operation runs in one session (``Repository.session``)::

    with engine.session(LockMode.SHARED) as s:
        snap = s.find("latest")
        ops.restore.restore(engine, snap, target, opts)

Opening a session, in this order (the order is what makes prune's two-phase deletion safe,
docs/FORMAT.md section 9):

1. take the lock (durable before anything else is read);
2. read the prune plans and mark their packs condemned;
3. refresh the index: read the index files not read yet; if a file read before is gone (prune,
   heal or repair superseded it), read the whole index again, so no blob of a deleted pack is
   ever reused or looked up;
4. list the snapshots once, on first use: ``Session.snapshots()`` returns that list for the rest
   of the session, until this process saves or removes a snapshot.

When the last session of a ``Repository`` ends, whatever a failed operation left in memory (blobs
in open packs, packs written but never indexed) is dropped, so a later session cannot count on a
pack that a prune by someone else may have deleted meanwhile.

A long-lived ``Repository`` (a training callback, an agent, a server) therefore sees what other
processes committed at the start of each operation, and re-opening one idle for hours costs a
listing of ``index/`` and ``snapshots/`` plus the files that are new.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from weightvault.backends.base import FileType
from weightvault.errors import ObjectNotFoundError, SnapshotNotFoundError
from weightvault.repository.snapshots import Snapshot, resolve_snapshot

if TYPE_CHECKING:
    from weightvault.repository.repo import Repository

__all__ = ["LockMode", "Session"]


class LockMode(enum.Enum):
    """Which repository lock a session holds (``weightvault.repository.locks``)."""

    NONE = "none"  # read-only listings that tolerate a concurrent prune (snapshots, ls, diff)
    SHARED = "shared"  # backup, restore, verify, validate, copy
    MAINTENANCE = "maintenance"  # forget, prune, check: beside shared locks, one at a time
    EXCLUSIVE = "exclusive"  # repair, heal, prune of format v1-v3: alone

    @property
    def flags(self) -> tuple[bool, bool]:
        """(exclusive, maintenance) as ``hold_lock`` takes them."""
        return self is LockMode.EXCLUSIVE, self is LockMode.MAINTENANCE


@dataclass
class Session:
    """The view an operation works with; see the module docstring. ``lock`` is the lock's name
    (empty with ``LockMode.NONE``)."""

    repo: Repository
    mode: LockMode
    lock: str
    _listing: list[Snapshot] | None = field(default=None, repr=False)
    _generation: int = -1
    _unreadable: dict[str, str] = field(default_factory=dict, repr=False)
    skip_unreadable: bool = False  # resolve 'latest' and '@TIME' past unreadable snapshots

    def snapshots(self) -> list[Snapshot]:
        """Every readable snapshot, oldest first, listed once per session (again only after this
        process saved or removed a snapshot meanwhile)."""
        generation = self.repo.snapshot_generation
        if self._listing is None or generation != self._generation:
            self._listing, self._generation = self.repo.snapshots(), generation
            self._unreadable = dict(self.repo.unreadable_snapshots)
        return list(self._listing)

    def unreadable(self) -> dict[str, str]:
        """The snapshots this session's listing could not read: id -> why."""
        self.snapshots()
        return dict(self._unreadable)

    def find(self, spec: str, snaps: list[Snapshot] | None = None) -> Snapshot:
        """Resolve an id prefix, 'latest', 'latest:k=v' or '@TIME' against ``snaps`` (default:
        this session's snapshot list). An unreadable snapshot the name might resolve to is an
        IntegrityError unless ``skip_unreadable``."""
        listing = self.snapshots()
        damaged = {} if self.skip_unreadable else self._unreadable
        return resolve_snapshot(spec, listing if snaps is None else snaps, damaged)

    def still_there(self, snap: Snapshot) -> None:
        """With a lock held: the snapshot was not forgotten since it was listed (a prune that
        starts later waits for this lock, so its data stays until the session ends)."""
        try:
            self.repo.backend.stat(FileType.SNAPSHOT, snap.id)
        except ObjectNotFoundError:
            raise SnapshotNotFoundError(f"snapshot {snap.short_id} was removed by a concurrent forget") from None
