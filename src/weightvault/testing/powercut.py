"""A simulated power cut: what a crash loses when the page cache goes down with the process.

SIGKILL keeps the page cache, so a killed process's writes all reach the disk eventually. A power
cut keeps only what was made durable. ``PowerCutTracer`` patches this process's ``os`` functions
(and ``open``) so that every call changing a file or directory under ``root`` is journalled, one
JSON line per call, in the order the calls happened (one lock around the call and its record).
``tracer.crash()`` takes that lock and SIGKILLs the process, so no call is half-recorded.
``apply_power_cut(root)`` then turns the tree the kill left into the tree a power cut at the same
instant leaves under this model:

* **file data** is durable up to the size the file had at its last ``fsync``/``fdatasync`` (or a
  ``syncfs`` of the file system) after its last write; a file written since is cut back to that
  size (to 0 if it was never synced, or if it was opened with ``O_TRUNC``);
* **directory entries** (a file created, ``mkdir``, ``rename``/``replace``, ``link``, ``unlink``,
  ``rmdir``) are durable only once their directory was fsynced afterwards (or ``syncfs``); every
  other entry change is undone, newest first (a rename over a file brings the old file back, an
  unlink brings the file back, a ``mkdir`` takes its whole subtree with it).

What it does not model: it produces the one crash state in which *every* unsynced change is lost
(not every subset and reordering of them, as ALICE and CrashMonkey enumerate); data granularity
is whole-file (a file is cut back, never left with a torn middle); it is stricter than ext4 (where
an ``fsync`` of a new file also commits its directory entry) and knows nothing of the device's
own cache (a drive that acknowledges a flush it has not done defeats any software); only paths
under ``root`` are traced, and only calls through ``os`` and ``open`` (``shutil`` and ``pathlib``
use those); a ``syncfs`` and ``renameat2`` (``restore --swap``'s exchange), both called through
ctypes, are traced where the caller routes them through ``traced_syncfs`` / ``traced_rename2``.

The tracer also gives file-system crash points for operations whose durable writes are not
backend calls (a restore): ``crash_at=N`` with ``crash_mode`` kill-before, kill-after, eio or
enospc acts at the N-th durable call (fsync, fdatasync, syncfs, rename, replace, link) under
``root``; ``tracer.points`` counts them.

    tracer = PowerCutTracer(root); tracer.install()   # in the process that will crash
    ...; tracer.crash()                               # SIGKILL at a quiescent point
    apply_power_cut(root)                             # in the parent, on the tree the kill left
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["JOURNAL_DIR", "PowerCutTracer", "apply_power_cut"]

JOURNAL_DIR = ".powercut"  # under root: the journal and the saved copies of replaced or unlinked files
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT


class PowerCutTracer:
    """Journals every change under ``root`` made through ``os``/``open`` in this process."""

    def __init__(self, root: str | os.PathLike[str], crash_at: int = 0, crash_mode: str = "kill-before") -> None:
        self.root = os.path.abspath(root)
        self.crash_at, self.crash_mode = crash_at, crash_mode
        self.points = 0  # durable calls seen: fsync, fdatasync, syncfs, rename, replace, link
        self.private = os.path.join(self.root, JOURNAL_DIR)
        self._lock = threading.RLock()
        self._fds: dict[int, tuple[str, bool]] = {}  # traced fd -> (path, is a directory)
        self._orig: dict[str, Any] = {}
        self._seq = 0
        self._jfd = -1

    # -- set-up ------------------------------------------------------------------------------------
    def install(self) -> None:
        os.makedirs(self.private, exist_ok=True)
        self._jfd = os.open(os.path.join(self.private, "journal"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        for name in ("open", "write", "pwrite", "writev", "ftruncate", "truncate", "fsync", "fdatasync",
                     "close", "dup", "replace", "rename", "link", "unlink", "remove", "mkdir", "rmdir"):
            self._orig[name] = getattr(os, name)
            setattr(os, name, getattr(self, f"_{name}"))
        self._orig["builtins.open"] = builtins.open
        builtins.open = io.open = self._pyopen

    def uninstall(self) -> None:
        """Put the real calls back (the in-process tests' stand-in for the crash)."""
        for name, fn in self._orig.items():
            if name == "builtins.open":
                builtins.open = io.open = fn
            else:
                setattr(os, name, fn)
        self._orig.clear()
        os.close(self._jfd)

    def crash(self) -> None:
        """SIGKILL this process between two traced calls."""
        self._lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)

    def traced_syncfs(self, fn: Callable[[int], int]) -> Callable[[int], int]:
        """``fn`` (a ``syncfs(fd) -> 0 | -1``) journalled: a success makes everything durable."""
        def syncfs(fd: int) -> int:
            with self._lock:
                after = self._at_point()
                r = fn(fd)
                if r == 0:
                    self._record("fssync")
                if after:
                    self._die()
                return r
        return syncfs

    def traced_rename2(self, fn: Callable[[Any, Any, int], bool]) -> Callable[[Any, Any, int], bool]:
        """``fn`` (``restore --swap``'s ``_rename2(a, b, flags)``, renameat2 through ctypes)
        journalled: an exchange (flags 2) or a rename without replacing (flags 1)."""
        def rename2(a: Any, b: Any, flags: int) -> bool:
            sp, dp = self._path(a), self._path(b)
            if sp is None and dp is None:
                return fn(a, b, flags)
            with self._lock:
                after = self._at_point()
                ok = fn(a, b, flags)
                if ok:
                    self._record("exchange" if flags == 2 else "rename", src=sp, dst=dp, keep=None)
                if after:
                    self._die()
                return ok
        return rename2

    def _at_point(self) -> bool:
        """Count a durable call (lock held); at ``crash_at`` do ``crash_mode``: die before it,
        raise EIO/ENOSPC instead of it, or return True (die after it)."""
        self.points += 1
        if self.points != self.crash_at:
            return False
        if self.crash_mode == "kill-before":
            self._die()
        if self.crash_mode in ("eio", "enospc"):
            code = errno.EIO if self.crash_mode == "eio" else errno.ENOSPC
            raise OSError(code, os.strerror(code))
        return self.crash_mode == "kill-after"

    @staticmethod
    def _die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    # -- the journal ---------------------------------------------------------------------------------
    def _record(self, op: str, **fields: Any) -> None:
        self._seq += 1
        line = json.dumps({"seq": self._seq, "op": op, **fields}) + "\n"
        self._orig["write"](self._jfd, line.encode())

    def _path(self, path: Any, dir_fd: int | None = None) -> str | None:
        """The absolute path of ``path`` if it is traced (under root, outside the journal)."""
        if isinstance(path, int):
            return None
        p = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(p):
            p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
        p = os.path.abspath(p)
        if not (p == self.root or p.startswith(self.root + os.sep)) or p == self.private \
                or p.startswith(self.private + os.sep):
            return None
        return p

    def _save_copy(self, path: str) -> str | None:
        """Hard-link ``path`` (about to be replaced or unlinked) into the journal directory."""
        if not os.path.isfile(path) or os.path.islink(path):
            return None
        keep = os.path.join(self.private, f"keep-{os.getpid()}-{self._seq + 1}")
        self._orig["link"](path, keep)
        return keep

    @staticmethod
    def _ino(fd: int) -> list[int]:
        st = os.fstat(fd)
        return [st.st_dev, st.st_ino]

    # -- patched calls -------------------------------------------------------------------------------
    def _open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        p = self._path(path, dir_fd)
        if p is None:
            fd = int(self._orig["open"](path, flags, mode, dir_fd=dir_fd))
            self._fds.pop(fd, None)  # a number a file object under root had, closed without os.close
            return fd
        with self._lock:
            existed = os.path.lexists(p)
            fd = int(self._orig["open"](path, flags, mode, dir_fd=dir_fd))
            is_dir = os.path.isdir(p) and not flags & _WRITE_FLAGS
            self._fds[fd] = (p, is_dir)
            if not existed:
                self._record("create", path=p)
            if flags & _WRITE_FLAGS and not is_dir:
                self._record("open", path=p, ino=self._ino(fd), trunc=bool(flags & os.O_TRUNC) or not existed,
                             size=os.fstat(fd).st_size)
            return fd

    def _pyopen(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        p = self._path(file) if isinstance(file, (str, bytes, os.PathLike)) else None
        if p is None or not set(mode) & set("wax+"):
            return self._orig["builtins.open"](file, mode, *args, **kwargs)
        with self._lock:
            existed = os.path.lexists(p)
            f = self._orig["builtins.open"](file, mode, *args, **kwargs)
            self._fds[f.fileno()] = (p, False)  # so that os.fsync(f.fileno()) is journalled
            if not existed:
                self._record("create", path=p)
            self._record("open", path=p, ino=self._ino(f.fileno()), trunc="w" in mode or not existed, size=0)
            self._record("data", ino=self._ino(f.fileno()))  # a file object writes without os.write
            return f

    def _data_call(self, name: str) -> Callable[..., Any]:
        def call(fd: int, *args: Any) -> Any:
            if fd not in self._fds:
                return self._orig[name](fd, *args)
            with self._lock:
                self._record("data", ino=self._ino(fd))
                return self._orig[name](fd, *args)
        return call

    def _write(self, fd: int, data: Any) -> int:
        return int(self._data_call("write")(fd, data))

    def _pwrite(self, fd: int, data: Any, offset: int) -> int:
        return int(self._data_call("pwrite")(fd, data, offset))

    def _writev(self, fd: int, buffers: Any) -> int:
        return int(self._data_call("writev")(fd, buffers))

    def _ftruncate(self, fd: int, length: int) -> None:
        self._data_call("ftruncate")(fd, length)

    def _truncate(self, path: Any, length: int) -> None:
        p = self._path(path)
        if p is None:
            return self._orig["truncate"](path, length)  # type: ignore[no-any-return]
        with self._lock:
            st = os.stat(p)
            self._record("data", ino=[st.st_dev, st.st_ino])
            return self._orig["truncate"](path, length)  # type: ignore[no-any-return]

    def _sync_call(self, name: str, fd: int) -> None:
        entry = self._fds.get(fd)
        if entry is None:
            return self._orig[name](fd)  # type: ignore[no-any-return]
        with self._lock:
            after = self._at_point()
            self._orig[name](fd)
            path, is_dir = entry
            if is_dir:
                self._record("dsync", path=path)
            else:
                self._record("sync", ino=self._ino(fd), size=os.fstat(fd).st_size)
            if after:
                self._die()
            return None

    def _fsync(self, fd: int) -> None:
        self._sync_call("fsync", fd)

    def _fdatasync(self, fd: int) -> None:
        self._sync_call("fdatasync", fd)

    def _dup(self, fd: int) -> int:
        new = int(self._orig["dup"](fd))
        if fd in self._fds:
            self._fds[new] = self._fds[fd]
        return new

    def _close(self, fd: int) -> None:
        self._fds.pop(fd, None)
        self._orig["close"](fd)

    def _entry_call(self, name: str, src: Any, dst: Any | None = None, **kw: Any) -> Any:
        sp = self._path(src, kw.get("src_dir_fd", kw.get("dir_fd")))
        dp = None if dst is None else self._path(dst, kw.get("dst_dir_fd"))
        if sp is None and dp is None:
            return self._orig[name](src, *(() if dst is None else (dst,)), **kw)
        with self._lock:
            after = self._at_point() if name in ("replace", "rename", "link") else False
            keep = None
            if name in ("replace", "rename") and dp is not None:
                keep = self._save_copy(dp)
            elif name in ("unlink", "remove") and sp is not None:
                keep = self._save_copy(sp)
            out = self._orig[name](src, *(() if dst is None else (dst,)), **kw)
            self._record(name, src=sp, dst=dp, keep=keep)
            if after:
                self._die()
            return out

    def _replace(self, src: Any, dst: Any, **kw: Any) -> None:
        self._entry_call("replace", src, dst, **kw)

    def _rename(self, src: Any, dst: Any, **kw: Any) -> None:
        self._entry_call("rename", src, dst, **kw)

    def _link(self, src: Any, dst: Any, **kw: Any) -> None:
        self._entry_call("link", src, dst, **kw)

    def _unlink(self, path: Any, **kw: Any) -> None:
        self._entry_call("unlink", path, **kw)

    def _remove(self, path: Any, **kw: Any) -> None:
        self._entry_call("remove", path, **kw)

    def _mkdir(self, path: Any, mode: int = 0o777, **kw: Any) -> None:
        p = self._path(path, kw.get("dir_fd"))
        if p is None:
            return self._orig["mkdir"](path, mode, **kw)  # type: ignore[no-any-return]
        with self._lock:
            self._orig["mkdir"](path, mode, **kw)
            self._record("mkdir", src=p, dst=None, keep=None)
            return None

    def _rmdir(self, path: Any, **kw: Any) -> None:
        self._entry_call("rmdir", path, **kw)


# -- the parent: the tree a power cut leaves ------------------------------------------------------
def _durable_entries(records: list[dict[str, Any]]) -> set[int]:
    """Sequence numbers of the entry changes made durable by a later fsync of their directory."""
    durable: set[int] = set()
    synced_dirs: set[str] = set()
    fs_synced = False
    for r in reversed(records):
        if r["op"] == "dsync":
            synced_dirs.add(r["path"])
        elif r["op"] == "fssync":
            fs_synced = True
        elif r["op"] in _ENTRY_OPS:
            paths = [r["path"]] if r["op"] == "create" else [p for p in (r["src"], r["dst"]) if p]
            if fs_synced or all(os.path.dirname(p) in synced_dirs for p in paths):
                durable.add(r["seq"])
    return durable


_ENTRY_OPS = ("create", "mkdir", "rename", "replace", "link", "unlink", "remove", "rmdir", "exchange")


def _undo(r: dict[str, Any]) -> None:
    op, src, dst, keep = r["op"], r.get("src") or "", r.get("dst"), r.get("keep")
    if op == "exchange" and dst:  # both names exist: swap them back
        os.rename(src, src + ".powercut-swap")
        os.rename(dst, src)
        os.rename(src + ".powercut-swap", dst)
    elif op == "create":
        if os.path.isfile(r["path"]) or os.path.islink(r["path"]):
            os.unlink(r["path"])
    elif op == "mkdir":
        shutil.rmtree(src, ignore_errors=True)
    elif op == "rmdir":
        os.makedirs(src, exist_ok=True)
    elif op in ("rename", "replace"):
        if src and dst and os.path.lexists(dst):
            os.rename(dst, src)
        if keep and dst:
            os.link(keep, dst)
    elif op == "link":
        if dst and os.path.lexists(dst):
            os.unlink(dst)
    elif op in ("unlink", "remove") and keep and src and not os.path.lexists(src):
        os.link(keep, src)


def _lost_data(records: list[dict[str, Any]]) -> dict[tuple[int, int], int]:
    """Inode -> the size its data is durable up to, for every inode written since its last sync."""
    state: dict[tuple[int, int], tuple[bool, int]] = {}  # inode -> (dirty, durable size)
    for r in records:
        if r["op"] == "open":
            ino = (r["ino"][0], r["ino"][1])
            dirty, size = state.get(ino, (False, 0 if r["trunc"] else r["size"]))
            state[ino] = (dirty or r["trunc"], 0 if r["trunc"] else size)
        elif r["op"] == "data":
            ino = (r["ino"][0], r["ino"][1])
            state[ino] = (True, state.get(ino, (False, 0))[1])
        elif r["op"] == "sync":
            state[(r["ino"][0], r["ino"][1])] = (False, r["size"])
        elif r["op"] == "fssync":
            state = {}  # everything written so far is durable (its current size)
    return {ino: size for ino, (dirty, size) in state.items() if dirty}


def apply_power_cut(root: str | os.PathLike[str]) -> dict[str, int]:
    """Turn the tree under ``root`` into what a power cut at the crash would have left (see the
    module docstring), remove the journal, and return counts of what was dropped."""
    private = Path(root, JOURNAL_DIR)
    text = (private / "journal").read_text() if (private / "journal").exists() else ""
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    durable = _durable_entries(records)
    undone = 0
    for r in reversed(records):
        if r["op"] in _ENTRY_OPS and r["seq"] not in durable:
            _undo(r)
            undone += 1
    lost = _lost_data(records)
    cut = 0
    for dirpath, _dirs, files in os.walk(root):
        if Path(dirpath) == private or private in Path(dirpath).parents:
            continue
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            st = os.stat(path)
            size = lost.get((st.st_dev, st.st_ino))
            if size is not None and size < st.st_size:
                os.truncate(path, size)
                cut += 1
    shutil.rmtree(private, ignore_errors=True)
    return {"records": len(records), "entries_undone": undone, "files_cut": cut}
