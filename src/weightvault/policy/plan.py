"""Pure planners: which backups are due, which snapshots move down a tier, which RPOs hold.

Snapshots written by ``policy apply`` carry the tags ``source=NAME`` and ``class=NAME``. The same
snapshot in several repositories (copies) is recognised by its *lineage*: time, host, paths and
tags, which ``copy`` preserves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from weightvault.policy.spec import TIERS, DataClass, PolicySpec, RepoSpec, SourceSpec
from weightvault.repository.snapshots import Snapshot

__all__ = ["BackupDue", "Lineage", "RpoLine", "TierStep", "class_tags", "due_backups", "lineage", "newest",
           "of_source", "rpo_lines", "tier_plan", "verified_snapshots"]

Lineage = tuple[str, str, tuple[str, ...], tuple[str, ...]]


def lineage(s: Snapshot) -> Lineage:
    return (s.time, s.host, tuple(sorted(s.paths)), tuple(sorted(s.tags)))


def class_tags(source: SourceSpec, dc: DataClass) -> list[str]:
    return [f"source={source.name}", f"class={dc.name}", *source.tags]


def of_source(snaps: Iterable[Snapshot], source: SourceSpec, dc: str | None = None) -> list[Snapshot]:
    """The snapshots of ``source`` (and class ``dc``): tagged so *and* holding exactly the
    source's paths (made on its ``host``, if the policy names one). A snapshot of another directory
    with the same tags is not one of them."""
    want = {f"source={source.name}"} | ({f"class={dc}"} if dc else set())
    paths = source.abs_paths
    return [s for s in snaps if want <= set(s.tags) and sorted(s.paths) == paths
            and (source.host is None or s.host == source.host)]


def newest(snaps: Iterable[Snapshot], source: SourceSpec, dc: str | None = None) -> Snapshot | None:
    found = of_source(snaps, source, dc)
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
            last = newest(snaps_by_repo.get(source.repository, []), source, dc.name)
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
    no_files: bool = False  # never backed up because the source holds no file of this class (seen here)


def verified_snapshots(ledger: Sequence[dict[str, object]]) -> dict[str, str]:
    """Snapshot id -> time of the newest successful check of that very snapshot in a repository's
    ledger: a drill (restored and validated), a full ``verify`` (every file read and hashed; a
    ``--sample`` run does not count), or a ``copy`` into it (which read back what it wrote)."""
    out: dict[str, str] = {}
    for r in ledger:
        op, detail = r.get("op"), str(r.get("detail", ""))
        if not r.get("ok") or op not in ("drill", "verify", "copy") or (op == "verify" and "sample" in detail):
            continue
        ids = r.get("snapshots")
        for sid in ids if isinstance(ids, list) else []:
            t = str(r.get("time", ""))
            if isinstance(sid, str) and t > out.get(sid, ""):
                out[sid] = t
    return out


def rpo_lines(spec: PolicySpec, snaps_by_repo: dict[str, list[Snapshot]], now: datetime,
              verified: dict[str, dict[str, str]] | None = None,
              empty: Callable[[SourceSpec, DataClass], bool] | None = None) -> list[RpoLine]:
    """Per source: the newest snapshot of each class in its repository, and the newest snapshot in
    each replica, against the source's RPO. ``verified`` (repository name -> ``verified_snapshots``
    of its ledger) says when a snapshot *of that source and class* there was last checked: a drill
    of a log snapshot verifies the logs, not the weights. ``empty(source, class)``: true when the
    source is known to hold no file of the class; a class never backed up for that reason is not
    a breach (``no_files``)."""
    out = []
    checked = verified or {}
    for source in spec.sources.values():
        rpo = spec.rpo_of(source)
        primary = spec.repositories[source.repository]
        for dc in spec.classes_of(source):
            snaps = of_source(snaps_by_repo.get(primary.name, []), source, dc.name)
            line = _line(source, dc.name, primary, "primary", _newest(snaps), rpo, now)
            if not snaps and empty is not None and empty(source, dc):
                line = RpoLine(**{**line.__dict__, "breached": False, "no_files": True})
            out.append(_verified(line, snaps, checked.get(primary.name, {}), now))
        for name in source.replicate_to:
            replica = spec.repositories[name]
            snaps = of_source(snaps_by_repo.get(name, []), source)
            out.append(_verified(_line(source, None, replica, "replica", _newest(snaps), rpo, now), snaps,
                                 checked.get(name, {}), now))
    return out


def _newest(snaps: list[Snapshot]) -> Snapshot | None:
    return max(snaps, key=lambda s: (s.datetime, s.id)) if snaps else None


def _verified(line: RpoLine, snaps: list[Snapshot], checked: dict[str, str], now: datetime) -> RpoLine:
    times = [checked[s.id] for s in snaps if s.id in checked]
    if not times:
        return line
    last = max(times)
    age = (now - datetime.fromisoformat(last)).total_seconds()
    return RpoLine(**{**line.__dict__, "last_verified": last, "verified_age_s": age})


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
