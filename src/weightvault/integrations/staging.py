"""Pinning a checkpoint for a queued upload, without copying it.

``pin(path, key)`` makes ``<staging>/<key>/<basename of path>``: the same tree, every regular file
hard-linked (so a trainer that deletes or replaces the checkpoint meanwhile, ``save_total_limit``,
an atomic save by rename, cannot change what gets backed up: our link keeps the old inode),
symlinks copied as links. A link cannot protect against a program that rewrites a file *in place*
(same inode): ``<key>/pinned.json`` records each file's size and mtime, and ``changed_since_pin``
tells the worker which files were rewritten so, to report them. ``<staging>`` is ``$XDG_STATE_HOME/weightvault/staging``
when that is on the checkpoint's file system, else ``.weightvault-staging`` beside the
checkpoint; if neither can hold links (another file system, no permission), files are copied and
the result says so. The staged tree is complete (and fsynced) before ``pin`` returns; a crash
before leaves a partial tree that no job names, which ``sweep`` removes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from weightvault.errors import LocalPathError
from weightvault.paths import fsync_dir, state_home

__all__ = ["Pinned", "changed_since_pin", "pin", "staging_roots", "sweep", "unpin"]

BESIDE = ".weightvault-staging"


@dataclass(frozen=True)
class Pinned:
    path: Path  # the staged copy, named like the original
    copied: bool  # files were copied (no hard links possible)


def staging_roots(path: Path) -> list[Path]:
    """Where a checkpoint at ``path`` may be staged, best first."""
    state = state_home() / "staging"
    roots = []
    try:
        state.mkdir(parents=True, exist_ok=True)
        if os.stat(state).st_dev == os.stat(path).st_dev:
            roots.append(state)
    except OSError:
        pass
    roots.append(path.parent / BESIDE)
    roots.append(state)
    return roots


def _tree(src: Path, dst: Path, link: bool) -> None:
    """``dst`` as a copy of the tree ``src``: files hard-linked (``link``) or copied."""
    if src.is_file() and not src.is_symlink():
        os.link(src, dst) if link else shutil.copy2(src, dst)
        return
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = dst / rel if rel != "." else dst
        out.mkdir(parents=True, exist_ok=True)
        for name in dirnames + filenames:
            s = os.path.join(dirpath, name)
            if os.path.islink(s):
                os.symlink(os.readlink(s), out / name)
                if name in dirnames:
                    dirnames.remove(name)
            elif name in filenames:
                if link:
                    os.link(s, out / name)
                else:
                    shutil.copy2(s, out / name)
        fsync_dir(str(out))


def pin(path: str | os.PathLike[str], key: str) -> Pinned:
    """Stage ``path`` (a checkpoint directory or file) under ``key``; see the module docstring."""
    src = Path(path).absolute()
    if not src.exists():
        raise LocalPathError(f"{src}: does not exist: nothing to back up")
    last: OSError | None = None
    for link in (True, False):
        for root in staging_roots(src) if link else [state_home() / "staging"]:
            dst = root / key / src.name
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                _tree(src, dst, link)
                _record(dst)
                fsync_dir(str(dst.parent))
                return Pinned(dst, not link)
            except OSError as exc:
                last = exc
                shutil.rmtree(root / key, ignore_errors=True)
    raise LocalPathError(f"{src}: cannot be staged for upload: {last}", hint="check the free space and permissions")


def _files(root: Path) -> dict[str, tuple[int, int]]:
    if root.is_file():
        st = root.stat()
        return {root.name: (st.st_size, st.st_mtime_ns)}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _record(dst: Path) -> None:
    path = dst.parent / "pinned.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_files(dst), f)
        f.flush()
        os.fsync(f.fileno())


def changed_since_pin(staged: str | os.PathLike[str]) -> list[str]:
    """Files of a staged tree whose size or mtime changed after ``pin`` (rewritten in place)."""
    root = Path(staged)
    try:
        pinned = json.loads((root.parent / "pinned.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    now = _files(root)
    return sorted(k for k, v in pinned.items() if tuple(v) != now.get(k))


def unpin(staged: str | os.PathLike[str]) -> None:
    """Remove a staged tree (its ``<key>`` directory)."""
    shutil.rmtree(Path(staged).parent, ignore_errors=True)


def sweep(roots: list[Path], keep: set[str], min_age_s: float = 3600.0) -> int:
    """Remove staged trees under ``roots`` whose key is not in ``keep`` and that are older than
    ``min_age_s`` (left by a crash during ``pin``, or by a dropped job; a tree being pinned right
    now is not in the queue yet, and young); returns how many."""
    n = 0
    cutoff = time.time() - min_age_s
    for root in roots:
        for d in root.iterdir() if root.is_dir() else []:
            if d.is_dir() and d.name not in keep and d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
    return n
