"""Looking inside a snapshot's model files, and bringing its data out of cold storage: the part of
``Repository`` (``api._repository``) that lists a stored file's tensors, diffs two checkpoints
tensor by tensor (``ops.inspect``) and thaws what a restore needs (``ops.thaw``)."""

from __future__ import annotations

import contextlib
import os

from weightvault.errors import UsageError
from weightvault.ops import inspect as _inspect
from weightvault.ops import thaw as _thaw
from weightvault.ops.inspect import TensorDiff, TensorTable
from weightvault.ops.thaw import ThawReport
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.repo import Repository as _Engine
from weightvault.repository.session import LockMode, Session
from weightvault.repository.snapshots import Snapshot

__all__ = ["Inspection"]


class Inspection:
    """Mixed into ``Repository``, which provides ``_repo``, ``_session`` and ``_find``."""

    _repo: _Engine

    def _session(self, mode: LockMode = LockMode.SHARED) -> contextlib.AbstractContextManager[Session]:
        raise NotImplementedError

    @staticmethod
    def _find(s: Session, spec: str) -> Snapshot:
        raise NotImplementedError

    def tensors(self, spec: str, path: str) -> TensorTable:
        """The tensors (name, dtype, shape, bytes) of the file ``path`` of a snapshot, read from the
        repository without restoring it (only the blobs its header lies in). UsageError if the
        snapshot has no regular file there; ``format`` None for a file that is no model file."""
        want = os.fsencode(path.strip("/"))
        with self._session(LockMode.NONE) as s:
            snap = self._find(s, spec)
            for node in iter_manifest(snap.tree, self._repo.load_blob):
                if node.path == want and node.type == "file":
                    return _inspect.tensor_table(self._repo, node)
        raise UsageError(f"snapshot {snap.short_id} has no file {path!r}",
                         hint=f"`weightvault ls {snap.short_id}` lists its files")

    def tensor_diff(self, spec_a: str, spec_b: str) -> TensorDiff:
        """From snapshot ``spec_a`` to ``spec_b``: changed, added and removed files, and in model
        files cut along tensors which tensors changed, with the stored bytes ``spec_b`` added."""
        with self._session(LockMode.NONE) as s:
            return _inspect.tensor_diff(self._repo, self._find(s, spec_a), self._find(s, spec_b))

    def thaw(self, spec: str, *, includes: list[str] | None = None, days: int = 7,
             tier: str = "Standard") -> ThawReport:
        """Request the restore of every data pack that restoring snapshot ``spec`` (``includes``:
        those files only) needs from an offline storage class (S3 GLACIER, DEEP_ARCHIVE), keeping
        the restored copies ``days`` days; ``tier`` Expedited, Standard or Bulk. Idempotent:
        call again to see progress (``ThawReport.ready`` once all are online)."""
        with self._session(LockMode.NONE) as s:
            snap = self._find(s, spec)
            return _thaw.thaw(self._repo, snap, includes=includes, days=days, tier=tier,
                              threads=max(1, self._repo.io_threads or 8))
