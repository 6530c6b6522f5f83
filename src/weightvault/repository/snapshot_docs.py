"""Snapshot documents in storage, as the engine reads and writes them (a part of
``repository.repo.Repository``, kept here to keep that module small).

Documents are immutable (named by the hash of their stored bytes), so each is read and decrypted
once per Repository object; listings are always fresh (``Session.snapshots`` lists once per
operation). ``snapshot_generation`` counts the saves and removals this object made, so a session
knows when its listing is out of date.
"""

from __future__ import annotations

import logging
import threading

from weightvault.backends.base import Backend, FileType
from weightvault.codec.crypto import MasterKey
from weightvault.errors import IntegrityError, ObjectNotFoundError, UnsupportedFormatError
from weightvault.format import objects
from weightvault.format.layout import KIND_SNAPSHOT
from weightvault.repository.index import open_document, seal_document
from weightvault.repository.snapshots import Snapshot

__all__ = ["SnapshotDocuments"]

log = logging.getLogger(__name__)


class SnapshotDocuments:
    """Mixed into the engine; needs ``backend``, ``key`` and ``_lock``."""

    backend: Backend
    key: MasterKey
    _lock: threading.Lock
    _snapshot_docs: dict[str, dict[str, object]]
    snapshot_generation: int
    unreadable_snapshots: dict[str, str]

    def save_snapshot(self, snap: Snapshot) -> str:
        """Persist a snapshot; every blob it references must already be durable (call flush())."""
        name, stored = seal_document(self.key, snap.to_doc(), KIND_SNAPSHOT)
        self.backend.save(FileType.SNAPSHOT, name, stored)
        snap.id = name
        with self._lock:
            self.snapshot_generation += 1
        return name

    def remove_snapshot(self, snap_id: str) -> None:
        """Remove a snapshot document (its data stays until prune)."""
        self.backend.remove(FileType.SNAPSHOT, snap_id)
        with self._lock:
            self.snapshot_generation += 1

    def load_snapshot(self, snap_id: str) -> Snapshot:
        """One snapshot by id. Documents are immutable (named by the hash of their bytes), so each
        is read and decrypted once per Repository object."""
        doc = self._snapshot_docs.get(snap_id)
        if doc is None:
            stored = self.backend.load(FileType.SNAPSHOT, snap_id)
            loaded = objects.loads(open_document(self.key, stored, KIND_SNAPSHOT, f"snapshot {snap_id}"))
            snap = Snapshot.from_doc(loaded, snap_id)  # validates before it is remembered
            self._snapshot_docs[snap_id] = loaded
            return snap
        return Snapshot.from_doc(doc, snap_id)

    def list_snapshot_ids(self) -> list[str]:
        return sorted(n for n, _ in self.backend.list(FileType.SNAPSHOT))

    def snapshots(self) -> list[Snapshot]:
        """All readable snapshots, oldest first, listed now (``Session.snapshots`` lists once per
        operation). A damaged snapshot file is skipped (and logged) so it cannot hide the others,
        and named in ``unreadable_snapshots`` (``check`` reports it too)."""
        snaps = []
        unreadable: dict[str, str] = {}
        listed = self.list_snapshot_ids()
        for snap_id in listed:
            try:
                snaps.append(self.load_snapshot(snap_id))
            except ObjectNotFoundError:
                continue  # forgotten meanwhile
            except (IntegrityError, UnsupportedFormatError) as exc:
                log.warning("skipping unreadable snapshot %s: %s", snap_id, exc.message)
                unreadable[snap_id] = exc.message
        self.unreadable_snapshots = unreadable
        for gone in set(self._snapshot_docs) - set(listed):
            del self._snapshot_docs[gone]
        snaps.sort(key=lambda s: (s.datetime, s.id))
        return snaps
