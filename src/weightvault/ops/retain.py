"""S3 Object Lock for a retention-locked snapshot: every object it needs is kept from deletion
on the storage itself, not only by weightvault's own ``forget``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from weightvault.backends.base import FileType
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot

__all__ = ["retain_snapshot"]


def retain_snapshot(repo: Repository, snap: Snapshot, until: datetime) -> int:
    """Object Lock: keep every object a retention-locked snapshot needs from deletion until
    ``until`` (the snapshot document, the packs of its tree and file blobs and their delta
    bases, the key files and the config). Index files are not locked: prune rewrites them, and
    they can be rebuilt from the packs. Returns the number of objects retained."""
    packs: set[str] = set()
    todo = list(snap.tree) + [b for n in iter_manifest(snap.tree, repo.load_blob) for b in n.blobs]
    seen: set[bytes] = set()
    while todo:
        bid = todo.pop()
        if bid in seen:
            continue
        seen.add(bid)
        packs.add(repo.lookup(bid).pack_id)
        base = repo.index.base_of(bid)
        if base is not None:
            todo.append(base)
    backend: Any = repo.backend
    objects = [(FileType.SNAPSHOT, snap.id), (FileType.CONFIG, "config")]
    objects += [(FileType.KEY, name) for name, _ in repo.backend.list(FileType.KEY)]
    objects += [(FileType.PACK, p) for p in sorted(packs)]
    for ftype, name in objects:
        backend.retain(ftype, name, until)
    return len(objects)
