"""Restore: write a snapshot (or part of it) under a target directory, safely.

Safety: every manifest path is validated before anything is written (no absolute paths, no "."
or ".." components, no empty components, no NUL); directories are walked with ``O_NOFOLLOW``
relative to directory file descriptors, so no symlink (planted in the snapshot or already in the
target) is ever followed; files are written to a temporary name, hash-checked, made durable and
only then renamed into place (many at a time with one ``syncfs``, ``ops.restore_durable``: small
files, and large ones written past the page cache; a large file written through it gets its own
fsync). Symlinks are created last and never written through.

Overwrite modes for paths that already exist in the target:
  error      (default) refuse, before writing anything, if an existing file differs
  never      keep existing files; restore only what is missing
  if-changed replace existing files whose content differs; leave identical ones alone
  always     replace everything
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from weightvault.errors import (
    NoMatchError,
    NoSpaceError,
    RestoreConflictError,
    UnsafePathError,
    UsageError,
)
from weightvault.ops.progress import ProgressCallback, Reporter
from weightvault.ops.restore_durable import DurableBatch, make_dirs_durable
from weightvault.ops.restore_file import (
    GROUP_BYTES,
    GROUP_FILE,
    GROUP_FILES,
    FileJobs,
    chown,
    file_digest,
    replace,
    tmp_name,
    write_file,
    write_group,
)
from weightvault.ops.restore_order import in_chain_order
from weightvault.ops.restore_tree import Dirs, Place, Tree
from weightvault.ops.stages import Stages
from weightvault.ops.walk import matches_any
from weightvault.repository.blobcache import BlobCache
from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot

__all__ = ["OVERWRITE_MODES", "RestoreOptions", "RestoreResult", "check_path", "restore"]

OverwriteMode = Literal["error", "never", "if-changed", "always"]
OVERWRITE_MODES: tuple[str, ...] = ("error", "never", "if-changed", "always")
_NO_SETUID = 0o1777  # the mode bits kept with ``no_setuid``
_FILES_IN_FLIGHT = 4  # file tasks at once; memory bound: 16 runs of at most 8 MiB, or 4 groups
_SHARED_BLOB_BYTES = 192 * 1024 * 1024  # plaintext kept for blobs the restore uses again


@dataclass
class RestoreOptions:
    includes: list[str] = field(default_factory=list)
    overwrite: OverwriteMode = "error"
    verify: bool = False  # re-read each file from disk after fsync and compare SHA-256
    workers: int = 0
    progress: ProgressCallback | None = None
    no_setuid: bool = False  # drop setuid/setgid bits (tar's --no-same-permissions for them, rsync's default)


@dataclass
class RestoreResult:
    """What a restore wrote. A file that cannot be restored fails the whole restore with an
    error (nothing partial is left under its name), so there is no list of per-file failures."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: int = 0
    verified: int = 0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, over all threads (ops.stages)


def check_path(path: bytes) -> None:
    """Raise UnsafePathError unless ``path`` is a relative path of names that can be created: no
    empty, ``.`` or ``..`` component, no NUL. Linear in the path's length (done in C: no list of
    components); names over 255 bytes are refused where the path is split (``restore_tree``)."""
    if not path or path.startswith(b"/") or b"\0" in path:
        raise UnsafePathError(f"snapshot entry {os.fsdecode(path)!r} is absolute or empty or holds a NUL;"
                              " refusing to restore")
    framed = b"/" + path + b"/"
    for bad in (b"//", b"/./", b"/../"):
        if bad in framed:
            what = os.fsdecode(bad.strip(b"/"))
            raise UnsafePathError(f"snapshot entry {os.fsdecode(path)!r} contains {what!r}; refusing to restore")


def _check_symlink(n: Node) -> None:
    target = n.target
    if not target or b"\0" in target:
        why = "an empty target" if not target else "a NUL in its target"
        raise UnsafePathError(f"snapshot entry {os.fsdecode(n.path)!r} is a symlink with {why}, which no file system"
                              " can hold: the snapshot is malformed; refusing to restore",
                              hint="restore the other entries with --include")


def _selected(snap: Snapshot, repo: Repository, includes: list[str], tree: Tree) -> list[tuple[Node, Place]]:
    """Validate every entry (not only the selected ones), then apply ``includes``.

    Besides ``check_path``, no entry may appear twice, and none may lie below a file or symlink
    of the same snapshot: a crafted manifest with ``link -> /elsewhere`` and ``link/x`` must not
    be half-restored. Time and memory are linear in the manifest's size (``restore_tree``).
    """
    nodes = list(iter_manifest(snap.tree, repo.load_blob))
    seen: set[bytes] = set()
    for n in nodes:
        check_path(n.path)
        if n.type == "symlink":
            _check_symlink(n)
        if n.path in seen:
            raise UnsafePathError(f"snapshot entry {os.fsdecode(n.path)!r} appears twice: the snapshot is malformed;"
                                  " refusing to restore", hint="`weightvault check` reports such snapshots")
        seen.add(n.path)
    tree.leaves.update(n.path for n in nodes if n.type != "dir")
    placed = [(n, tree.place(n.path, n.type == "dir")) for n in nodes]
    if not includes:
        return placed
    chosen = {n.path for n in nodes if matches_any(n.path, includes)}
    # the parent directories of what was chosen come along, so they get their recorded metadata
    wanted: set[int] = set()
    for n, place in placed:
        d = place.parent if n.path in chosen else 0
        while d and d not in wanted:
            wanted.add(d)
            d = tree.parent[d]
    return [(n, pl) for n, pl in placed if n.path in chosen or pl.dir_id in wanted]


