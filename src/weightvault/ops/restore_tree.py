"""The directory tree of a restore, by number, and its directories opened safely (``ops.restore``).

Every directory a snapshot's entries lie in gets a number (0: the restore target), its parent's
number and its name; each entry is placed as (parent number, name, and its own number if it is a
directory). Memory and time are linear in the manifest's size whatever its depth: no entry holds
the list of its path's components, and directories are looked up by number, not by path.

``Dirs`` opens a numbered directory one component at a time relative to directory fds, with
``O_NOFOLLOW``, so no symlink (planted in the snapshot or already in the target) is ever
followed. It keeps at most a quarter of the open-file limit (8..128) of fds, closing the least
recently used. A directory whose fd was closed is reached again from its nearest open ancestor,
or, when one of its children is still open, through that child's ``..``, taken only if it is the
very directory (device and inode) opened before: walking a deep tree deepest first (the metadata
pass) then costs one open per directory instead of a walk from the top each time.
"""

from __future__ import annotations

import errno
import os
import resource
from collections import OrderedDict
from typing import NamedTuple

from weightvault.errors import UnsafePathError
from weightvault.ops import restore_temps

__all__ = ["NAME_MAX", "Dirs", "Place", "Tree"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


NAME_MAX = 255  # bytes in one name (Linux, and most file systems)


def _check_name(name: bytes, entry: bytes) -> None:
    if len(name) > NAME_MAX:
        shown = os.fsdecode(entry)
        raise UnsafePathError(f"snapshot entry {shown[:160]!r}{'...' if len(shown) > 160 else ''} has a name of"
                              f" {len(name)} bytes, over the {NAME_MAX} a Linux file system can hold; refusing to"
                              " restore", hint="restore the other entries with --include, or on a system that allows"
                              " longer names")


class Place(NamedTuple):
    parent: int  # the number of the directory the entry is in (0: the target)
    name: bytes
    dir_id: int = -1  # a directory's own number; -1 for other entries


class Tree:
    """Numbers for directories (0 is the target). ``place`` registers an entry and any
    directories above it that the snapshot implies without listing them."""

    def __init__(self, leaves: set[bytes]) -> None:
        self.leaves = leaves  # paths of the snapshot's non-directories: nothing may lie below one
        self.parent: list[int] = [0]
        self.name: list[bytes] = [b""]
        self._ids: dict[bytes, int] = {}

    def _new(self, parent: int, name: bytes, entry: bytes) -> int:
        _check_name(name, entry)
        self.parent.append(parent)
        self.name.append(name)
        return len(self.parent) - 1

    def _dir(self, path: bytes, entry: bytes) -> int:
        """The number of directory ``path`` (registering it and its unlisted ancestors);
        UnsafePathError if it or an ancestor is a leaf (``entry`` names the entry placed)."""
        walked: list[bytes] = []
        p, top = path, 0
        while True:
            if p in self.leaves:
                raise UnsafePathError(f"snapshot entry {os.fsdecode(entry)!r} lies below a file or symlink of the"
                                      " same snapshot; refusing to restore")
            known = self._ids.get(p)
            if known is not None:
                top = known
                break
            walked.append(p)
            cut = p.rfind(b"/")
            if cut < 0:
                break
            p = p[:cut]
        for q in reversed(walked):
            top = self._ids[q] = self._new(top, q[q.rfind(b"/") + 1:], entry)
        return top

    def place(self, path: bytes, is_dir: bool) -> Place:
        cut = path.rfind(b"/")
        parent = self._dir(path[:cut], path) if cut >= 0 else 0
        name = path[cut + 1:]
        if not is_dir:
            _check_name(name, path)
            return Place(parent, name)
        own = self._ids.get(path)
        if own is None:
            own = self._ids[path] = self._new(parent, name, path)
        return Place(parent, name, own)

    def path_of(self, did: int) -> str:
        """The directory's path below the target, for messages."""
        names: list[bytes] = []
        while did:
            names.append(self.name[did])
            did = self.parent[did]
        return os.fsdecode(b"/".join(reversed(names)))


class Dirs:
    """Opens numbered directories of ``tree`` under ``root_fd`` (module docstring). A returned
    fd is only valid until the next ``open``."""

    def __init__(self, root_fd: int, tree: Tree, sweep: bool = False) -> None:
        """``sweep``: a directory that already existed has the temporary files of interrupted
        restores removed when it is first opened (``restore_temps.sweep``)."""
        self.root_fd, self.tree, self.sweep = root_fd, tree, sweep
        if sweep:
            restore_temps.sweep(root_fd)
        self._cache: OrderedDict[int, int] = OrderedDict()
        self._inode: dict[int, tuple[int, int]] = {}  # what each directory was when opened
        self._child: dict[int, int] = {}  # a directory -> its child opened last
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._max_open = 128 if soft == resource.RLIM_INFINITY else max(8, min(128, soft // 4))

    def _cached(self, did: int) -> int | None:
        if did == 0:
            return self.root_fd
        fd = self._cache.get(did)
        if fd is not None:
            self._cache.move_to_end(did)
        return fd

    def open(self, did: int, create: bool) -> int:
        """The fd of directory ``did``, opening (and with ``create`` making) each missing level."""
        fd = self._cached(did)
        if fd is not None:
            return fd
        fd = self._via_child(did)
        if fd is not None:
            return fd
        chain = []
        while (fd := self._cached(did)) is None:
            chain.append(did)
            did = self.tree.parent[did]
        for d in reversed(chain):
            fd = self._open_child(fd, d, create)
        return fd

    def _via_child(self, did: int) -> int | None:
        child = self._child.get(did)
        cfd = self._cache.get(child) if child is not None else None
        if cfd is None or did not in self._inode:
            return None
        try:
            fd = os.open("..", _DIR_FLAGS, dir_fd=cfd)
        except OSError:
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._inode[did]:  # moved or replaced meanwhile: walk from the top
            os.close(fd)
            return None
        self._keep(did, fd)
        return fd

    def _open_child(self, parent: int, did: int, create: bool) -> int:
        name = self.tree.name[did]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            if self.sweep and did not in self._inode:
                restore_temps.sweep(fd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(
                    f"{self.tree.path_of(did)} in the target is a symlink or not a directory; refusing to"
                    " write through it",
                    hint="restore into an empty directory or remove the conflicting entry",
                ) from exc
            if exc.filename == name:  # name the directory by its path in the snapshot
                raise OSError(exc.errno, exc.strerror, self.tree.path_of(did)) from exc
            raise
        st = os.fstat(fd)
        self._inode[did] = (st.st_dev, st.st_ino)
        self._keep(did, fd)
        return fd

    def _keep(self, did: int, fd: int) -> None:
        self._cache[did] = fd
        self._child[self.tree.parent[did]] = did
        if len(self._cache) > self._max_open:
            os.close(self._cache.popitem(last=False)[1])

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
