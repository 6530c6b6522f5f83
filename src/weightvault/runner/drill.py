"""Restore drills: pick a snapshot, restore it into scratch space, validate it, time it, clean up."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from weightvault.chunking.registry import looks_like_model
from weightvault.errors import ColdDataError, SnapshotNotFoundError, UsageError, ValidationFailedError, WeightvaultError
from weightvault.ops import retention
from weightvault.ops.restore import RestoreResult
from weightvault.ops.validate import ValidationReport, locate_check
from weightvault.policy import journal as journal_mod
from weightvault.repository.manifest import Node
from weightvault.repository.snapshots import Snapshot

__all__ = ["DrillRepo", "DrillResult", "drill", "holds_models", "pick_snapshot"]


class DrillRepo(Protocol):
    """What a drill needs of a repository (``weightvault.api.Repository`` is one)."""

    @property
    def location(self) -> str: ...

    def snapshots(self, *args: Any, **kwargs: Any) -> list[Snapshot]: ...

    def restore(self, *args: Any, **kwargs: Any) -> RestoreResult: ...

    def validate(self, *args: Any, **kwargs: Any) -> ValidationReport: ...

    def ls(self, *args: Any, **kwargs: Any) -> list[Node]: ...

    def thaw(self, *args: Any, **kwargs: Any) -> Any: ...


def holds_models(repo: DrillRepo, snap: Snapshot) -> bool:
    """Whether the snapshot holds a file whose name says model data (``.safetensors``, ``.pt`` ...)."""
    return any(n.type == "file" and looks_like_model(os.fsdecode(n.path)) for n in repo.ls(snap.id))


@dataclass
class DrillResult:
    """What a restore drill did: the snapshot, whether restore and validation passed, the time
    to restore and validate (``rto_s``), and the validation report."""

    snapshot: str
    level: int
    ok: bool
    time: str
    rto_s: float = 0.0
    restore_s: float = 0.0
    validate_s: float = 0.0
    files: int = 0
    bytes: int = 0
    error: str | None = None
    report: ValidationReport | None = None
    skipped: str | None = None  # not drilled, and why (its data is in cold storage): neither ok nor failed

    def journal_entry(self, repository: str) -> dict[str, Any]:
        return {"time": self.time, "step": "drill", "repository": repository, "snapshot": self.snapshot,
                "level": self.level, "ok": self.ok, "rto_s": round(self.rto_s, 3), "bytes": self.bytes,
                "detail": self.skipped or self.error
                or f"restored {self.files} files and validated them at level {self.level}",
                **({"skipped": True} if self.skipped else {})}


def pick_snapshot(snaps: list[Snapshot], pick: str, within: str | timedelta | None, clock: datetime,
                  seed: int | None, has_models: Callable[[Snapshot], bool] | None = None) -> Snapshot:
    """The newest (``latest``) or a random snapshot of ``snaps`` (oldest first), optionally only
    those ``within`` a time before ``clock``. With ``has_models``, one for which it is true is
    preferred (a drill of a logs-only snapshot proves little); if none is, any."""
    if pick not in ("latest", "random"):
        raise UsageError(f"unknown pick {pick!r}", hint="use latest or random")
    if within is not None:
        span = retention.parse_duration(within) if isinstance(within, str) else within
        snaps = [s for s in snaps if s.datetime >= clock - span]
    if not snaps:
        raise SnapshotNotFoundError("no snapshot to drill" + (f" within {within}" if within else ""))
    order = snaps[::-1]
    if pick == "random":
        random.Random(seed).shuffle(order)
    if has_models is not None:
        return next((s for s in order if has_models(s)), order[0])
    return order[0]


def drill(repo: DrillRepo, snap: Snapshot, *, level: int, clock: datetime, workdir: str | os.PathLike[str] | None,
          check: str | None, journal: Path | None, progress: Any = None, allow_cold: bool = False) -> DrillResult:
    """Restore ``snap`` into a fresh temporary directory (every file SHA-256-checked before it is
    renamed into place, so validation does not hash again), validate it at ``level``, measure
    the restore time (RTO), remove the copy; append the outcome to ``journal`` if given. A failed
    restore or validation is a result, not an error. Data in an offline storage class makes the
    drill ``skipped`` (it costs money and hours), unless ``allow_cold``: then its restore is
    requested and the drill runs once it is online (skipped, saying so, until then)."""
    result = DrillResult(snap.id, level, False, clock.isoformat())
    tmp = Path(tempfile.mkdtemp(prefix="wv-drill-", dir=workdir))
    try:
        t0 = time.perf_counter()
        try:
            if allow_cold and not (thawed := repo.thaw(snap.id)).ready:
                raise ColdDataError(f"restore of {thawed.packs - thawed.online} data pack(s) from cold storage"
                                    f" requested; run the drill again once they are online ({thawed.typical_wait})")
            problem = locate_check(check, tmp) if check and level >= 4 else None
            if problem is not None:  # before the restore: a typo in --check fails at once
                raise ValidationFailedError(f"level 4: {problem}")
            _restore_and_validate(repo, snap, tmp, level, check, result, progress)
        except ValidationFailedError as exc:
            result.error = exc.message
        except ColdDataError as exc:
            result.skipped = exc.message if allow_cold else (f"skipped: the data is in cold storage ({exc.message});"
                                                             " --allow-cold requests it (costs money and hours)")
        except WeightvaultError as exc:
            result.error = f"restore failed: {exc.message}"
        result.rto_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if journal is not None:
        journal_mod.append_record(journal, result.journal_entry(repo.location))
    return result


def _restore_and_validate(repo: DrillRepo, snap: Snapshot, tmp: Path, level: int, check: str | None,
                          result: DrillResult, progress: Any = None) -> None:
    t0 = time.perf_counter()
    restored = repo.restore(snap.id, tmp, verify=True, progress=progress)
    result.restore_s = time.perf_counter() - t0
    result.files, result.bytes = restored.files, restored.bytes
    root = tmp / os.path.basename(snap.paths[0]) if len(snap.paths) == 1 else tmp
    t1 = time.perf_counter()
    result.report = repo.validate(snap.id, root, level=level, check=check, hashed=True)
    result.validate_s = time.perf_counter() - t1
    result.ok = result.report.ok
    if not result.ok and result.report.failed:
        bad = result.report.failed[0]
        result.error = f"{len(result.report.failed)} file(s) failed; first: {bad.path}: {bad.problems[0]}"
    elif not result.ok:
        result.error = "; ".join(result.report.check_problems[:3])
