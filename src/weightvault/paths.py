"""Where weightvault keeps its files on this machine: the XDG base directories, in one place.

Each ``$XDG_*_HOME`` variable is honoured when it holds an absolute path; an empty or relative
value is ignored, as the XDG Base Directory Specification asks, and the default under ``$HOME``
is used instead. Every function returns the ``weightvault`` directory inside the base directory
(created by the caller when it writes there).

    data_home()     $XDG_DATA_HOME   (~/.local/share)  the embedded default repository
    config_home()   $XDG_CONFIG_HOME (~/.config)       the default repository's key file, policy.toml
    state_home()    $XDG_STATE_HOME  (~/.local/state)  the policy journal, verify sampling state
    cache_home()    $XDG_CACHE_HOME  (~/.cache)        the ledger's SQLite catalog

``fsync_dir`` is the one helper every layer uses to make a rename or create in a directory durable.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["atomic_write", "cache_home", "config_home", "data_home", "fsync_dir", "read_small_regular", "state_home"]


def _base(var: str, *default: str) -> Path:
    value = os.environ.get(var, "")
    if value and os.path.isabs(value):
        return Path(value) / "weightvault"
    return Path(os.path.expanduser("~"), *default, "weightvault")


def data_home() -> Path:
    return _base("XDG_DATA_HOME", ".local", "share")


def config_home() -> Path:
    return _base("XDG_CONFIG_HOME", ".config")


def state_home() -> Path:
    return _base("XDG_STATE_HOME", ".local", "state")


def cache_home() -> Path:
    return _base("XDG_CACHE_HOME", ".cache")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries durable (after a create, rename or unlink in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_small_regular(path: str | os.PathLike[str], limit: int, *, follow_symlinks: bool = True) -> bytes | None:
    """The contents of ``path`` if it is a regular file of at most ``limit`` bytes, else None (also
    for any OSError). Never blocks on a FIFO or device: it is opened non-blocking and only read
    once fstat says it is a regular file."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` durably: a temp file beside it, written, fsynced, renamed over
    ``path``, the directory fsynced. A crash leaves the old file or the new one, never a part."""
    target = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)
