"""Repair: rebuild the index from the pack headers alone.

Every pack's header is read and authenticated; one fresh set of index files describing all
readable packs is written (durably) and only then are the old index files removed, so a crash at
any point leaves a usable index. A pack whose header cannot be read keeps the entries a readable
old index file had for it (its blobs may still be intact); a pack with neither is reported, and
snapshots using its blobs will fail ``check`` until the data is restored from elsewhere. The
caller holds an exclusive lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightvault.backends.base import FileType
from weightvault.errors import WeightvaultError
from weightvault.repository.maintenance import read_index_files, replace_index
from weightvault.repository.packer import read_pack_header
from weightvault.repository.repo import Repository
from weightvault.types import PackedBlob

__all__ = ["RepairResult", "rebuild_index"]


@dataclass
class RepairResult:
    packs: int = 0
    blobs: int = 0
    index_files_written: int = 0
    index_files_removed: int = 0
    carried_over: list[str] = field(default_factory=list)  # packs kept from an old index (header unreadable)
    unreadable: list[str] = field(default_factory=list)  # packs with no readable header and no old entry
    skipped_index_files: list[str] = field(default_factory=list)  # damaged old index files


def rebuild_index(repo: Repository) -> RepairResult:
    res = RepairResult()
    stored = read_index_files(repo, strict=False)
    res.skipped_index_files = sorted(stored.unreadable)
    packs: dict[str, list[PackedBlob]] = {}
    for pack_id, size in sorted(repo.backend.list(FileType.PACK)):
        try:
            packs[pack_id] = read_pack_header(repo.backend, repo.key, pack_id, size)
        except WeightvaultError:
            if pack_id in stored.packs:
                packs[pack_id] = list(stored.packs[pack_id].values())
                res.carried_over.append(pack_id)
            else:
                res.unreadable.append(pack_id)
    old_names = [*stored.files, *stored.unreadable]
    written = replace_index(repo, packs, old_names)  # old files removed only after the new index is durable
    res.index_files_removed = len([n for n in old_names if n not in written])
    res.index_files_written = len(written)
    res.packs = len(packs)
    res.blobs = sum(len(b) for b in packs.values())
    return res
