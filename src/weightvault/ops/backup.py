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
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from weightvault import __version__
from weightvault.chunking.registry import SplitterRegistry, default_registry
from weightvault.errors import NoSpaceError, ObjectNotFoundError, SnapshotNotFoundError, UsageError
from weightvault.ops.delta_bases import BaseFinder
from weightvault.ops.groups import Group, commit_group, validate_group_args
from weightvault.ops.progress import ProgressCallback, Reporter
from weightvault.ops.retain import retain_snapshot
from weightvault.ops.stages import Stages
from weightvault.ops.store import ChunkSaver, store_stream
from weightvault.ops.walk import Entry, WalkError, reading_order, sibling_files, walk_source
from weightvault.repository.manifest import ManifestWriter, Node, iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot
from weightvault.types import BlobType

__all__ = ["MAX_REREADS", "BackupOptions", "BackupResult", "ChunkSaver", "backup", "commit_snapshot", "find_parent",
           "store_stream"]  # ChunkSaver and store_stream live in ops/store.py

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
    # the paths to record instead of the sources' own (one per source, same base names): a staged
    # copy of a checkpoint is recorded as the directory it was pinned from
    record_as: list[str] | None = None


@dataclass
class BackupResult:
    snapshot: Snapshot
    errors: list[tuple[str, str]]
    warnings: list[tuple[str, str]]
    group: Group | None = None  # with --group: the group's state after this rank committed
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, over all threads (ops.stages)


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


