"""One restored file: written under a temporary name from blobs each checked against its content
address (the keyed BLAKE3 that is its id, once per blob, in the thread that decodes it), checked
for its manifest size, given its metadata, made durable and only then renamed into place
(``write_file``); small files many at a time in one thread (``write_group``). The file's manifest
SHA-256 is not recomputed: the blob ids prove every byte (an authenticated manifest names them in
order), and ``restore --verify`` or ``weightvault verify`` check the digest where asked.

A file of ``GROUP_FILE`` bytes or more streams its blobs through the restore's pool
(``restore_io.load_and_write``). Smaller files travel in groups of up to ``GROUP_FILES`` files
(``GROUP_BYTES`` bytes): one task per group, whose blobs are fetched with as few range reads as
their packs allow and written by the same thread, without a hand-over per file or per blob (for a
tree of many small files those hand-overs, not the bytes, were the restore's time). Both end the
same way: a small file goes to the ``DurableBatch`` (one ``syncfs`` for many files before their
renames); a large one is written past the page cache where the file system allows
(``restore_direct``) and then goes to the batch too (its data is on the device already), else it
gets its own ``fsync``."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from weightvault.backends.direct_io import open_for_write
from weightvault.errors import IntegrityError, VerificationError
from weightvault.ops.progress import Reporter
from weightvault.ops.restore_direct import DirectWriter
from weightvault.ops.restore_durable import SMALL_FILE, DurableBatch, Writeback
from weightvault.ops.restore_io import all_zero, load_and_write, pwrite_all, runs_of
from weightvault.ops.restore_temps import TMP_PREFIX, tmp_name
from weightvault.ops.stages import Stages
from weightvault.repository.blobcache import BlobCache
from weightvault.repository.manifest import Node

__all__ = [
    "GROUP_BYTES", "GROUP_FILE", "GROUP_FILES", "TMP_PREFIX", "FileJobs", "chown", "replace", "tmp_name",
    "write_file", "write_group",
]

GROUP_FILE = 1024 * 1024  # files below this size are restored in groups, in one thread each
GROUP_FILES = 64
GROUP_BYTES = 4 * 1024 * 1024
_LOOKAHEAD = 4  # blob runs in flight per large file
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW

@dataclass(frozen=True)
class FileJobs:
    """What every file task of one restore shares."""

    blobs: BlobCache
    pool: ThreadPoolExecutor  # blob loads and positional writes of large files
    verify: bool
    reporter: Reporter
    lock: threading.Lock  # guards ``counts``
    counts: dict[str, int]  # files, bytes, verified: named (and durable) so far
    stages: Stages
    batch: DurableBatch  # small files are made durable and named many at a time
    mode_mask: int = 0o7777  # 0o1777 drops setuid/setgid (restore --no-setuid)


def write_group(jobs: FileJobs, group: list[tuple[int, Node, bytes]], fds: list[int]) -> None:
    """Restore small files (each with its parent directory's fd and its name) one after another;
    their blobs are loaded here, coalesced into range reads. Takes over ``fds``, the group's
    directory fds."""
    try:
        with jobs.stages("load"):
            datas: list[bytes | bytearray] = []
            try:
                for run in runs_of(jobs.blobs, [b for _, n, _ in group for b in n.blobs]):
                    datas += jobs.blobs.load_run(run)
            except IntegrityError:
                _name_the_culprit(jobs, group)
                raise
        at = 0
        for parent_fd, n, name in group:
            _write(jobs, parent_fd, n, name, datas[at : at + len(n.blobs)])
            at += len(n.blobs)
    finally:
        for fd in fds:
            os.close(fd)


def _name_the_culprit(jobs: FileJobs, group: list[tuple[int, Node, bytes]]) -> None:
    """After a group's blobs failed to load: load them again file by file (this restore fails
    either way) and raise the failure as the first failing file's (``_not_restored``)."""
    for _, n, _ in group:
        try:
            for b in n.blobs:
                jobs.blobs.load(b)
        except IntegrityError as exc:
            raise _not_restored(n, exc) from exc


def _not_restored(n: Node, exc: IntegrityError) -> VerificationError:
    """A blob of ``n`` failed its AEAD or its content address: the file is not restored."""
    if isinstance(exc, VerificationError):
        return exc
    return VerificationError(f"{os.fsdecode(n.path)}: restored content does not match the snapshot: {exc.message}",
                             hint=exc.hint or "`weightvault check --read-data` names every damaged blob")


def write_file(jobs: FileJobs, parent_fd: int, n: Node, name: bytes) -> None:
    """Restore one file, its blobs loaded and written in the pool. Takes over ``parent_fd``."""
    try:
        _write(jobs, parent_fd, n, name, None)
    finally:
        os.close(parent_fd)


def _write(jobs: FileJobs, parent_fd: int, n: Node, name: bytes, datas: list[bytes | bytearray] | None) -> None:
    """Write ``n`` under a temporary name (from ``datas``, or through the pool when None), check
    it, set its metadata and commit it (small: through the batch); no temporary file is left on
    failure."""
    tmp = tmp_name()
    try:
        _write_tmp(jobs, parent_fd, n, name, datas, tmp)
    except IntegrityError as exc:
        raise _not_restored(n, exc) from exc
    except OSError as exc:  # name the file being restored, not its temporary name
        if exc.filename != tmp:
            raise
        raise OSError(exc.errno, exc.strerror, os.fsdecode(n.path)) from exc


