"""Local directory backend.

Layout: ``config``, ``keys/<id>``, ``data/<id[:2]>/<id>``, ``index/<id>``, ``snapshots/<id>``,
``locks/<id>``. Writes go to ``.tmp-*`` in the target directory, are fsynced, renamed (or hard
linked, for create-only) into place, and the directory is fsynced. Objects of 1 MiB or more (packs)
are written past the page cache where the file system allows it (``backends.direct_io``).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from weightvault.backends.base import FileType, NoColdStorage
from weightvault.backends.direct_io import open_for_write, write_all
from weightvault.errors import (
    BackendError,
    LocalPathError,
    NoSpaceError,
    ObjectExistsError,
    ObjectNotFoundError,
    RepositoryExistsError,
    WeightvaultError,
)
from weightvault.paths import fsync_dir

__all__ = ["FD_LIMIT_HINT", "LocalBackend", "convert_os_error"]

_TMP_PREFIX = ".tmp-"


_fsync_dir = fsync_dir

FD_LIMIT_HINT = ("this process may open too few files at once (`ulimit -n`): raise the limit"
                 " (e.g. `ulimit -n 1024`) and run it again")


def convert_os_error(exc: OSError, what: str) -> WeightvaultError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(
            f"no space left writing {what}: {exc.strerror}",
            hint="free space on the repository's disk (or prune old snapshots) and run the command again;"
            " data already written is kept and reused",
        )
    if exc.errno in (errno.EMFILE, errno.ENFILE):  # this process's limit, not the storage failing
        return LocalPathError(f"{exc.strerror or exc} opening {what}", errno=exc.errno, hint=FD_LIMIT_HINT)
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFoundError(f"{what} not found")
    return BackendError(f"I/O error on {what}: {exc.strerror or exc}")


def _ensure_dir(directory: Path) -> None:
    """Make ``directory`` exist durably: each missing level is made and its parent fsynced (also
    when another thread made it first: its fsync may not have happened yet), so an object saved
    into it survives a power cut (a pack directory lost by a tool that drops empty directories)."""
    if directory.is_dir():
        return
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        _fsync_dir(d.parent)


class LocalBackend(NoColdStorage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        return str(self.root)

    def _dir(self, ftype: FileType, name: str) -> Path:
        if ftype is FileType.CONFIG:
            return self.root
        if ftype is FileType.PACK:
            return Path(self.root, ftype.value, name[:2])
        return Path(self.root, ftype.value)

    def _path(self, ftype: FileType, name: str) -> Path:
        if ftype is FileType.CONFIG:
            return self.root / "config"
        if not name or "/" in name or name.startswith("."):
            raise BackendError(f"invalid object name {name!r}")
        return self._dir(ftype, name) / name

    def create(self) -> None:
        if (self.root / "config").exists():
            raise RepositoryExistsError(f"a repository already exists at {self.root}")
        try:
            _ensure_dir(self.root)
            for t in FileType:
                if t is not FileType.CONFIG:
                    (self.root / t.value).mkdir(exist_ok=True)
            for i in range(256):
                (self.root / FileType.PACK.value / f"{i:02x}").mkdir(exist_ok=True)
            _fsync_dir(self.root / FileType.PACK.value)
            _fsync_dir(self.root)
        except OSError as exc:
            raise convert_os_error(exc, f"repository directory {self.root}") from exc

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        final = self._path(ftype, name)
        directory = final.parent
        tmp = directory / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        what = f"{ftype.value}/{name}"
        try:
            _ensure_dir(directory)
            fd, direct = open_for_write(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, len(data))
            try:
                write_all(fd, data, direct)
                os.fsync(fd)
            finally:
                os.close(fd)
            if create_only:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    raise ObjectExistsError(f"{what} already exists") from None
                finally:
                    os.unlink(tmp)
            else:
                os.replace(tmp, final)
            _fsync_dir(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise convert_os_error(exc, what) from exc
        except BaseException:  # interrupted (Ctrl-C, the agent's SIGTERM): no temp file left behind
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        what = f"{ftype.value}/{name}"
        try:
            if length is None:
                with open(self._path(ftype, name), "rb") as f:
                    f.seek(offset)
                    data = f.read()
            else:  # a range: open, one pread, close (no buffered file object)
                fd = os.open(self._path(ftype, name), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    data = os.pread(fd, length, offset)
                    while 0 < len(data) < length:  # a short read before the end: read on
                        more = os.pread(fd, length - len(data), offset + len(data))
                        if not more:
                            break
                        data += more
                finally:
                    os.close(fd)
        except OSError as exc:
            raise convert_os_error(exc, what) from exc
        if length is not None and len(data) != length:
            raise BackendError(f"{what}: short read ({len(data)} of {length} bytes at offset {offset})")
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        try:
            return self._path(ftype, name).stat().st_size
        except OSError as exc:
            raise convert_os_error(exc, f"{ftype.value}/{name}") from exc

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        if ftype is FileType.CONFIG:
            p = self.root / "config"
            if p.exists():
                yield "config", p.stat().st_size
            return
        base = self.root / ftype.value
        dirs = sorted(d for d in base.iterdir() if d.is_dir()) if ftype is FileType.PACK else [base]
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            for e in entries:
                if e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                    continue
                try:
                    size = e.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # removed between the directory read and the stat (a released lock)
                yield e.name, size

    def list_temp_files(self) -> builtins.list[Path]:
        """Leftover ``.tmp-*`` files of interrupted writes (harmless; prune removes them)."""
        return [p for p in self.root.rglob(f"{_TMP_PREFIX}*") if p.is_file()]

    def remove_temp(self, min_age: float) -> int:
        """Unlink the ``.tmp-*`` files of interrupted saves whose mtime is over ``min_age`` seconds
        ago (a younger one may be a save still being written). Returns the number removed."""
        n = 0
        now = time.time()
        for path in self.list_temp_files():
            try:
                if now - path.stat().st_mtime > min_age:
                    path.unlink()
                    n += 1
            except FileNotFoundError:
                continue  # renamed into place or removed meanwhile
            except OSError as exc:
                raise convert_os_error(exc, f"temp file {path}") from exc
        return n

    @property
    def supports_retention(self) -> bool:
        return False

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        raise BackendError(f"retention is not supported by the local directory backend ({self.root})",
                           hint="retention-locked snapshots need S3 with Object Lock (--s3-object-lock)")

    def remove(self, ftype: FileType, name: str) -> None:
        path = self._path(ftype, name)
        try:
            path.unlink()
            _fsync_dir(path.parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise convert_os_error(exc, f"{ftype.value}/{name}") from exc

    def free_space(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def total_space(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize  # used + available, as df's Use%
