"""Verify a snapshot: re-read its data, check every blob and every file's SHA-256, optionally
compare with a live directory; or a deterministic, rotating sample of its files.

Every selected file's blobs are read, authenticated, decoded (delta chains resolved) and
hash-checked against their ids, and the concatenation's SHA-256 and size are compared with the
manifest (what ``sha256sum`` of the original file printed). With ``against``, the live tree is
compared too: files of the snapshot missing there, files whose size or SHA-256 differ, symlinks
with another target, and files there that the snapshot lacks.

Sampling: a file belongs to bucket ``BLAKE2b(path) mod n``; a sampled run checks one bucket. The
caller rotates the bucket from run to run (``api.Repository.verify`` keeps the state), so ``n``
runs check every file of an unchanged snapshot.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.errors import ColdDataError, WeightvaultError
from weightvault.ops.progress import ProgressCallback, Reporter
from weightvault.repository.blobcache import BlobCache
from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot

__all__ = ["VerifyResult", "bucket_of", "verify_snapshot"]

_READ = 4 * 1024 * 1024


@dataclass
class VerifyResult:
    snapshot: str
    files: int = 0  # files checked
    bytes: int = 0
    blobs: int = 0
    sample: tuple[int, int] | None = None  # (bucket, buckets) of a sampled run
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (path, what is wrong) in the repository
    missing: list[str] = field(default_factory=list)  # --against: in the snapshot, not in the live tree
    changed: list[str] = field(default_factory=list)  # --against: content, size, type or target differs
    extra: list[str] = field(default_factory=list)  # --against: in the live tree, not in the snapshot
    coverage: float | None = None  # sampled runs: share of buckets verified so far
    cold: list[str] = field(default_factory=list)  # not verified: their data is in an offline storage class

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.missing or self.changed or self.extra)


def bucket_of(path: bytes, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(path, digest_size=8).digest(), "little") % buckets


def verify_snapshot(
    repo: Repository,
    snap: Snapshot,
    against: str | os.PathLike[str] | None = None,
    sample: tuple[int, int] | None = None,
    progress: ProgressCallback | None = None,
) -> VerifyResult:
    """Check ``snap`` (see the module docstring). Problems are collected, not raised."""
    res = VerifyResult(snap.id, sample=sample)
    nodes = list(iter_manifest(snap.tree, repo.load_blob))
    chosen = [n for n in nodes if sample is None or bucket_of(n.path, sample[1]) == sample[0]]
    files = [n for n in chosen if n.type == "file"]
    reporter = Reporter(progress, "verify")
    reporter.set_totals(len(files), sum(n.size for n in files))
    cache = BlobCache(repo)
    seen: set[bytes] = set()
    for n in files:
        _check_file(n, cache, seen, res)
        reporter.add(files=1, nbytes=n.size)
    reporter.done()
    res.blobs = len(seen)
    if against is not None:
        _compare_live(Path(against), snap, nodes, chosen, res, sample)
    return res


def _check_file(n: Node, cache: BlobCache, seen: set[bytes], res: VerifyResult) -> None:
    path = n.path.decode("utf-8", "replace")
    sha, size = hashlib.sha256(), 0
    try:
        for b in n.blobs:
            data = cache.load(b)
            seen.add(b)
            sha.update(data)
            size += len(data)
    except ColdDataError:
        res.cold.append(path)  # costs money and hours to read: skipped, never taken for damage
        return
    except WeightvaultError as exc:
        res.damaged.append((path, exc.message))
        return
    res.files += 1
    res.bytes += size
    if size != n.size:
        res.damaged.append((path, f"its data is {size} bytes, the manifest says {n.size}"))
    elif n.sha256 is not None and sha.hexdigest() != n.sha256:
        res.damaged.append((path, "SHA-256 of its data differs from the manifest"))


def _live_path(root: Path, snap: Snapshot, rel: bytes) -> Path:
    """Where a snapshot path lives under ``root``: with one source path, ``root`` stands for it."""
    parts = rel.split(b"/")
    if len(snap.paths) == 1:
        parts = parts[1:]
    return Path(os.fsdecode(os.path.join(os.fsencode(root), *parts))) if parts else root


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            h.update(chunk)
    return h.hexdigest()


def _compare_live(root: Path, snap: Snapshot, nodes: list[Node], chosen: list[Node], res: VerifyResult,
                  sample: tuple[int, int] | None) -> None:
    for n in chosen:
        live = _live_path(root, snap, n.path)
        shown = n.path.decode("utf-8", "replace")
        try:
            st = os.lstat(live)
        except FileNotFoundError:
            res.missing.append(shown)
            continue
        if n.type == "dir":
            if not stat.S_ISDIR(st.st_mode):
                res.changed.append(shown)
        elif n.type == "symlink":
            if not stat.S_ISLNK(st.st_mode) or os.fsencode(os.readlink(live)) != n.target:
                res.changed.append(shown)
        elif not stat.S_ISREG(st.st_mode) or st.st_size != n.size or _sha256_file(live) != n.sha256:
            res.changed.append(shown)
    known = {_live_path(root, snap, n.path) for n in nodes}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p in known:
                continue
            rel = os.fsencode(p.relative_to(root))
            full = (os.fsencode(os.path.basename(snap.paths[0])) + b"/" + rel) if len(snap.paths) == 1 else rel
            if sample is None or bucket_of(full, sample[1]) == sample[0]:
                res.extra.append(full.decode("utf-8", "replace"))
    res.missing.sort()
    res.changed.sort()
    res.extra.sort()
