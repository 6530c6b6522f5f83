"""A snapshot of files that exist only in memory: what a checkpoint writer that must never leave a
local copy (a DCP ``StorageWriter``) hands over.

``backup_data(repo, root, files, opts)`` stores ``files`` (relative path -> bytes) as the tree of
the directory ``root`` (an absolute path recorded as the snapshot's source; its base name is the
manifest's top directory), exactly as ``backup`` would store the same files read from disk: the
same splitters (selected by name and content), codecs, checkpoint deltas against the parent
snapshot (default: the newest with the same host and path, or the rank's own for a group),
group commit. Directories get mode 0755, files 0644, both the current time and this process's
uid/gid. Paths must be relative, "/"-separated, with no empty, ``.`` or ``..`` component and no
duplicates (UsageError).
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Mapping
from typing import BinaryIO, cast

from weightvault.chunking.registry import default_registry
from weightvault.errors import UsageError
from weightvault.ops.backup import (
    BackupOptions,
    BackupResult,
    ChunkSaver,
    commit_snapshot,
    find_parent,
    store_stream,
)
from weightvault.ops.delta_bases import BaseFinder
from weightvault.ops.groups import commit_group, validate_group_args
from weightvault.repository.manifest import ManifestWriter, Node, iter_manifest
from weightvault.repository.repo import Repository
from weightvault.types import BlobType

__all__ = ["backup_data"]


def _checked(files: Mapping[str, bytes]) -> list[tuple[bytes, bytes]]:
    out = []
    for path, data in files.items():
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise UsageError(f"in-memory file {path!r}: not a relative path of plain names")
        out.append((path.encode("utf-8"), data))
    if len({p for p, _ in out}) != len(out):
        raise UsageError("in-memory files: a path is given twice")
    return sorted(out)


def _nodes_in_order(top: bytes, paths: list[bytes]) -> list[bytes | tuple[bytes, int]]:
    """Manifest order (each directory before its children, siblings by name bytes): directory
    paths as bytes, files as (path, index into ``paths``)."""
    tree: dict[bytes, object] = {}
    for i, p in enumerate(paths):
        node = tree
        parts = p.split(b"/")
        for d in parts[:-1]:
            child = node.setdefault(d, {})
            if not isinstance(child, dict):
                raise UsageError(f"in-memory file {p.decode()!r}: {d.decode()!r} is also a file")
            node = child
        if parts[-1] in node:
            raise UsageError(f"in-memory file {p.decode()!r}: also a directory")
        node[parts[-1]] = i
    out: list[bytes | tuple[bytes, int]] = [top]
    # depth first without recursion (any depth): a directory, then its children by name
    stack: list[tuple[bytes, object]] = [(top + b"/" + name, tree[name]) for name in sorted(tree, reverse=True)]
    while stack:
        path, child = stack.pop()
        if isinstance(child, dict):
            out.append(path)
            stack.extend((path + b"/" + name, child[name]) for name in sorted(child, reverse=True))
        else:
            assert isinstance(child, int)
            out.append((path, child))
    return out


def backup_data(repo: Repository, root: str, files: Mapping[str, bytes],
                opts: BackupOptions | None = None) -> BackupResult:
    """Store ``files`` as one snapshot of the directory ``root`` (see the module docstring)."""
    opts = opts or BackupOptions()
    validate_group_args(opts.group, opts.rank, opts.world_size)
    checked = _checked(files)
    root_abs = os.path.abspath(root)
    top = os.path.basename(root_abs.rstrip("/")).encode("utf-8") or b"ROOT"
    host = opts.host or socket.gethostname()
    parent = (repo.load_snapshot(opts.parent) if opts.parent
              else find_parent(repo, host, [root_abs], opts.rank if opts.group else None))
    previous = {n.path: n for n in iter_manifest(parent.tree, repo.load_blob) if n.type == "file"} if parent else {}
    finder = BaseFinder(repo, previous, {top: os.fsencode(root_abs)})
    registry = opts.registry or default_registry()
    now, uid, gid = time.time_ns(), os.getuid(), os.getgid()
    writer, saver = ManifestWriter(), ChunkSaver(repo, opts.workers or os.cpu_count() or 2)
    start, blobs_before, stored_before = time.monotonic(), repo.stats_new_blobs, repo.stats_new_stored
    totals = {"files": 0, "dirs": 0, "bytes": 0, "files_new": 0, "files_changed": 0, "files_unmodified": 0}
    try:
        for item in _nodes_in_order(top, [p for p, _ in checked]):
            if isinstance(item, bytes):
                writer.add(Node(path=item, type="dir", mode=0o755, mtime_ns=now, ctime_ns=now, uid=uid, gid=gid))
                totals["dirs"] += 1
                continue
            path, i = item
            data = checked[i][1]
            node, _offsets, _why = store_stream(cast(BinaryIO, io.BytesIO(data)), data[:65536], path, saver,
                                                registry, repo, lambda _n: None, finder)
            node.mode, node.mtime_ns, node.ctime_ns, node.uid, node.gid = 0o644, now, now, uid, gid
            writer.add(node)
            prev = previous.get(path)
            totals["files"] += 1
            totals["bytes"] += node.size
            totals["files_unmodified" if prev is not None and prev.sha256 == node.sha256 else
                   "files_changed" if prev is not None else "files_new"] += 1
        saver.close()
    except BaseException:
        writer.close()
        saver.abort()
        raise
    tree = writer.finish(lambda data: repo.save_blob(BlobType.TREE, data)[0])
    repo.flush()  # packs, then index: everything the snapshot references is durable
    summary: dict[str, float] = dict(totals)
    summary.update(bytes_read=totals["bytes"], duration_s=round(time.monotonic() - start, 3),
                   blobs_added=repo.stats_new_blobs - blobs_before,
                   stored_bytes_added=repo.stats_new_stored - stored_before, errors=0)
    snap = commit_snapshot(repo, opts, host, [root_abs], tree, parent, summary)
    group = commit_group(repo, opts.group)[0] if opts.group is not None else None
    return BackupResult(snap, [], [], group)
