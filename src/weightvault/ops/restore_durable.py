"""Group commit for restored files: one file-system flush for many files instead of one ``fsync``
each.

A small restored file, or a large one written past the page cache (``O_DIRECT``: its data is on
the device already, and an ``fsync`` of it would cost a journal commit and a device cache flush for
its metadata alone), is complete (written, hash-checked, metadata set) under its temporary name
when it is handed to ``DurableBatch.add``; a large one counts no bytes toward ``MAX_BYTES`` (which
bounds the page cache a flush writes back). When the batch is full (``MAX_FILES`` files,
``MAX_BYTES`` bytes or ``MAX_DIRS`` directories, fewer under a low open-file limit) or at
``flush``, every file system holding one of its files is flushed with ``syncfs(2)`` and only then
is each file renamed to its name. So, exactly as with a
per-file ``fsync``: a name never points at data that is not durable, and a crash leaves at most
temporary ``.wvtmp-*`` files, never a half-written file under a real name. The directories'
entries are made durable afterwards by restore (``make_dirs_durable``: one ``syncfs`` per file
system, or an ``fsync`` per directory without it).

``syncfs`` reports write-back errors of the whole file system since Linux 5.8; on an older kernel
or where it is missing, the batch falls back to an ``fsync`` of each file. A failed flush is never
retried as if it succeeded: its files are removed and the error raised.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from weightvault.ops.stages import Stages

__all__ = [
    "MAX_BYTES", "MAX_DIRS", "MAX_FILES", "SMALL_FILE", "DurableBatch", "Writeback", "make_dirs_durable",
    "start_writeback", "syncfs_available",
]

SMALL_FILE = 4 * 1024 * 1024  # files below this size are committed in batches
MAX_FILES = 1024
MAX_BYTES = 128 * 1024 * 1024
MAX_DIRS = 64  # directory fds the batch keeps open (at most an eighth of the open-file limit)


def _load_syncfs() -> Callable[[int], int] | None:
    if platform.system() != "Linux":
        return None
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):  # before 5.8 syncfs did not report write-back errors
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def syncfs_available() -> bool:
    return _SYNCFS is not None


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if platform.system() != "Linux":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` of ``fd`` to the device now
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux), so a large file's closing ``fsync`` has
    little left to wait for and its write-back overlaps the restore's decoding. Only a hint: it
    never makes anything durable and reports nothing; the ``fsync`` does both (a write-back error
    stays recorded for it)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_DROP_LAG = 4  # ranges written after one before it is dropped from the page cache


class Writeback:
    """Streams a large restored file to the device as it is written: each written range starts
    write-back at once (``start_writeback``), and a range written ``_DROP_LAG`` ranges earlier,
    by then usually on the device, is dropped from the page cache (``POSIX_FADV_DONTNEED``, which
    never drops a page that is still dirty or being written). A restore of many GB then does not
    fill the page cache and make every later write wait for reclaim (measured here: 3.2 GB of
    pwrite at 0.4-1.2 GB/s with write-back alone, 3.9 GB/s with the drops). Durability still
    comes only from the file's ``fsync``; ``finish`` after it drops the rest. Thread-safe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._written: list[tuple[int, int]] = []

    def written(self, offset: int, length: int) -> None:
        start_writeback(self.fd, offset, length)
        with self._lock:
            self._written.append((offset, length))
            old = self._written.pop(0) if len(self._written) > _DROP_LAG else None
        if old is not None and _FADVISE:
            os.posix_fadvise(self.fd, old[0], old[1], os.POSIX_FADV_DONTNEED)

    def finish(self) -> None:
        """After the file's fsync: its pages are clean, drop them all."""
        if _FADVISE:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)


_FADVISE = hasattr(os, "posix_fadvise") and _SYNC_FILE_RANGE is not None


def _syncfs(fd: int) -> None:
    assert _SYNCFS is not None
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"flushing restored files to disk (syncfs) failed: {os.strerror(err)}")


