"""Walking source trees for backup: depth-first, siblings sorted by name bytes, never following
symlinks, with include/exclude globs and CACHEDIR.TAG handling."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["CACHEDIR_SIGNATURE", "Entry", "WalkError", "matches_any", "walk_source"]

CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


@dataclass(slots=True)
class Entry:
    """A filesystem object found by the walk. ``rel`` is the manifest path (bytes, "/"-separated)."""

    abs: bytes
    rel: bytes
    st: os.stat_result


@dataclass(slots=True)
class WalkError:
    rel: bytes
    reason: str


def matches_any(rel: bytes, patterns: list[str]) -> bool:
    """True if a glob matches the whole relative path, any of its parent paths, or its basename."""
    if not patterns:
        return False
    text = os.fsdecode(rel)
    parts = text.split("/")
    cands = ["/".join(parts[: i + 1]) for i in range(len(parts))] + [parts[-1]]
    return any(fnmatch.fnmatchcase(c, p.rstrip("/")) for p in patterns for c in cands)


def _is_cache_dir(path: bytes) -> bool:
    try:
        with open(os.path.join(path, b"CACHEDIR.TAG"), "rb") as f:
            return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False


def walk_source(
    abs_path: bytes, root_name: bytes, excludes: list[str], exclude_caches: bool
) -> Iterator[Entry | WalkError]:
    """Yield entries (and errors for unreadable objects) in manifest order."""
    try:
        st = os.lstat(abs_path)
    except OSError as exc:
        yield WalkError(root_name, exc.strerror or str(exc))
        return
    yield Entry(abs_path, root_name, st)
    if stat.S_ISDIR(st.st_mode):
        yield from _walk_dir(abs_path, root_name, excludes, exclude_caches)


def _walk_dir(path: bytes, rel: bytes, excludes: list[str], exclude_caches: bool) -> Iterator[Entry | WalkError]:
    try:
        with os.scandir(path) as it:
            names = sorted(e.name for e in it)
    except OSError as exc:
        yield WalkError(rel, f"cannot list directory: {exc.strerror or exc}")
        return
    cache = exclude_caches and b"CACHEDIR.TAG" in names and _is_cache_dir(path)
    for name in names:
        if cache and name != b"CACHEDIR.TAG":
            continue
        child_rel = rel + b"/" + name
        if matches_any(child_rel, excludes):
            continue
        child = os.path.join(path, name)
        try:
            st = os.lstat(child)
        except OSError as exc:
            yield WalkError(child_rel, exc.strerror or str(exc))
            continue
        yield Entry(child, child_rel, st)
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(child, child_rel, excludes, exclude_caches)
