"""Backup: walk sources, chunk and store changed files, write the manifest, commit a snapshot.

Pipeline: the calling thread walks, reads and chunks (FastCDC runs without the GIL) and hashes the
whole file (SHA-256); a thread pool computes blob ids, compresses, encrypts and fills packs
(BLAKE3, zstd and ChaCha20 all release the GIL), so both cores are busy. At most ``2 * workers + 2``
chunks are in flight, which bounds memory whatever the file size.

Files whose size, mtime, ctime and inode match the parent snapshot (and whose blobs are all
indexed) are not read again. A file that changes while being read (re-stat differs) is re-read up
to ``MAX_REREADS`` times, then stored as read and reported in ``warnings``. Unreadable files are
skipped and reported in ``errors``; the snapshot is still committed.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from weightvault import __version__
from weightvault.backends.base import FileType
from weightvault.chunking.registry import SplitterRegistry, default_registry
from weightvault.errors import NoSpaceError, ObjectNotFoundError, SnapshotNotFoundError, UsageError
from weightvault.ops.delta_bases import BaseFinder
from weightvault.ops.groups import Group, commit_group, validate_group_args
from weightvault.ops.progress import ProgressCallback, Reporter
from weightvault.ops.walk import Entry, WalkError, walk_source
from weightvault.repository.manifest import ManifestWriter, Node, TensorPart, iter_manifest
from weightvault.repository.repo import DeltaBase, Repository
from weightvault.repository.snapshots import Snapshot
from weightvault.types import BlobType

__all__ = ["MAX_REREADS", "BackupOptions", "BackupResult", "backup", "find_parent"]

MAX_REREADS = 2


@dataclass
class BackupOptions:
    tags: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    parent: str | None = None  # snapshot id; None: newest with the same host and paths
    force: bool = False  # re-read every file
    host: str | None = None
    time: datetime | None = None
    workers: int = 0  # 0: one per CPU
    progress: ProgressCallback | None = None
    registry: SplitterRegistry | None = None
    min_free: float = 0.10  # refuse when the repository's storage would keep less free than this fraction
    group: str | None = None  # sharded checkpoints: this backup is rank ``rank`` of ``world_size``
    rank: int | None = None
    world_size: int | None = None
    includes: list[str] = field(default_factory=list)  # non-empty: only files matching one of these globs
    lock_until: datetime | None = None  # retention lock: forget refuses to remove the snapshot before then


@dataclass
class BackupResult:
    snapshot: Snapshot
    errors: list[tuple[str, str]]
    warnings: list[tuple[str, str]]
    group: Group | None = None  # with --group: the group's state after this rank committed


def _utc(t: datetime | None) -> datetime:
    """Snapshot times are stored in UTC; a naive ``t`` is taken as UTC (as ``@TIME`` specs are)."""
    if t is None:
        return datetime.now(UTC)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _root_name(abs_path: bytes) -> bytes:
    name = os.path.basename(abs_path.rstrip(b"/"))
    return name or b"ROOT"


def find_parent(repo: Repository, host: str, paths: list[str], rank: int | None = None) -> Snapshot | None:
    """The newest snapshot with the same host and paths (and, for a rank of a group, the same rank)."""
    cands = [
        s for s in repo.snapshots() if s.host == host and sorted(s.paths) == sorted(paths) and s.group_rank == rank
    ]
    return cands[-1] if cands else None


def _unchanged(prev: Node | None, st: os.stat_result, repo: Repository) -> bool:
    return (
        prev is not None
        and prev.type == "file"
        and prev.size == st.st_size
        and prev.mtime_ns == st.st_mtime_ns
        and prev.ctime_ns == st.st_ctime_ns
        and prev.ino == st.st_ino
        and prev.sha256 is not None
        and all(repo.has_blob(b) for b in prev.blobs)
    )


WARN_USED = 0.80  # warn when a backup may take the repository's storage past this fraction used


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def check_space(location: str, free: int, total: int, estimate: int, min_free: float) -> list[tuple[str, str]]:
    """Before a backup: ``estimate`` bytes (new and changed files, uncompressed: an upper bound) must
    leave at least ``min_free`` of ``total`` free. Raises NoSpaceError (nothing written yet) if not;
    returns a warning if this backup may take the storage past ``WARN_USED`` full."""
    after = free - estimate
    if after < min_free * total:
        raise NoSpaceError(
            f"not enough space on {location}: this backup may add up to {_mib(estimate)} (new and changed files,"
            f" before compression), leaving {_mib(max(after, 0))} free of {_mib(total)}; at least"
            f" {min_free:.0%} must stay free",
            hint="free space there or back up less; --min-free PCT lowers the reserve (0 disables this check)",
        )
    if after < (1 - WARN_USED) * total <= free:
        return [(location, f"this backup may take the repository's storage past {WARN_USED:.0%} full"
                           f" ({_mib(after)} of {_mib(total)} free)")]
    return []


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns, b.st_ino)


def _meta(node: Node, st: os.stat_result) -> Node:
    node.mode = stat.S_IMODE(st.st_mode)
    node.mtime_ns, node.ctime_ns, node.ino = st.st_mtime_ns, st.st_ctime_ns, st.st_ino
    node.uid, node.gid = st.st_uid, st.st_gid
    return node


class _Saver:
    """Stores chunks in a worker pool (compress, encrypt, pack) with a bound on chunks in flight.

    Blob ids are computed by the caller, so a file's node is complete as soon as it has been read
    and the next file can be read while its chunks are still being stored. A failed store is
    raised by the next ``submit`` or by ``close``, so the snapshot is never committed after one.
    """

    def __init__(self, repo: Repository, workers: int) -> None:
        self.repo = repo
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="weightvault-backup")
        self.slots = threading.BoundedSemaphore(2 * workers + 2)
        self._failed: list[BaseException] = []

    def _done(self, fut: Future[tuple[bytes, bool]]) -> None:
        self.slots.release()
        exc = fut.exception()
        if exc is not None:
            self._failed.append(exc)

    def submit(self, data: bytes, dtype: str | None = None, delta: DeltaBase | None = None) -> bytes:
        """Queue ``data`` for storing (``dtype``: element type hint for the codec; ``delta``: a
        candidate delta base); returns its blob id."""
        if self._failed:
            raise self._failed[0]
        blob_id = self.repo.key.blob_id(data)
        self.slots.acquire()
        try:
            fut = self.pool.submit(self.repo.save_blob, BlobType.DATA, data, blob_id, dtype, delta)
        except BaseException:
            self.slots.release()
            raise
        fut.add_done_callback(self._done)
        return blob_id

    def close(self) -> None:
        """Wait for every queued chunk; raise the first storing error, if any."""
        self.pool.shutdown(wait=True)
        if self._failed:
            raise self._failed[0]


def _read_file(
    e: Entry,
    saver: _Saver,
    registry: SplitterRegistry,
    repo: Repository,
    on_bytes: Callable[[int], None],
    finder: BaseFinder,
) -> tuple[Node, bool]:
    """Chunk and store one file. Returns its node and whether it changed while being read."""
    fd = os.open(e.abs, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as raw:
        f: BinaryIO = raw
        before = os.fstat(fd)
        head = os.pread(fd, 65536, 0)
        splitter = registry.select(os.path.basename(e.rel), head)
        sha = hashlib.sha256()
        blobs: list[bytes] = []
        tensors: list[TensorPart | None] = []
        offsets: list[int] = []
        bases: dict[TensorPart, DeltaBase] | None = None
        size = 0
        for chunk in splitter.split(f, repo.chunker):
            sha.update(chunk.data)
            size += len(chunk.data)
            part: TensorPart | None = None
            delta = None
            if chunk.tensor is not None:
                part = (chunk.tensor, chunk.part, chunk.dtype)
                if bases is None:
                    bases = finder.bases_for(e.rel)
                delta = bases.get(part)
            blobs.append(saver.submit(chunk.data, chunk.dtype, delta))
            tensors.append(part)
            offsets.append(chunk.offset)
            on_bytes(len(chunk.data))
        after = os.fstat(fd)
    try:
        now = os.lstat(e.abs)
        replaced = now.st_ino != after.st_ino
    except OSError:
        replaced = True
    node = Node(path=e.rel, type="file", size=size, blobs=blobs, sha256=sha.hexdigest())
    if any(t is not None for t in tensors):
        node.tensors = tensors
    changed = size != after.st_size or not _same_version(before, after) or replaced
    if not changed:
        finder.note(e.rel, e.abs, node, offsets)
    return _meta(node, after), changed


def backup(repo: Repository, sources: list[str], opts: BackupOptions | None = None) -> BackupResult:
    """Back up ``sources`` into ``repo`` (the caller holds a shared lock). Returns the committed snapshot."""
    opts = opts or BackupOptions()
    if not sources:
        raise UsageError("nothing to back up: give at least one path")
    validate_group_args(opts.group, opts.rank, opts.world_size)
    abs_paths = [os.path.abspath(os.fsencode(p)) for p in sources]
    roots: dict[bytes, bytes] = {}
    for p in abs_paths:
        if not os.path.lexists(p):
            raise UsageError(f"source {os.fsdecode(p)} does not exist")
        try:
            p.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(
                f"source path {os.fsdecode(p)!r} is not valid UTF-8",
                hint="back up its parent directory instead (names inside a source may be any bytes)",
            ) from None
        name = _root_name(p)
        if name in roots and roots[name] != p:
            raise UsageError(
                f"sources {os.fsdecode(roots[name])} and {os.fsdecode(p)} share the name {os.fsdecode(name)!r}",
                hint="back them up in separate snapshots or from a common parent directory",
            )
        roots[name] = p
    path_strs = sorted(os.fsdecode(p) for p in roots.values())
    host = opts.host or socket.gethostname()
    registry = opts.registry or default_registry()
    workers = opts.workers or os.cpu_count() or 2

    repo.recover_unindexed_packs()
    parent: Snapshot | None = None
    if opts.parent:
        try:
            parent = repo.load_snapshot(opts.parent)
        except ObjectNotFoundError as exc:  # a damaged parent raises its own IntegrityError
            raise SnapshotNotFoundError(f"parent snapshot {opts.parent} not found") from exc
    elif not opts.force:
        parent = find_parent(repo, host, path_strs, opts.rank if opts.group else None)
    previous: dict[bytes, Node] = {}
    if parent is not None and not opts.force:
        previous = {n.path: n for n in iter_manifest(parent.tree, repo.load_blob) if n.type == "file"}
    finder = BaseFinder(repo, previous, roots)

    reporter = Reporter(opts.progress, "backup")
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    free, total = repo.backend.free_space(), repo.backend.total_space()
    space_check = opts.min_free > 0 and free is not None and bool(total)
    if opts.progress is not None or space_check:
        tf = tb = changed = 0
        for name, p in sorted(roots.items()):
            for e in walk_source(p, name, opts.excludes, opts.exclude_caches, opts.includes):
                if isinstance(e, Entry) and stat.S_ISREG(e.st.st_mode):
                    tf, tb = tf + 1, tb + e.st.st_size
                    if not _unchanged(previous.get(e.rel), e.st, repo):
                        changed += e.st.st_size
        reporter.set_totals(tf, tb)
        if space_check:
            assert free is not None and total is not None
            warnings += check_space(repo.backend.location, free, total, changed, opts.min_free)

    totals = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0, "files_new": 0, "files_changed": 0,
              "files_unmodified": 0, "bytes_read": 0}
    start = time.monotonic()
    blobs_before, stored_before = repo.stats_new_blobs, repo.stats_new_stored
    writer = ManifestWriter()
    saver = _Saver(repo, workers)
    try:
        for name, p in sorted(roots.items()):
            for e in walk_source(p, name, opts.excludes, opts.exclude_caches, opts.includes):
                if isinstance(e, WalkError):
                    errors.append((os.fsdecode(e.rel), e.reason))
                    continue
                mode = e.st.st_mode
                if stat.S_ISDIR(mode):
                    writer.add(_meta(Node(path=e.rel, type="dir"), e.st))
                    totals["dirs"] += 1
                elif stat.S_ISLNK(mode):
                    try:
                        target = os.readlink(e.abs)
                    except OSError as exc:
                        errors.append((os.fsdecode(e.rel), exc.strerror or str(exc)))
                        continue
                    writer.add(_meta(Node(path=e.rel, type="symlink", target=target), e.st))
                    totals["symlinks"] += 1
                elif stat.S_ISREG(mode):
                    prev = previous.get(e.rel)
                    if _unchanged(prev, e.st, repo):
                        assert prev is not None
                        node = _meta(Node(path=e.rel, type="file", size=prev.size, blobs=prev.blobs,
                                          sha256=prev.sha256, tensors=prev.tensors), e.st)
                        finder.note(e.rel, e.abs, node, None)
                        totals["files_unmodified"] += 1
                        reporter.add(files=1, nbytes=e.st.st_size, current=os.fsdecode(e.rel))
                    else:
                        node_or_none = _backup_file(
                            e, saver, registry, repo, reporter, errors, warnings, totals, finder
                        )
                        if node_or_none is None:
                            continue
                        node = node_or_none
                        totals["files_changed" if prev is not None else "files_new"] += 1
                        reporter.add(files=1, current=os.fsdecode(e.rel))
                    writer.add(node)
                    totals["files"] += 1
                    totals["bytes"] += node.size
                else:
                    warnings.append((os.fsdecode(e.rel), "special file (device, fifo or socket) not backed up"))
        saver.close()  # every chunk stored (or the first storing error raised)
    except BaseException:
        writer.close()
        saver.pool.shutdown(wait=True)
        raise
    tree = writer.finish(lambda data: repo.save_blob(BlobType.TREE, data)[0])
    repo.flush()  # packs, then index: everything the snapshot references is durable
    reporter.done()
    summary: dict[str, float] = dict(totals)
    summary.update(
        duration_s=round(time.monotonic() - start, 3),
        blobs_added=repo.stats_new_blobs - blobs_before,
        stored_bytes_added=repo.stats_new_stored - stored_before,
        errors=len(errors),
    )
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    snap = Snapshot(
        time=_utc(opts.time).isoformat(),
        host=host,
        user=user,
        paths=path_strs,
        tags=list(opts.tags),
        tree=tree,
        parent=parent.id if parent else None,
        summary=summary,
        program_version=__version__,
        group=(
            {"id": opts.group, "rank": opts.rank, "world_size": opts.world_size} if opts.group is not None else None
        ),
        locked_until=_utc(opts.lock_until).isoformat() if opts.lock_until is not None else None,
    )
    repo.save_snapshot(snap)
    if opts.lock_until is not None and repo.backend.supports_retention:
        retain_snapshot(repo, snap, _utc(opts.lock_until))
    group = commit_group(repo, opts.group)[0] if opts.group is not None else None
    return BackupResult(snap, errors, warnings, group)


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


def _backup_file(
    e: Entry,
    saver: _Saver,
    registry: SplitterRegistry,
    repo: Repository,
    reporter: Reporter,
    errors: list[tuple[str, str]],
    warnings: list[tuple[str, str]],
    totals: dict[str, int],
    finder: BaseFinder,
) -> Node | None:
    """Read a new or changed file, re-reading it if it changes meanwhile; None if unreadable."""
    rel = os.fsdecode(e.rel)
    for attempt in range(MAX_REREADS + 1):
        try:
            node, changed = _read_file(e, saver, registry, repo, lambda n: reporter.add(nbytes=n), finder)
        except OSError as exc:
            errors.append((rel, exc.strerror or str(exc)))
            return None
        totals["bytes_read"] += node.size
        if not changed:
            return node
        if attempt == MAX_REREADS:
            warnings.append(
                (rel, f"changed while being read ({MAX_REREADS + 1} attempts); stored the bytes of the last read")
            )
    return node
