"""``restore --swap``: restore beside the live directory, verify, validate, swap into place.

The steps, each one durable before the next (a kill at any point loses nothing):

1. ``<parent>/.<name>.wv-swap-<random>/`` is made; the snapshot is restored into it (every file
   SHA-256-checked before it is renamed into place) and validated.
2. ``state.json`` is written into it (temp, fsync, rename, fsync): the target, the chosen safety
   copy name, and the inode numbers of the live directory and of the new copy.
3. The two are exchanged (Linux ``renameat2(RENAME_EXCHANGE)``, one atomic step; elsewhere two
   renames, the live directory first).
4. The old contents, now inside the scratch directory, are renamed to ``<name>.before-<UTC
   time>`` without replacing anything (``RENAME_NOREPLACE``; a name already taken, e.g. by a swap
   in the same second, gets a ``-2``, ``-3`` ... suffix).
5. The scratch directory, which then holds nothing of the user's, is removed.

Before it starts, a swap looks for scratch directories of earlier swaps of the same target that
were killed, and finishes or undoes each from its state: a copy that was never swapped in is
removed; old contents left inside a scratch directory are moved to a safety copy; a scratch
directory it cannot account for (one an older weightvault left, which kept the old contents at
its top level) is left alone and reported. What it did is reported in ``SwapResult.recovered``.
Nothing here ever deletes a directory that may hold the user's previous contents. Two swaps of
one target never run at the same time: each holds ``<parent>/.<name>.wv-swap.lock`` (``flock``,
released by the kernel if the process dies; the file is removed when the swap ends), and a second
one is refused with ``RestoreConflictError`` before it touches anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from weightvault.errors import RestoreConflictError, UsageError, ValidationFailedError
from weightvault.ops.restore import RestoreResult
from weightvault.ops.validate import ValidationReport
from weightvault.repository.snapshots import Snapshot

__all__ = ["SwapRepo", "SwapResult", "recover", "swap_restore"]

log = logging.getLogger(__name__)

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_STATE = "state.json"
_NEW = "new"


class SwapRepo(Protocol):
    """What a swap needs of a repository (``weightvault.api.Repository`` is one)."""

    def restore(self, *args: Any, **kwargs: Any) -> RestoreResult: ...

    def validate(self, *args: Any, **kwargs: Any) -> ValidationReport: ...

    def backup(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class SwapResult:
    """``restore_swap``: what is now at ``target``, where its previous contents went, and what
    was found and cleaned up from earlier swaps that were interrupted (``recovered``)."""

    snapshot: str
    target: str
    previous: str | None  # the dated safety copy, or None if target did not exist
    restore: RestoreResult
    report: ValidationReport
    previous_snapshot: str | None = None  # with backup_previous: the snapshot of the safety copy
    recovered: list[str] = field(default_factory=list)


def swap_restore(repo: SwapRepo, snap: Snapshot, target: str | os.PathLike[str], *, level: int,
                 check: str | None = None, progress: Any = None, backup_previous: bool = False) -> SwapResult:
    """See the module docstring. Any failure before step 3 removes the new copy and leaves
    ``target`` untouched (the error is raised)."""
    if len(snap.paths) != 1:
        raise UsageError(f"snapshot {snap.short_id} has {len(snap.paths)} source paths; --swap needs exactly one",
                         hint="restore it with --target and move the parts yourself")
    dest = Path(target).absolute()
    with _swap_lock(dest):
        return _locked_swap(repo, snap, dest, level, check, progress, backup_previous)


@contextlib.contextmanager
def _swap_lock(dest: Path) -> Any:
    """Hold the target's swap lock; RestoreConflictError if another swap holds it. The lock file
    is removed on the way out, still locked; a swap that opened it meanwhile sees after its
    ``flock`` that the name no longer leads to its file, and takes the new one."""
    path = dest.parent / f".{dest.name}.wv-swap.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RestoreConflictError(f"another restore --swap of {dest} is running",
                                       hint="wait for it to finish, then run this one again") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _locked_swap(repo: SwapRepo, snap: Snapshot, dest: Path, level: int, check: str | None, progress: Any,
                 backup_previous: bool) -> SwapResult:
    recovered = recover(dest)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.wv-swap-", dir=dest.parent))
    try:
        restored = repo.restore(snap.id, scratch / _NEW, verify=True, progress=progress)
        new = scratch / _NEW / os.path.basename(snap.paths[0])
        report = repo.validate(snap.id, new, level=level, check=check, hashed=True)
        if not report.ok:
            bad = report.failed[0] if report.failed else None
            raise ValidationFailedError(
                f"the restored copy failed validation at level {level}: "
                + (f"{bad.path}: {bad.problems[0]}" if bad else "; ".join(report.check_problems[:3])),
                hint=f"{dest} was left untouched")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)  # holds only the new copy: nothing was swapped yet
        raise
    previous = _swap(scratch, new, dest)
    saved = None
    if backup_previous and previous is not None:
        saved = repo.backup([previous], tags=["safety-copy", f"replaced-by={snap.short_id}"]).snapshot.id
    return SwapResult(snap.id, str(dest), str(previous) if previous else None, restored, report, saved, recovered)


def _swap(scratch: Path, new: Path, dest: Path) -> Path | None:
    """Steps 2 to 5; returns the safety copy (None if ``dest`` did not exist)."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(new, dest)
        _fsync_dir(dest.parent)
        shutil.rmtree(scratch)
        return None
    _write_state(scratch, {"target": str(dest), "dest_ino": os.lstat(dest).st_ino, "new_ino": os.lstat(new).st_ino,
                           "parked": str(new.relative_to(scratch))})
    if _rename2(new, dest, _RENAME_EXCHANGE):
        parked = new  # the old contents
    else:  # two renames: the live directory first, so a kill in between leaves both copies
        parked = scratch / "old"
        os.rename(dest, parked)
        os.rename(new, dest)
    _fsync_dir(dest.parent)
    previous = _park_previous(parked, dest)
    _fsync_dir(scratch)
    shutil.rmtree(scratch)
    return previous