def make_dirs_durable(dir_fds: Iterable[int]) -> None:
    """Make the entries of these directories durable: one ``syncfs`` per file system they lie on
    (which writes back every dirty inode and block of it and reports any write-back error), or
    an ``fsync`` of each where ``syncfs`` is unavailable. A failure raises; it is never retried."""
    if _SYNCFS is None:
        for fd in dir_fds:
            os.fsync(fd)
        return
    devices: dict[int, int] = {}
    for fd in dir_fds:
        devices.setdefault(os.fstat(fd).st_dev, fd)
    for fd in devices.values():
        _syncfs(fd)


@dataclass
class _Pending:
    dir_key: tuple[int, int]
    tmp: bytes
    name: bytes
    size: int
    done: Callable[[], None]  # accounting once the file has its name


class DurableBatch:
    """See the module docstring. ``replace(dir_fd, tmp, name)`` renames a file into place.
    Thread-safe: any thread may add; the one that fills the batch takes it and commits it."""

    def __init__(self, replace: Callable[[int, bytes, bytes], None], stages: Stages) -> None:
        self._replace = replace
        self._stages = stages
        self._lock = threading.Lock()
        self._dirs: dict[tuple[int, int], int] = {}
        self._files: list[_Pending] = []
        self._bytes = 0
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._max_dirs = MAX_DIRS if soft == resource.RLIM_INFINITY else max(1, min(MAX_DIRS, soft // 8))

    def add(self, dir_fd: int, tmp: bytes, name: bytes, size: int, done: Callable[[], None]) -> None:
        """Commit the file ``tmp`` in the directory ``dir_fd`` (not taken over) under ``name``."""
        st = os.fstat(dir_fd)
        key = (st.st_dev, st.st_ino)
        with self._lock:
            if key not in self._dirs:
                self._dirs[key] = os.dup(dir_fd)
            self._files.append(_Pending(key, tmp, name, size, done))
            self._bytes += size
            full = len(self._files) >= MAX_FILES or self._bytes >= MAX_BYTES or len(self._dirs) >= self._max_dirs
            taken = self._take() if full else None
        if taken is not None:
            self._commit(*taken)

    def _take(self) -> tuple[dict[tuple[int, int], int], list[_Pending]]:
        """The pending files, leaving the batch empty; caller holds ``_lock``."""
        dirs, files = self._dirs, self._files
        self._dirs, self._files, self._bytes = {}, [], 0
        return dirs, files

    def flush(self) -> None:
        """Make every pending file durable, then give each its name."""
        with self._lock:
            taken = self._take()
        self._commit(*taken)

    def _commit(self, dirs: dict[tuple[int, int], int], files: list[_Pending]) -> None:
        try:
            if files:
                with self._stages("fsync"):
                    self._make_durable(dirs, files)
            for f in files:
                self._replace(dirs[f.dir_key], f.tmp, f.name)
                f.tmp = b""
                f.done()
        finally:
            self._remove(dirs, files)

    def _make_durable(self, dirs: dict[tuple[int, int], int], files: list[_Pending]) -> None:
        if _SYNCFS is not None:
            seen: set[int] = set()
            for (dev, _), fd in dirs.items():
                if dev not in seen:
                    seen.add(dev)
                    _syncfs(fd)
            return
        for f in files:
            fd = os.open(f.tmp, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirs[f.dir_key])
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _remove(dirs: dict[tuple[int, int], int], files: list[_Pending]) -> None:
        """Unlink what did not get its name (after a failure) and close the directory fds."""
        for f in files:
            if f.tmp:
                with contextlib.suppress(OSError):
                    os.unlink(f.tmp, dir_fd=dirs[f.dir_key])
        for fd in dirs.values():
            os.close(fd)

    def discard(self) -> None:
        """Remove every pending file (the restore failed)."""
        with self._lock:
            taken = self._take()
        self._remove(*taken)
