"""Reading a snapshot's files in place, without restoring them (``Repository.open_files``).

    with repo.open_files("latest:run=exp7") as files:
        meta = files.read("step-100/.metadata")
        head = files.read("step-100/__0_0.distcp", offset=0, length=4096)

The context holds a shared lock (a prune that starts meanwhile keeps every pack the snapshot
needs until it ends); each read loads, authenticates and hash-checks only the blobs it touches,
through one blob cache. Paths are the snapshot's tree paths as ``ls`` prints them, without a
leading slash. The non-executing readers of checkpoint formats a DCP reader needs are here too,
so that integrations reach them through the public API: ``parse_dcp_metadata``,
``read_tensor_archive`` and ``read_plain_object``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from weightvault.chunking.dcp_metadata import DcpItem, DcpMetadata, parse_dcp_metadata
from weightvault.chunking.tensor_archive import ArchiveTensor, read_plain_object, read_tensor_archive
from weightvault.errors import UsageError
from weightvault.ops.validate import StoredFile
from weightvault.repository.blobcache import BlobCache
from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import Repository as Engine
from weightvault.repository.snapshots import Snapshot

__all__ = ["ArchiveTensor", "DcpItem", "DcpMetadata", "SnapshotFiles", "parse_dcp_metadata", "read_plain_object",
           "read_tensor_archive"]

CACHE_BYTES = 64 * 1024 * 1024


class SnapshotFiles:
    """The regular files of one snapshot, readable while the ``open_files`` context lasts. Each
    file is opened once (its blob sizes looked up once) and kept open for later reads; one thread
    at a time."""

    def __init__(self, engine: Engine, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._engine = engine
        self._cache = BlobCache(engine, CACHE_BYTES)
        self._open: dict[str, StoredFile] = {}
        self._nodes: dict[str, Node] = {
            os.fsdecode(n.path): n for n in iter_manifest(snapshot.tree, engine.load_blob) if n.type == "file"}

    def paths(self) -> list[str]:
        """Every regular file's path, in tree order."""
        return list(self._nodes)

    def size(self, path: str) -> int:
        return self._node(path).size

    def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes (default: to the end) from ``offset``; UsageError for a path the
        snapshot does not hold or a range outside the file."""
        node = self._node(path)
        end = node.size if length is None else offset + length
        if offset < 0 or end < offset or end > node.size:
            raise UsageError(f"{path}: bytes {offset}..{end} lie outside its {node.size} bytes")
        f = self._open.get(path.strip("/"))
        if f is None:
            f = self._open[path.strip("/")] = StoredFile(self._engine, node, self._cache.load_blob)
        f.seek(offset)
        return f.read(end - offset)

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def _node(self, path: str) -> Node:
        node = self._nodes.get(path.strip("/"))
        if node is None:
            raise UsageError(f"snapshot {self.snapshot.short_id} holds no file {path!r}",
                             hint=f"`weightvault ls {self.snapshot.short_id}` lists its files")
        return node


@contextlib.contextmanager
def open_snapshot_files(engine: Engine, snapshot: Snapshot, still_there: Callable[[], None]) -> Iterator[SnapshotFiles]:
    """The body of ``Repository.open_files``, run inside its shared session: the snapshot is
    checked to be still there once its lock is held (a prune that starts later keeps its data
    until the session ends, so later reads need no check)."""
    still_there()
    files = SnapshotFiles(engine, snapshot)
    try:
        yield files
    finally:
        files.close()
