"""Diff two snapshots: added, removed, modified content, type changes and metadata-only changes."""

from __future__ import annotations

from dataclasses import dataclass, field

from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot

__all__ = ["DiffEntry", "DiffResult", "diff"]


@dataclass(frozen=True)
class DiffEntry:
    change: str  # "+" added, "-" removed, "M" content modified, "T" type changed, "U" metadata only
    path: str
    type: str
    size_before: int = 0
    size_after: int = 0


@dataclass
class DiffResult:
    entries: list[DiffEntry] = field(default_factory=list)
    added_bytes: int = 0
    removed_bytes: int = 0

    def counts(self) -> dict[str, int]:
        out = {"+": 0, "-": 0, "M": 0, "T": 0, "U": 0}
        for e in self.entries:
            out[e.change] += 1
        return out


def _nodes(repo: Repository, snap: Snapshot) -> dict[bytes, Node]:
    return {n.path: n for n in iter_manifest(snap.tree, repo.load_blob)}


def diff(repo: Repository, a: Snapshot, b: Snapshot) -> DiffResult:
    before, after = _nodes(repo, a), _nodes(repo, b)
    res = DiffResult()
    for path in sorted(before.keys() | after.keys()):
        x, y = before.get(path), after.get(path)
        shown = path.decode("utf-8", "surrogateescape")
        if x is None and y is not None:
            res.entries.append(DiffEntry("+", shown, y.type, 0, y.size))
            res.added_bytes += y.size
        elif y is None and x is not None:
            res.entries.append(DiffEntry("-", shown, x.type, x.size, 0))
            res.removed_bytes += x.size
        elif x is not None and y is not None:
            if x.type != y.type:
                res.entries.append(DiffEntry("T", shown, y.type, x.size, y.size))
            elif (x.sha256, x.size, x.target) != (y.sha256, y.size, y.target):
                res.entries.append(DiffEntry("M", shown, y.type, x.size, y.size))
                res.added_bytes += max(0, y.size - x.size)
                res.removed_bytes += max(0, x.size - y.size)
            elif (x.mode, x.mtime_ns, x.uid, x.gid) != (y.mode, y.mtime_ns, y.uid, y.gid):
                res.entries.append(DiffEntry("U", shown, y.type, x.size, y.size))
    return res
