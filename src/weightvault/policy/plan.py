"""Pure planners: which backups are due, which snapshots move down a tier, which RPOs hold.

Snapshots written by ``policy apply`` carry the tags ``source=NAME`` and ``class=NAME``. The same
snapshot in several repositories (copies) is recognised by its *lineage*: time, host, paths and
tags, which ``copy`` preserves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from weightvault.policy.spec import TIERS, DataClass, PolicySpec, RepoSpec, SourceSpec
from weightvault.repository.snapshots import Snapshot

__all__ = ["BackupDue", "Lineage", "RpoLine", "TierStep", "class_tags", "due_backups", "lineage", "rpo_lines",
           "tier_plan"]

Lineage = tuple[str, str, tuple[str, ...], tuple[str, ...]]


def lineage(s: Snapshot) -> Lineage:
    return (s.time, s.host, tuple(sorted(s.paths)), tuple(sorted(s.tags)))


def class_tags(source: SourceSpec, dc: DataClass) -> list[str]:
    return [f"source={source.name}", f"class={dc.name}", *source.tags]


def _of(snaps: Iterable[Snapshot], source: str, dc: str | None = None) -> list[Snapshot]:
    want = {f"source={source}"} | ({f"class={dc}"} if dc else set())
    return [s for s in snaps if want <= set(s.tags)]


def newest(snaps: Iterable[Snapshot], source: str, dc: str | None = None) -> Snapshot | None:
    found = _of(snaps, source, dc)
    return max(found, key=lambda s: (s.datetime, s.id)) if found else None


@dataclass(frozen=True)
class BackupDue:
    source: SourceSpec
    dc: DataClass
    parent: Snapshot | None  # the newest snapshot of this source and class (change detection)
    reason: str


def due_backups(spec: PolicySpec, snaps_by_repo: dict[str, list[Snapshot]], now: datetime) -> list[BackupDue]:
    """Every (source, class) whose newest snapshot is at least the class's interval old, or missing."""
    out = []
    for source in spec.sources.values():
        for dc in spec.classes_of(source):
            last = newest(snaps_by_repo.get(source.repository, []), source.name, dc.name)
            if last is None:
                out.append(BackupDue(source, dc, None, "no snapshot yet"))
            elif now - last.datetime >= dc.every:
                why = f"last one {_age(now - last.datetime)} ago, every {_age(dc.every)}"
                out.append(BackupDue(source, dc, last, why))
    return out


@dataclass(frozen=True)
class TierStep:
    snapshot: Snapshot
    repo: str
    action: str  # "move" (copy down, then forget here), "expire" (forget: the class ends here), "keep"
    target: str | None
    reason: str


def _repo_for(spec: PolicySpec, tier: str, avoid_site: str | None) -> RepoSpec | None:
    cands = [r for r in spec.repositories.values() if r.tier == tier]
    if avoid_site is not None:
        other = [r for r in cands if r.site != avoid_site]
        if other:
            return other[0]
    return cands[0] if cands else None


def tier_plan(spec: PolicySpec, repo: RepoSpec, snaps: list[Snapshot], now: datetime) -> list[TierStep]:
    """For every snapshot of ``repo`` older than its tier's age: move it to the next tier its class
    passes through (archive prefers another site), or expire it when its class ends here. A
    snapshot under a retention lock is never expired (it stays until the lock ends)."""
    out: list[TierStep] = []
    if repo.max_age is None:
        return out
    for s in sorted(snaps, key=lambda s: (s.datetime, s.id)):
        age = now - s.datetime
        if age <= repo.max_age:
            continue
        dc = spec.cls(s.tag_dict().get("class", ""))
        tiers = dc.tiers if dc else TIERS
        lower = [t for t in tiers if TIERS.index(t) > TIERS.index(repo.tier)]
        why = f"{_age(age)} old, tier {repo.tier} keeps {_age(repo.max_age)}"
        target = None
        for t in lower:
            target = _repo_for(spec, t, repo.site if t == "archive" else None)
            if target is not None:
                break
        if target is not None:
            out.append(TierStep(s, repo.name, "move", target.name, f"{why}: to {target.tier} ({target.name})"))
        elif lower:
            out.append(TierStep(s, repo.name, "keep", None, f"{why}, but no repository of tier {', '.join(lower)}"))
        elif s.locked(now):
            out.append(TierStep(s, repo.name, "keep", None, f"{why}, but locked until {s.locked_until}"))
        else:
            name = dc.name if dc else "(none)"
            out.append(TierStep(s, repo.name, "expire", None, f"{why}; class {name} ends at tier {repo.tier}"))
    return out


@dataclass(frozen=True)
class RpoLine:
    source: str
    dc: str | None  # None: any class (replicas)
    repository: str
    site: str
    role: str  # "primary" or "replica"
    last: str | None  # ISO time of the newest snapshot
    age_s: float | None
    rpo_s: float
    breached: bool
    last_verified: str | None = None  # time of the newest verified write or check recorded for it
    verified_age_s: float | None = None


VERIFYING_STEPS = ("copy", "tier-move", "verify", "drill")


def rpo_lines(spec: PolicySpec, snaps_by_repo: dict[str, list[Snapshot]], now: datetime,
              journal: Sequence[dict[str, object]] = ()) -> list[RpoLine]:
    """Per source: the newest snapshot of each class in its repository, and the newest snapshot in
    each replica, against the source's RPO; with the journal, when data of that source was last
    verified there (copies read back what they wrote; verify and drill runs read it all)."""
    out = []
    for source in spec.sources.values():
        rpo = spec.rpo_of(source)
        primary = spec.repositories[source.repository]
        for dc in spec.classes_of(source):
            out.append(_line(source, dc.name, primary, "primary",
                             newest(snaps_by_repo.get(primary.name, []), source.name, dc.name), rpo, now))
        for name in source.replicate_to:
            replica = spec.repositories[name]
            out.append(_line(source, None, replica, "replica",
                             newest(snaps_by_repo.get(name, []), source.name), rpo, now))
    return [_verified(ln, journal, now) for ln in out]


def _verified(line: RpoLine, journal: Sequence[dict[str, object]], now: datetime) -> RpoLine:
    times = [str(r["time"]) for r in journal
             if r.get("ok") and r.get("step") in VERIFYING_STEPS and r.get("source") in (None, line.source)
             and _target(r) == line.repository and (line.dc is None or r.get("data_class") in (None, line.dc))]
    if not times:
        return line
    last = max(times)
    age = (now - datetime.fromisoformat(last)).total_seconds()
    return RpoLine(**{**line.__dict__, "last_verified": last, "verified_age_s": age})


def _target(record: dict[str, object]) -> str | None:
    """The repository a journal record's verified data lives in (a tier move's is in its detail)."""
    if record.get("step") == "tier-move":
        detail = str(record.get("detail", ""))
        return detail.rsplit("(", 1)[-1].rstrip(")") if "(" in detail else None
    return str(record.get("repository")) if record.get("repository") else None


def _line(source: SourceSpec, dc: str | None, repo: RepoSpec, role: str, last: Snapshot | None, rpo: timedelta,
          now: datetime) -> RpoLine:
    age = (now - last.datetime).total_seconds() if last else None
    return RpoLine(source.name, dc, repo.name, repo.site, role, last.time if last else None, age,
                   rpo.total_seconds(), age is None or age > rpo.total_seconds())


def _age(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h" if s % 86400 >= 3600 else f"{s // 86400}d"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60}min" if s % 3600 >= 60 else f"{s // 3600}h"
    return f"{max(s // 60, 0)}min"