def _park_previous(old: Path, dest: Path) -> Path:
    """Rename ``old`` to the first free ``<dest>.before-<UTC time>[-N]`` (never replacing)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        candidate = dest.with_name(f"{dest.name}.before-{stamp}" + (f"-{n}" if n > 1 else ""))
        if _move_noreplace(old, candidate):
            _fsync_dir(dest.parent)
            return candidate
    raise FileExistsError(errno.EEXIST, "no free name for the safety copy", str(dest))


def recover(dest: Path) -> list[str]:
    """Finish or undo earlier swaps of ``dest`` that were killed (module docstring); returns what
    was done, one line each."""
    done: list[str] = []
    if not dest.parent.is_dir():
        return done
    for scratch in sorted(dest.parent.glob(f".{glob.escape(dest.name)}.wv-swap-*")):
        if scratch.is_dir() and not scratch.is_symlink():
            line = _recover_one(scratch, dest)
            if line:
                done.append(line)
    return done


def _recover_one(scratch: Path, dest: Path) -> str | None:
    state = _read_state(scratch)
    if state and state.get("target") != str(dest):
        return None  # another target's swap (a name that only looks alike): not ours to touch
    if not state and not {p.name for p in scratch.iterdir()} <= {_NEW, f".{_STATE}.tmp"}:
        return (f"left {scratch} in place: it is not laid out as this version's swaps are, and may hold"
                f" the previous contents of {dest} from an interrupted swap; look inside, then remove it")

    def holding(ino: object) -> list[Path]:
        """The places inside ``scratch`` where a swap leaves a tree, if it is the one with ``ino``."""
        spots = [scratch / str(state.get("parked")), scratch / "old"] if state else []
        return [p for p in spots if (p.exists() or p.is_symlink()) and os.lstat(p).st_ino == ino]

    if state and not (dest.exists() or dest.is_symlink()) and holding(state["dest_ino"]):
        for new in holding(state["new_ino"]):  # killed between the two renames: finish the swap
            os.rename(new, dest)
            _fsync_dir(dest.parent)
    held = holding(state["dest_ino"]) if state else []
    if held:  # the previous contents are in here: give them their safety-copy name first
        previous = _park_previous(held[0], dest)
        shutil.rmtree(scratch)
        return f"an interrupted swap of {dest} was finished: its previous contents are in {previous}"
    shutil.rmtree(scratch)  # a restored copy that was never swapped in, or an emptied scratch directory
    return f"removed {scratch.name}, left by an interrupted swap of {dest} (none of its previous contents)"


def _write_state(scratch: Path, doc: dict[str, Any]) -> None:
    tmp = scratch / f".{_STATE}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, scratch / _STATE)
    _fsync_dir(scratch)


def _read_state(scratch: Path) -> dict[str, Any]:
    try:
        doc = json.loads((scratch / _STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    ok = isinstance(doc, dict) and all(isinstance(doc.get(k), int) for k in ("dest_ino", "new_ino"))
    return doc if ok and isinstance(doc.get("parked"), str) else {}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_noreplace(src: Path, dst: Path) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (False then)."""
    try:
        if _rename2(src, dst, _RENAME_NOREPLACE):
            return True
    except FileExistsError:
        return False
    if dst.exists() or dst.is_symlink():  # no renameat2 here: check, then rename
        return False
    os.rename(src, dst)
    return True


def _rename2(a: Path, b: Path, flags: int) -> bool:
    """Linux renameat2(a, b, flags); False where the kernel or filesystem lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))
