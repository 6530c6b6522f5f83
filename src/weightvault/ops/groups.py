"""Sharded checkpoints: the ranks of a distributed job back up their shards into one group.

Each rank runs ``backup --group RUN_ID --rank R --world-size W`` and commits an ordinary snapshot
whose ``group`` field is ``{"id", "rank", "world_size"}``. Such rank snapshots are never listed,
nor picked by ``latest`` or ``@TIME``, on their own. After each rank commits, it checks whether all
W ranks have; the rank that finds the set complete merges their manifests into one **group
snapshot** (``group = {"id", "world_size", "ranks": [rank snapshot ids in rank order]}``), which
is listed and restored like any snapshot. A group missing a rank, with ranks that disagree on W,
or whose ranks stored different content at the same path, has no group snapshot and is reported
as incomplete with the reason.

Several ranks finishing at the same moment may each write a group snapshot; they are identical
in content, and listings show only the oldest (``representatives``). Merging never reads file data:
it interleaves the manifests (each sorted depth-first by path components) and keeps one entry per
path.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from weightvault.errors import UsageError
from weightvault.repository.manifest import ManifestWriter, Node, iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot
from weightvault.types import BlobType

__all__ = ["Group", "GroupConflict", "commit_group", "groups", "representatives", "validate_group_args"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")


def validate_group_args(group: str | None, rank: int | None, world_size: int | None) -> None:
    """UsageError unless all three are given (or none) and 0 <= rank < world_size."""
    given = [x is not None for x in (group, rank, world_size)]
    if not any(given):
        return
    if not all(given):
        raise UsageError("--group, --rank and --world-size go together", hint="give all three, or none")
    assert group is not None and rank is not None and world_size is not None
    if not _ID.match(group):
        raise UsageError(f"invalid group id {group!r}", hint="use letters, digits and . _ : @ + - (at most 128)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")


class GroupConflict(Exception):
    """The ranks' manifests cannot be merged (same path, different content)."""


@dataclass
class Group:
    id: str
    world_size: int | None  # None when the ranks disagree
    ranks: dict[int, Snapshot] = field(default_factory=dict)
    merged: Snapshot | None = None
    problem: str | None = None

    @property
    def missing(self) -> list[int]:
        return [r for r in range(self.world_size or 0) if r not in self.ranks]

    @property
    def complete(self) -> bool:
        return self.merged is not None

    def status(self) -> str:
        if self.merged is not None:
            return "complete"
        if self.problem:
            return f"incomplete: {self.problem}"
        return f"incomplete: {len(self.ranks)} of {self.world_size} ranks committed, missing rank(s) " + ", ".join(
            str(r) for r in self.missing
        )


def groups(snapshots: list[Snapshot]) -> dict[str, Group]:
    """Every group named by ``snapshots`` (oldest first), with its ranks and merged snapshot."""
    out: dict[str, Group] = {}
    for s in sorted(snapshots, key=lambda s: (s.datetime, s.id)):
        if s.group is None:
            continue
        gid, w = str(s.group["id"]), int(s.group["world_size"])
        g = out.setdefault(gid, Group(gid, w))
        if g.world_size is not None and g.world_size != w:
            g.problem = f"ranks disagree on the world size ({g.world_size} and {w})"
            g.world_size = None
        rank = s.group_rank
        if rank is not None:
            g.ranks.setdefault(rank, s)  # a rank backed up twice: its first snapshot counts
        elif g.merged is None:
            g.merged = s
    return out


def representatives(snapshots: list[Snapshot]) -> list[Snapshot]:
    """What listings and ``latest`` see: no rank snapshots, one group snapshot per group."""
    seen: set[str] = set()
    out = []
    for s in sorted(snapshots, key=lambda s: (s.datetime, s.id)):
        if s.group is not None:
            if s.group_rank is not None or s.group["id"] in seen:
                continue
            seen.add(str(s.group["id"]))
        out.append(s)
    return out


def _key(node: Node) -> tuple[bytes, ...]:
    return tuple(node.path.split(b"/"))


def _same(a: Node, b: Node) -> bool:
    if a.type != b.type:
        return False
    if a.type == "file":
        return a.sha256 == b.sha256 and a.blobs == b.blobs
    if a.type == "symlink":
        return a.target == b.target
    return True  # directories: the first rank's metadata is kept


def _merged_nodes(repo: Repository, members: list[Snapshot]) -> Iterator[Node]:
    streams = [((_key(n), rank, n) for n in iter_manifest(s.tree, repo.load_blob)) for rank, s in enumerate(members)]
    last: Node | None = None
    for _, rank, node in heapq.merge(*streams, key=lambda t: (t[0], t[1])):
        if last is not None and last.path == node.path:
            if not _same(last, node):
                raise GroupConflict(f"rank {rank} stored different content at {os.fsdecode(node.path)!r}")
            continue
        last = node
        yield node


def commit_group(repo: Repository, group_id: str) -> tuple[Group, Snapshot | None]:
    """If every rank of ``group_id`` has committed and no group snapshot exists, write one.
    Returns the group and the snapshot written now (None if none was). Call with a lock held."""
    snaps = repo.snapshots()
    repo.load_index()  # after listing: other ranks' index files precede their snapshots (write order)
    g = groups(snaps).get(group_id)
    if g is None:
        raise UsageError(f"no snapshot belongs to group {group_id!r}")
    if g.merged is not None or g.world_size is None or g.missing or g.problem:
        return g, None
    members = [g.ranks[r] for r in range(g.world_size)]
    writer = ManifestWriter()
    try:
        for node in _merged_nodes(repo, members):
            writer.add(node)
    except GroupConflict as exc:
        writer.close()
        g.problem = f"cannot merge the ranks: {exc}"
        return g, None
    except BaseException:
        writer.close()
        raise
    tree = writer.finish(lambda data: repo.save_blob(BlobType.TREE, data)[0])
    repo.flush()
    tags = sorted({t for m in members for t in m.tags})
    snap = Snapshot(
        time=max(m.datetime for m in members).isoformat(),
        host=members[0].host,
        user=members[0].user,
        paths=sorted({p for m in members for p in m.paths}),
        tags=tags,
        tree=tree,
        parent=None,
        summary={
            "files": sum(int(m.summary.get("files", 0)) for m in members),
            "bytes": sum(int(m.summary.get("bytes", 0)) for m in members),
            "ranks": g.world_size,
        },
        program_version=members[0].program_version,
        group={"id": group_id, "world_size": g.world_size, "ranks": [m.id for m in members]},
    )
    repo.save_snapshot(snap)
    g.merged = snap
    return g, snap
