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
from weightvault.repository.index import MasterIndex, decode_index_file, encode_index_file
from weightvault.repository.packer import read_pack_header
from weightvault.repository.repo import Repository
from weightvault.types import PackedBlob

__all__ = ["PACKS_PER_INDEX_FILE", "RepairResult", "rebuild_index"]

PACKS_PER_INDEX_FILE = 2000


@dataclass
class RepairResult:
    packs: int = 0
    blobs: int = 0
    index_files_written: int = 0
    index_files_removed: int = 0
    carried_over: list[str] = field(default_factory=list)  # packs kept from an old index (header unreadable)
    unreadable: list[str] = field(default_factory=list)  # packs with no readable header and no old entry
    skipped_index_files: list[str] = field(default_factory=list)  # damaged old index files


def _old_entries(repo: Repository, res: RepairResult) -> dict[str, list[PackedBlob]]:
    old: dict[str, list[PackedBlob]] = {}
    for name, _ in repo.backend.list(FileType.INDEX):
        try:
            old.update(decode_index_file(repo.key, name, repo.backend.load(FileType.INDEX, name)))
        except WeightvaultError:
            res.skipped_index_files.append(name)
    return old


def rebuild_index(repo: Repository) -> RepairResult:
    res = RepairResult()
    old_names = [n for n, _ in repo.backend.list(FileType.INDEX)]
    old = _old_entries(repo, res)
    packs: dict[str, list[PackedBlob]] = {}
    for pack_id, size in sorted(repo.backend.list(FileType.PACK)):
        try:
            packs[pack_id] = read_pack_header(repo.backend, repo.key, pack_id, size)
        except WeightvaultError:
            if pack_id in old:
                packs[pack_id] = old[pack_id]
                res.carried_over.append(pack_id)
            else:
                res.unreadable.append(pack_id)
    ids = sorted(packs)
    written: set[str] = set()
    for i in range(0, len(ids), PACKS_PER_INDEX_FILE):
        part = {p: packs[p] for p in ids[i : i + PACKS_PER_INDEX_FILE]}
        name, stored = encode_index_file(repo.key, part)
        repo.backend.save(FileType.INDEX, name, stored)
        written.add(name)
    for name in old_names:  # only after the new index is durable
        if name not in written:
            repo.backend.remove(FileType.INDEX, name)
            res.index_files_removed += 1
    res.index_files_written = len(written)
    res.packs = len(packs)
    res.blobs = sum(len(b) for b in packs.values())
    repo.index = MasterIndex()
    repo.indexed_files = set()
    repo.load_index()
    return res
