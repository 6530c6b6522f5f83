"""Walking source trees for backup: depth-first, siblings sorted by name bytes, never following
symlinks, with include/exclude globs and CACHEDIR.TAG handling."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["CACHEDIR_SIGNATURE", "SIBLING_BATCH", "Entry", "WalkError", "matches_any", "reading_order", "sibling_files",
           "walk_source"]

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
    """True if a glob matches the relative path or one of its parent paths.

    Globs match path components: ``*``, ``?`` and ``[...]`` never match "/", ``**`` matches any
    number of components. A glob without "/" matches any single component (``*.tmp``, ``cache``),
    so it selects that entry and everything below it.
    """
    if not patterns:
        return False
    parts = os.fsdecode(rel).split("/")
    for p in patterns:
        pat = p.strip("/").split("/")
        if len(pat) == 1 and pat[0] != "**":
            if any(fnmatch.fnmatchcase(c, pat[0]) for c in parts):
                return True
        elif any(_match_parts(pat, parts[:i]) for i in range(1, len(parts) + 1)):
            return True
    return False


def _match_parts(pat: list[str], parts: list[str]) -> bool:
    if not pat:
        return not parts
    if pat[0] == "**":
        return any(_match_parts(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and _match_parts(pat[1:], parts[1:])


def _is_cache_dir(path: bytes) -> bool:
    try:
        with open(os.path.join(path, b"CACHEDIR.TAG"), "rb") as f:
            return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False


def walk_source(
    abs_path: bytes, root_name: bytes, excludes: list[str], exclude_caches: bool, includes: list[str] | None = None
) -> Iterator[Entry | WalkError]:
    """Yield entries (and errors for unreadable objects) in manifest order: depth-first, each
    directory before its children, siblings sorted by name bytes. Iterative, so depth is unbounded.
    With ``includes``, only directories and the other entries matching one of them are yielded
    (``matches_any``: a glob without "/" matches any path component)."""
    for item in _walk(abs_path, root_name, excludes, exclude_caches):
        if (
            includes and isinstance(item, Entry) and item.rel != root_name
            and not stat.S_ISDIR(item.st.st_mode) and not matches_any(item.rel, includes)
        ):
            continue
        yield item


def _walk(abs_path: bytes, root_name: bytes, excludes: list[str], exclude_caches: bool) -> Iterator[Entry | WalkError]:
    root = _entry(abs_path, root_name)
    yield root
    if not isinstance(root, Entry) or not stat.S_ISDIR(root.st.st_mode):
        return
    stack = [_children(abs_path, root_name, excludes, exclude_caches)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        yield item
        if isinstance(item, Entry) and stat.S_ISDIR(item.st.st_mode):
            stack.append(_children(item.abs, item.rel, excludes, exclude_caches))


def _entry(path: bytes, rel: bytes) -> Entry | WalkError:
    try:
        return Entry(path, rel, os.lstat(path))
    except OSError as exc:
        return WalkError(rel, exc.strerror or str(exc))


def _children(path: bytes, rel: bytes, excludes: list[str], exclude_caches: bool) -> Iterator[Entry | WalkError]:
    """The direct children of one directory, not descending."""
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
        if not matches_any(child_rel, excludes):
            yield _entry(os.path.join(path, name), child_rel)


SIBLING_BATCH = 64  # regular files of one directory whose reading order may change


def sibling_files(entries: Iterator[Entry | WalkError]) -> Iterator[list[Entry | WalkError]]:
    """The walk in batches: up to ``SIBLING_BATCH`` consecutive regular files of one directory
    together, every other entry alone. Concatenated, the batches are the walk in its order."""
    batch: list[Entry | WalkError] = []
    parent: bytes | None = None
    for e in entries:
        if isinstance(e, Entry) and stat.S_ISREG(e.st.st_mode):
            here = e.rel.rpartition(b"/")[0]
            if batch and (here != parent or len(batch) >= SIBLING_BATCH):
                yield batch
                batch = []
            batch.append(e)
            parent = here
            continue
        if batch:
            yield batch
            batch = []
        yield [e]
    if batch:
        yield batch


def reading_order(batch: list[Entry | WalkError]) -> list[int]:
    """The order in which a backup reads a batch of sibling files: safetensors files first,
    largest first (a model's F32 original before the BF16 export made from it, so the export can
    be stored as a cast of it), then the others in walk order."""

    def key(i: int) -> tuple[int, int]:
        e = batch[i]
        if isinstance(e, Entry) and e.rel.endswith(b".safetensors"):
            return 0, -e.st.st_size
        return 1, i

    return sorted(range(len(batch)), key=key)