def _read_file(
    e: Entry,
    saver: ChunkSaver,
    registry: SplitterRegistry,
    repo: Repository,
    on_bytes: Callable[[int], None],
    finder: BaseFinder,
) -> tuple[Node, bool, str | None]:
    """Chunk and store one file. Returns its node, whether it changed while being read, and why a
    file that looks like a model was stored with generic CDC (None otherwise)."""
    fd = os.open(e.abs, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as raw:
        before = os.fstat(fd)
        min_size = repo.chunker.min_size
        small = before.st_size < min_size
        head = os.pread(fd, max(65536, min_size) if small else 65536, 0)
        # a file shorter than the smallest chunk is read whole by that one call (a short read of
        # a regular file is its end) and stored from ``head``, without being read again
        whole = small and len(head) < min_size
        node, offsets, why = store_stream(None if whole else raw, head, e.rel, saver, registry, repo, on_bytes, finder)
        after = os.fstat(fd)
    try:
        now = os.lstat(e.abs)
        replaced = now.st_ino != after.st_ino
    except OSError:
        replaced = True
    changed = node.size != after.st_size or not _same_version(before, after) or replaced
    if not changed:
        finder.note(e.rel, e.abs, node, offsets)
    return _meta(node, after), changed, why


def backup(repo: Repository, sources: list[str], opts: BackupOptions | None = None) -> BackupResult:
    """Back up ``sources`` into ``repo`` (the caller holds a shared lock). Returns the committed snapshot."""
    opts = opts or BackupOptions()
    if not sources:
        raise UsageError("nothing to back up: give at least one path")
    validate_group_args(opts.group, opts.rank, opts.world_size)
    given = [os.path.abspath(os.fsencode(p)) for p in sources]
    missing = [(os.fsdecode(p), "does not exist") for p in given if not os.path.lexists(p)]
    if len(missing) == len(given):
        raise UsageError(f"nothing to back up: {', '.join(p for p, _ in missing)} "
                         f"{'does' if len(missing) == 1 else 'do'} not exist",
                         hint="check the path (a mount that is not there yet?)")
    roots = _roots([p for p in given if os.path.lexists(p)])
    path_strs = sorted(os.fsdecode(p) for p in roots.values())
    if opts.record_as is not None:
        path_strs = _recorded(given, opts.record_as, roots)
    host = opts.host or socket.gethostname()
    repo.recover_unindexed_packs()
    parent = _parent(repo, opts, host, path_strs)
    previous: dict[bytes, Node] = {}
    if parent is not None:  # with --force: for reporting and delta bases only, every file is read
        previous = {n.path: n for n in iter_manifest(parent.tree, repo.load_blob) if n.type == "file"}
    run = _Run(repo, opts, roots, previous, Reporter(opts.progress, "backup"), BaseFinder(repo, previous, roots))
    run.errors += missing  # listed first; the snapshot holds the sources that exist (exit 3)
    run.prescan()
    start = time.monotonic()
    blobs_before, stored_before = repo.stats_new_blobs, repo.stats_new_stored
    tree = run.store_tree()
    with run.stages("flush"):
        repo.flush()  # packs, then index: everything the snapshot references is durable
    run.reporter.done()
    summary: dict[str, float] = dict(run.totals)
    summary.update(duration_s=round(time.monotonic() - start, 3), blobs_added=repo.stats_new_blobs - blobs_before,
                   stored_bytes_added=repo.stats_new_stored - stored_before, errors=len(run.errors))
    with run.stages("commit"):
        snap = commit_snapshot(repo, opts, host, path_strs, tree, parent, summary)
        group = commit_group(repo, opts.group)[0] if opts.group is not None else None
    return BackupResult(snap, run.errors, run.warnings, group, run.stages.as_dict())


def commit_snapshot(repo: Repository, opts: BackupOptions, host: str, paths: list[str], tree: list[bytes],
                    parent: Snapshot | None, summary: dict[str, float]) -> Snapshot:
    """Save the snapshot of a stored tree (every blob durable: ``repo.flush()`` came first), with
    its retention lock on the storage too; a rank of a group still needs ``commit_group``."""
    snap = Snapshot(
        time=_utc(opts.time).isoformat(), host=host, user=_user(), paths=paths, tags=list(opts.tags), tree=tree,
        parent=parent.id if parent else None, summary=summary, program_version=__version__,
        group={"id": opts.group, "rank": opts.rank, "world_size": opts.world_size} if opts.group is not None else None,
        locked_until=_utc(opts.lock_until).isoformat() if opts.lock_until is not None else None,
    )
    repo.save_snapshot(snap)
    if opts.lock_until is not None and repo.backend.supports_retention:
        retain_snapshot(repo, snap, _utc(opts.lock_until))
    return snap


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _recorded(given: list[bytes], record_as: list[str], roots: dict[bytes, bytes]) -> list[str]:
    """The paths a snapshot records for sources backed up from elsewhere (``record_as``)."""
    if len(record_as) != len(given) or len(roots) != len(given):
        raise UsageError("record_as needs one path per source, and every source must exist")
    out = []
    for src, rec in zip(given, record_as, strict=True):
        rec_abs = os.path.abspath(rec)
        if os.path.basename(rec_abs) != os.fsdecode(os.path.basename(src)):
            raise UsageError(f"{os.fsdecode(src)} cannot be recorded as {rec_abs}: the base names differ")
        out.append(rec_abs)
    return sorted(out)


def _roots(abs_paths: list[bytes]) -> dict[bytes, bytes]:
    """Each source's name in the snapshot -> its absolute path (UsageError for a path that is not
    UTF-8, or two sources with the same name)."""
    roots: dict[bytes, bytes] = {}
    for p in abs_paths:
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
    return roots


def _parent(repo: Repository, opts: BackupOptions, host: str, path_strs: list[str]) -> Snapshot | None:
    if opts.parent:
        try:
            return repo.load_snapshot(opts.parent)
        except ObjectNotFoundError as exc:  # a damaged parent raises its own IntegrityError
            raise SnapshotNotFoundError(f"parent snapshot {opts.parent} not found") from exc
    return find_parent(repo, host, path_strs, opts.rank if opts.group else None)


@dataclass
class _Run:
    """One backup's walk: what it found, stored, skipped and counted."""

    repo: Repository
    opts: BackupOptions
    roots: dict[bytes, bytes]
    previous: dict[bytes, Node]
    reporter: Reporter
    finder: BaseFinder
    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("files", "dirs", "symlinks", "bytes", "files_new", "files_changed", "files_unmodified", "bytes_read"), 0))
    stages: Stages = field(default_factory=Stages)
    registry: SplitterRegistry | None = None  # the splitters, made once per backup

    def walk(self) -> Iterator[Entry | WalkError]:
        for name, p in sorted(self.roots.items()):
            yield from walk_source(p, name, self.opts.excludes, self.opts.exclude_caches, self.opts.includes)

    def prescan(self) -> None:
        """With a progress display or a free-space check: count what the walk will read first."""
        backend = self.repo.backend
        free, total = backend.free_space(), backend.total_space()
        space_check = self.opts.min_free > 0 and free is not None and bool(total)
        if self.opts.progress is None and not space_check:
            return
        tf = tb = changed = 0
        for e in self.walk():
            if isinstance(e, Entry) and stat.S_ISREG(e.st.st_mode):
                tf, tb = tf + 1, tb + e.st.st_size
                if self.opts.force or not _unchanged(self.previous.get(e.rel), e.st, self.repo):
                    changed += e.st.st_size
        self.reporter.set_totals(tf, tb)
        if space_check:
            assert free is not None and total is not None
            self.warnings += check_space(backend.location, free, total, changed, self.opts.min_free)

    def store_tree(self) -> list[bytes]:
        """Walk the sources, store new data and the manifest; returns the manifest's tree blobs."""
        writer = ManifestWriter()
        saver = ChunkSaver(self.repo, self.opts.workers or os.cpu_count() or 2, self.stages)
        try:
            for batch in sibling_files(self.walk()):
                nodes = {i: self._node(batch[i], saver) for i in reading_order(batch)}
                for i in range(len(batch)):  # the manifest keeps the walk's order
                    node = nodes[i]
                    if node is not None:
                        writer.add(node)
            saver.close()  # every chunk stored (or the first storing error raised)
        except BaseException:
            writer.close()
            saver.abort()
            raise
        return writer.finish(lambda data: self.repo.save_blob(BlobType.TREE, data)[0])

    def _node(self, e: Entry | WalkError, saver: ChunkSaver) -> Node | None:
        if isinstance(e, WalkError):
            self.errors.append((os.fsdecode(e.rel), e.reason))
            return None
        mode = e.st.st_mode
        if stat.S_ISDIR(mode):
            self.totals["dirs"] += 1
            return _meta(Node(path=e.rel, type="dir"), e.st)
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(e.abs)
            except OSError as exc:
                self.errors.append((os.fsdecode(e.rel), exc.strerror or str(exc)))
                return None
            self.totals["symlinks"] += 1
            return _meta(Node(path=e.rel, type="symlink", target=target), e.st)
        if stat.S_ISREG(mode):
            return self._file(e, saver)
        self.warnings.append((os.fsdecode(e.rel), "special file (device, fifo or socket) not backed up"))
        return None

    def _file(self, e: Entry, saver: ChunkSaver) -> Node | None:
        prev = self.previous.get(e.rel)
        if not self.opts.force and _unchanged(prev, e.st, self.repo):
            assert prev is not None
            node = _meta(Node(path=e.rel, type="file", size=prev.size, blobs=prev.blobs, sha256=prev.sha256,
                              tensors=prev.tensors), e.st)
            self.finder.note(e.rel, e.abs, node, None)
            self.totals["files_unmodified"] += 1
            self.reporter.add(files=1, nbytes=e.st.st_size, current=os.fsdecode(e.rel))
        else:
            if self.registry is None:
                self.registry = self.opts.registry or default_registry()
            stored = _backup_file(e, saver, self.registry, self.repo, self.reporter, self.errors, self.warnings,
                                  self.totals, self.finder)
            if stored is None:
                return None
            node = stored
            same = (prev is not None and prev.sha256 == node.sha256 and prev.size == node.size  # --force
                    and prev.mtime_ns == node.mtime_ns and prev.ctime_ns == node.ctime_ns)
            self.totals["files_unmodified" if same else "files_changed" if prev is not None else "files_new"] += 1
            self.reporter.add(files=1, current=os.fsdecode(e.rel))
        self.totals["files"] += 1
        self.totals["bytes"] += node.size
        return node


def _backup_file(
    e: Entry,
    saver: ChunkSaver,
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
            node, changed, why = _read_file(e, saver, registry, repo, lambda n: reporter.add(nbytes=n), finder)
        except OSError as exc:
            errors.append((rel, exc.strerror or str(exc)))
            return None
        totals["bytes_read"] += node.size
        if why is not None and not changed:
            warnings.append((rel, f"looks like a model file but was stored with generic chunking (no tensor"
                             f" deltas, no float codecs): {why}"))
        if not changed:
            return node
        if attempt == MAX_REREADS:
            warnings.append(
                (rel, f"changed while being read ({MAX_REREADS + 1} attempts); stored the bytes of the last read")
            )
    return node