def _existing_state(dir_fd: int, name: bytes, node: Node) -> str:
    """'missing', 'same' or 'different' for the target entry at name."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return "missing"
    if node.type == "file" and stat.S_ISREG(st.st_mode) and st.st_size == node.size:
        return "same" if file_digest(dir_fd, name) == node.sha256 else "different"
    if node.type == "symlink" and stat.S_ISLNK(st.st_mode):
        return "same" if os.readlink(name, dir_fd=dir_fd) == node.target else "different"
    return "different"


def restore(repo: Repository, snap: Snapshot, target: str, opts: RestoreOptions | None = None) -> RestoreResult:
    """Restore ``snap`` under ``target`` (created if missing). Raises on unsafe or conflicting entries."""
    opts = opts or RestoreOptions()
    if opts.overwrite not in OVERWRITE_MODES:
        raise UsageError(f"unknown overwrite mode {opts.overwrite!r}; use one of {', '.join(OVERWRITE_MODES)}")
    tree = Tree(set())
    nodes = _selected(snap, repo, opts.includes, tree)  # validates every path before writing
    if opts.includes and not nodes:
        tops = ", ".join(f"{os.path.basename(p)}/" for p in snap.paths)
        raise NoMatchError(f"no entry of snapshot {snap.short_id} matches {', '.join(opts.includes)}",
                           hint=f"paths in a snapshot start with its top directory ({tops}): e.g. --include"
                           f" '{os.path.basename(snap.paths[0])}/checkpoint-*'; `weightvault ls {snap.short_id}`"
                           " lists them")
    try:  # the target itself is the user's choice and may be a symlink; nothing below it is followed
        os.makedirs(target, exist_ok=True)
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"restore target {target} exists and is not a directory") from None
    dirs = Dirs(root_fd, tree, sweep=True)
    result = RestoreResult()
    reporter = Reporter(opts.progress, "restore")
    reporter.set_totals(sum(1 for n, _ in nodes if n.type == "file"), sum(n.size for n, _ in nodes if n.type == "file"))
    workers = opts.workers or max(os.cpu_count() or 2, repo.io_threads)
    try:
        plan = _plan(nodes, dirs, opts.overwrite, result)
        _restore_files(repo, plan, dirs, workers, opts, reporter, result)
        for n, place in plan:  # symlinks after all files: nothing is ever written through them
            if n.type == "symlink":
                _restore_symlink(dirs, n, place)
                result.symlinks += 1
        mask = _NO_SETUID if opts.no_setuid else 0o7777
        for n, place in reversed(plan):  # directory metadata last, deepest first
            if n.type == "dir":
                fd = dirs.open(place.dir_id, create=True)
                chown(n, fd)
                os.chmod(fd, n.mode & mask)
                os.utime(fd, ns=(n.mtime_ns, n.mtime_ns))
        # the new names: one syncfs per file system where it reports write-back errors, else an
        # fsync of each directory (fds only valid until the next ``open``: one at a time)
        parents = sorted({p.parent for _, p in plan})
        make_dirs_durable(dirs.open(parent, create=True) for parent in parents)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(
                f"no space left on the restore target {target}",
                hint="free space there (files already renamed into place are complete)",
            ) from exc
        if exc.filename is None:
            exc.filename = target
        raise
    finally:
        dirs.close()
        os.close(root_fd)
    reporter.done()
    return result


def _plan(
    nodes: list[tuple[Node, Place]], dirs: Dirs, mode: str, result: RestoreResult
) -> list[tuple[Node, Place]]:
    """Apply the overwrite mode; raises RestoreConflictError (mode 'error') before any write."""
    plan, conflicts = [], []
    for n, place in nodes:
        if n.type == "dir":
            plan.append((n, place))
            continue
        try:
            parent_fd = dirs.open(place.parent, create=False)
        except FileNotFoundError:
            plan.append((n, place))
            continue
        state = _existing_state(parent_fd, place.name, n)
        if state == "missing" or mode == "always":
            plan.append((n, place))
        elif state == "same" or mode == "never":
            result.skipped += 1
        elif mode == "if-changed":
            plan.append((n, place))
        else:
            conflicts.append(os.fsdecode(n.path))
    if conflicts:
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        raise RestoreConflictError(
            f"{len(conflicts)} file(s) in the target differ from the snapshot: {', '.join(conflicts[:5])}{more}",
            hint="choose --overwrite always|if-changed|never, or restore into an empty directory",
        )
    return plan


def _restore_files(
    repo: Repository,
    plan: list[tuple[Node, Place]],
    dirs: Dirs,
    workers: int,
    opts: RestoreOptions,
    reporter: Reporter,
    result: RestoreResult,
) -> None:
    """Create the directories and restore the files of ``plan``: ``_FILES_IN_FLIGHT`` file tasks
    at a time, each a large file (its blob loads and writes in a separate pool) or a group of
    small ones (``restore_file``); every task gets its own duplicates of its directories' fds.
    The first failure stops new work and is raised once running tasks end."""
    slots = threading.BoundedSemaphore(_FILES_IN_FLIGHT)
    # every blob is checked against its id once, where it is decoded: that proves every restored byte
    shared = BlobCache.counting(repo, (b for n, _ in plan if n.type == "file" for b in n.blobs), _SHARED_BLOB_BYTES)
    failed: list[BaseException] = []
    counts = dict.fromkeys(("files", "bytes", "verified"), 0)

    def done(fut: Future[None]) -> None:
        slots.release()
        exc = fut.exception()
        if exc is not None:
            failed.append(exc)

    stages = Stages()
    batch = DurableBatch(replace, stages)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="weightvault-restore") as pool, \
                ThreadPoolExecutor(max_workers=_FILES_IN_FLIGHT, thread_name_prefix="weightvault-file") as files:
            jobs = FileJobs(shared, pool, opts.verify, reporter, threading.Lock(), counts, stages, batch,
                            _NO_SETUID if opts.no_setuid else 0o7777)

            def submit(fn: Callable[..., None], args: tuple[object, ...], fds: list[int]) -> None:
                slots.acquire()
                try:
                    fut = files.submit(fn, jobs, *args)
                except BaseException:
                    slots.release()
                    for fd in fds:
                        os.close(fd)
                    raise
                fut.add_done_callback(done)

            _dispatch(in_chain_order(plan), dirs, result, failed, submit)
        if not failed:
            batch.flush()
    finally:
        batch.discard()  # after a failure: the small files not yet named are removed
        result.files += counts["files"]
        result.bytes += counts["bytes"]
        result.verified += counts["verified"]
    result.stages = stages.as_dict()
    if failed:
        raise failed[0]


def _dispatch(plan: list[tuple[Node, Place]], dirs: Dirs, result: RestoreResult,
              failed: list[BaseException],
              submit: Callable[[Callable[..., None], tuple[object, ...], list[int]], None]) -> None:
    """Make the directories and hand the files to ``submit``: a large file alone, small ones in
    groups of up to ``GROUP_FILES`` files and ``GROUP_BYTES`` bytes, in plan order."""
    group: list[tuple[int, Node, bytes]] = []
    group_fds: dict[int, int] = {}  # one duplicate per directory of the group
    group_bytes = 0
    # directories per group: with _FILES_IN_FLIGHT groups open at once, at most 1/8 of the fd limit
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    max_dirs = GROUP_FILES if soft == resource.RLIM_INFINITY else max(1, min(GROUP_FILES, soft // 32))
    try:
        for n, place in plan:
            if failed:
                break
            if n.type == "dir":
                dirs.open(place.dir_id, create=True)
                result.dirs += 1
            elif n.type == "file":
                parent = place.parent
                if n.size >= GROUP_FILE:
                    parent_fd = os.dup(dirs.open(parent, create=True))
                    submit(write_file, (parent_fd, n, place.name), [parent_fd])
                    continue
                if parent not in group_fds:
                    if len(group_fds) >= max_dirs:
                        taken, fds, group, group_fds, group_bytes = group, list(group_fds.values()), [], {}, 0
                        submit(write_group, (taken, fds), fds)
                    group_fds[parent] = os.dup(dirs.open(parent, create=True))
                group.append((group_fds[parent], n, place.name))
                group_bytes += n.size
                if len(group) >= GROUP_FILES or group_bytes >= GROUP_BYTES:
                    taken, fds, group, group_fds, group_bytes = group, list(group_fds.values()), [], {}, 0
                    submit(write_group, (taken, fds), fds)
        if group and not failed:
            taken, fds, group, group_fds = group, list(group_fds.values()), [], {}
            submit(write_group, (taken, fds), fds)
    finally:
        for fd in group_fds.values():  # not handed over (a failure)
            os.close(fd)


def _restore_symlink(dirs: Dirs, n: Node, place: Place) -> None:
    parent_fd = dirs.open(place.parent, create=True)
    name = place.name
    tmp = tmp_name()
    os.symlink(n.target or b"", tmp, dir_fd=parent_fd)
    try:
        chown(n, tmp, parent_fd)
        replace(parent_fd, tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=parent_fd)
        raise
    with contextlib.suppress(OSError, NotImplementedError):
        os.utime(name, ns=(n.mtime_ns, n.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)


