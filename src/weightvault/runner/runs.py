"""A whole run as of a time: ``policy apply`` keeps one snapshot series per data class of a source
(tags ``source=NAME`` and ``class=NAME``, each with its own interval and retention), so the run
at a moment is the newest snapshot of every class at or before it. ``restore_run`` restores them
all into one target; the classes hold disjoint files (a file belongs to the first class matching
it), so they assemble the run's directory without conflicts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from weightvault.errors import NoMatchError, SnapshotNotFoundError
from weightvault.ops.restore import RestoreResult
from weightvault.repository.snapshots import Snapshot

__all__ = ["RunRestore", "restore_run", "run_snapshots"]


class RunRepo(Protocol):
    def snapshots(self, *args: Any, **kwargs: Any) -> list[Snapshot]: ...

    def restore(self, *args: Any, **kwargs: Any) -> RestoreResult: ...


@dataclass
class RunRestore:
    """The snapshots restored (one per class, by class name) and the combined counts."""

    source: str
    at: str | None
    snapshots: dict[str, str] = field(default_factory=dict)  # class -> snapshot id
    restore: RestoreResult = field(default_factory=RestoreResult)


def run_snapshots(snaps: list[Snapshot], source: str, at: datetime | None = None) -> dict[str, Snapshot]:
    """Class -> the newest snapshot of ``source`` and that class at or before ``at`` (default:
    now), among those holding the same paths as the newest one of the source (a run that moved
    directories is the newest location's). A snapshot without a class tag counts as class ""."""
    mine = [s for s in snaps if s.has_tag(f"source={source}") and (at is None or s.datetime <= at)]
    if not mine:
        when = f" at or before {at.isoformat()}" if at else ""
        raise SnapshotNotFoundError(f"no snapshot of source {source!r}{when}",
                                    hint="list them with `weightvault snapshots --tag source=NAME`")
    newest = max(mine, key=lambda s: (s.datetime, s.id))
    out: dict[str, Snapshot] = {}
    for s in sorted(mine, key=lambda s: (s.datetime, s.id)):
        if sorted(s.paths) == sorted(newest.paths):
            out[s.tag_dict().get("class", "")] = s
    return out


def restore_run(repo: RunRepo, source: str, target: str | os.PathLike[str], *, at: datetime | None = None,
                **options: Any) -> RunRestore:
    """Restore the run ``source`` as of ``at`` into ``target``: every class's snapshot
    (``run_snapshots``), each with ``repo.restore(..., **options)``."""
    picks = run_snapshots(repo.snapshots(), source, at)
    res = RunRestore(source, at.isoformat() if at else None)
    unmatched: NoMatchError | None = None
    for name, snap in sorted(picks.items()):
        try:
            part = repo.restore(snap.id, target, **options)
        except NoMatchError as exc:  # --include matches nothing of this class: the others may hold it
            unmatched = exc
            continue
        res.snapshots[name] = snap.id
        for k in ("files", "dirs", "symlinks", "bytes", "skipped", "verified"):
            setattr(res.restore, k, getattr(res.restore, k) + getattr(part, k))
    if not res.snapshots and unmatched is not None:
        raise unmatched
    return res