def _write_tmp(jobs: FileJobs, parent_fd: int, n: Node, name: bytes, datas: list[bytes | bytearray] | None,
               tmp: bytes) -> None:
    small = n.size < SMALL_FILE
    # a large file goes past the page cache where the file system allows it (restore_direct)
    fd, direct = open_for_write(tmp, _CREATE, 0 if small else n.size, dir_fd=parent_fd)
    renamed = False
    try:
        wb = None if small or direct else Writeback(fd)
        if datas is None:
            pos, all_direct = _stream(jobs, fd, n, wb, direct)
        else:
            pos, all_direct = _write_datas(jobs, fd, datas), False
        if pos != n.size:  # every blob matched its id (BlobCache); the manifest's size must hold too
            raise VerificationError(f"{os.fsdecode(n.path)}: restored content does not match the manifest "
                                    f"(size {pos} vs {n.size})")
        chown(n, fd)  # before chmod: a chown clears setuid/setgid bits
        os.fchmod(fd, n.mode & jobs.mode_mask)
        os.utime(fd, ns=(n.mtime_ns, n.mtime_ns))
        # a small file, and a large one written past the page cache (its data is on the device
        # already, only its metadata and a few unaligned pages are not), is made durable by the
        # batch: one syncfs for many files instead of an fsync (a journal commit and a device
        # cache flush) each
        batched = small or all_direct
        if not batched:
            with jobs.stages("fsync"):
                os.fsync(fd)
            if wb is not None:
                wb.finish()
        with jobs.stages("verify"):
            if jobs.verify and file_digest(parent_fd, tmp) != n.sha256:
                raise VerificationError(f"{os.fsdecode(n.path)}: SHA-256 read back from disk does not match")
        os.close(fd)
        fd = -1
        renamed = True
        if batched:  # the batch makes it durable, names it and counts it
            # (a direct-written file adds no page-cache bytes for the flush to write back)
            jobs.batch.add(parent_fd, tmp, name, n.size if small else 0, lambda: _count(jobs, n))
            return
        replace(parent_fd, tmp, name)
        _count(jobs, n)
    finally:
        if fd >= 0:
            os.close(fd)
        if not renamed:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent_fd)


def _stream(jobs: FileJobs, fd: int, n: Node, wb: Writeback | None, direct: bool) -> tuple[int, bool]:
    """Load ``n``'s blobs through the pool and write them: in the pool at their offsets, or, on a
    descriptor opened ``O_DIRECT``, here in file order (``DirectWriter``). Returns the size, and
    whether every write but the unaligned pieces went past the page cache."""
    writer = DirectWriter(fd) if direct else None
    pos = 0
    for data in load_and_write(jobs.pool, jobs.blobs, n.blobs, None if direct else fd, _LOOKAHEAD, jobs.stages, wb):
        if writer is not None:
            with jobs.stages("write"):
                writer.add(data)
        pos += len(data)
        jobs.reporter.add(nbytes=len(data))
    if writer is not None:
        with jobs.stages("write"):
            writer.finish()
    os.ftruncate(fd, pos)  # a trailing all-zero chunk was left as a hole
    return pos, writer is not None and writer.all_direct


def _write_datas(jobs: FileJobs, fd: int, datas: list[bytes | bytearray]) -> int:
    """Write a small file's plaintexts in order (all-zero ones as holes); returns its size."""
    pos = 0
    with jobs.stages("write"):
        for data in datas:
            if not all_zero(data):
                pwrite_all(fd, data, pos)
            pos += len(data)
        if datas and all_zero(datas[-1]):
            os.ftruncate(fd, pos)  # the hole at the end still counts in the size
    jobs.reporter.add(nbytes=pos)
    return pos


def _count(jobs: FileJobs, n: Node) -> None:
    """A file has its name (and is durable)."""
    with jobs.lock:
        jobs.counts["files"] += 1
        jobs.counts["bytes"] += n.size
        jobs.counts["verified"] += int(jobs.verify)
    jobs.reporter.add(files=1, current=os.fsdecode(n.path))


def file_digest(dir_fd: int, name: bytes) -> str | None:
    """SHA-256 of the file ``name`` in ``dir_fd`` (never following a symlink), None if there is no
    file to read there (missing, a symlink, a directory, not ours to read). Any other failure
    (too many open files, an I/O error) is raised: it says nothing about the file's content."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENOTDIR):
            return None
        raise
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while buf := f.read(1 << 20):
            h.update(buf)
    return h.hexdigest()


def chown(n: Node, target: int | bytes, dir_fd: int | None = None) -> None:
    """As root, give a restored entry its recorded owner (never following a symlink); else no-op."""
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            if isinstance(target, int):
                os.fchown(target, n.uid, n.gid)
            else:
                os.chown(target, n.uid, n.gid, dir_fd=dir_fd, follow_symlinks=False)


def replace(parent_fd: int, tmp: bytes, name: bytes) -> None:
    """Rename tmp over name. An existing directory in the way is only replaced if empty."""
    try:
        os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except IsADirectoryError:
        os.rmdir(name, dir_fd=parent_fd)
        os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
