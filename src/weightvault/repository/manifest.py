"""Snapshot manifests: every node of a snapshot as JSON lines, stored as TREE blobs.

The manifest stream is one JSON object per line, in depth-first order with each directory before
its children and siblings sorted by name bytes. The stream is cut with content-defined chunking so
that unchanged parts of consecutive snapshots deduplicate. Node fields::

    path | path_b64   relative path, "/"-separated, never absolute, never "..", no empty parts
    type             "file" | "dir" | "symlink"
    mode             permission bits (st_mode & 0o7777)
    mtime_ns, ctime_ns, ino, uid, gid
    size             bytes (files)
    blobs            list of hex blob ids whose plaintexts concatenate to the file (files)
    sha256           hex SHA-256 of the whole file (files)
    tensors          optional (files cut by a format-aware splitter): a list parallel to ``blobs``;
                     entry i is null or [tensor name, part, dtype] for blob i. Backups use it to
                     find the earlier version of a tensor chunk as a delta base; restores ignore it.
    target|target_b64  link target (symlinks)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from weightvault.chunking.cdc import CdcSplitter
from weightvault.chunking.registry import ChunkerParams
from weightvault.errors import IntegrityError, UnsupportedFormatError
from weightvault.format import objects

__all__ = ["MANIFEST_CHUNKER", "Node", "TensorPart", "iter_manifest", "write_manifest"]

TensorPart = tuple[str, int, str | None]  # tensor name, sub-chunk index, dtype

MANIFEST_CHUNKER = ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=512 * 1024, seed=0)
_TYPES = ("file", "dir", "symlink")


@dataclass(slots=True)
class Node:
    path: bytes
    type: str
    mode: int = 0o644
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    blobs: list[bytes] = field(default_factory=list)
    sha256: str | None = None
    target: bytes | None = None
    tensors: list[TensorPart | None] | None = None

    def to_doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "mode": self.mode, "mtime_ns": self.mtime_ns}
        objects.put_bytes_field(d, "path", self.path)
        d.update(ctime_ns=self.ctime_ns, ino=self.ino, uid=self.uid, gid=self.gid)
        if self.type == "file":
            d.update(size=self.size, blobs=[b.hex() for b in self.blobs], sha256=self.sha256)
            if self.tensors is not None and len(self.tensors) == len(self.blobs):
                d["tensors"] = [list(t) if t is not None else None for t in self.tensors]
        elif self.type == "symlink" and self.target is not None:
            objects.put_bytes_field(d, "target", self.target)
        return d

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Node:
        node = cls._from_doc(d)
        if node.tensors is not None and len(node.tensors) != len(node.blobs):
            node.tensors = None
        return node

    @classmethod
    def _from_doc(cls, d: dict[str, Any]) -> Node:
        path = objects.get_bytes_field(d, "path")
        t = d.get("type")
        if path is None:
            raise IntegrityError(f"manifest entry has no path: {d!r:.200}")
        if t not in _TYPES:
            raise UnsupportedFormatError(f"manifest entry has unknown type {t!r}; upgrade weightvault")
        return cls(
            path=path,
            type=str(t),
            mode=int(d.get("mode", 0)) & 0o7777,
            mtime_ns=int(d.get("mtime_ns", 0)),
            ctime_ns=int(d.get("ctime_ns", 0)),
            ino=int(d.get("ino", 0)),
            uid=int(d.get("uid", 0)),
            gid=int(d.get("gid", 0)),
            size=int(d.get("size", 0)),
            blobs=[bytes.fromhex(h) for h in d.get("blobs", [])],
            sha256=d.get("sha256"),
            target=objects.get_bytes_field(d, "target"),
            tensors=_tensors(d.get("tensors")),
        )


def _tensors(raw: object) -> list[TensorPart | None] | None:
    """Parse the optional ``tensors`` list; anything malformed is dropped (it is only a hint)."""
    if not isinstance(raw, list):
        return None
    out: list[TensorPart | None] = []
    for t in raw:
        if t is None:
            out.append(None)
        elif (
            isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) and isinstance(t[1], int)
            and isinstance(t[2], str | None)
        ):
            out.append((t[0], t[1], t[2]))
        else:
            return None
    return out


class ManifestWriter:
    """Spools JSON lines to a temporary file (bounded memory), then stores them as TREE blobs."""

    def __init__(self) -> None:
        self._f = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115

    def add(self, node: Node) -> None:
        self._f.write(objects.dumps(node.to_doc()) + b"\n")

    def finish(self, save_tree_blob: Callable[[bytes], bytes]) -> list[bytes]:
        """Store the stream as TREE blobs and close the spool file (also when saving fails)."""
        try:
            self._f.seek(0)
            return [save_tree_blob(c.data) for c in CdcSplitter().split(self._f, MANIFEST_CHUNKER)]  # type: ignore[arg-type]
        finally:
            self._f.close()

    def close(self) -> None:
        """Discard the stream (an aborted backup). Idempotent."""
        self._f.close()


def write_manifest(nodes: Iterator[Node], save_tree_blob: Callable[[bytes], bytes]) -> list[bytes]:
    w = ManifestWriter()
    for n in nodes:
        w.add(n)
    return w.finish(save_tree_blob)


def iter_manifest(tree: list[bytes], load_tree_blob: Callable[[bytes], bytes]) -> Iterator[Node]:
    """Yield the nodes of a manifest stream, loading its TREE blobs one at a time."""
    carry = b""
    for blob_id in tree:
        data = carry + load_tree_blob(blob_id)
        lines = data.split(b"\n")
        carry = lines.pop()
        for line in lines:
            if line:
                yield _parse_line(line)
    if carry:
        raise IntegrityError("manifest stream does not end with a newline (truncated tree)")


def _parse_line(line: bytes) -> Node:
    try:
        d = json.loads(line)
    except ValueError as exc:
        raise IntegrityError(f"manifest line is not JSON: {line[:120]!r}") from exc
    if not isinstance(d, dict):
        raise IntegrityError("manifest line is not an object")
    return Node.from_doc(d)
