"""What each dashboard page shows, gathered through ``weightvault.api`` only (no HTML here).

* ``overview_rows``: per repository, each source (a run's checkpoints by their ``run`` tag, else
  the paths a snapshot backs up) with its newest snapshot and its age, the newest verification (a
  full ``verify``, a ``check``, a ``drill``) and the newest drill with its measured RTO.
* ``policy_rows``: the policy's recovery points (``api.policy_status``), primaries and replicas
  per site, each coloured against its RPO: green within 75 % of it, amber up to it, red beyond it
  or never.
* ``runs``: snapshots tagged ``run`` (or ``step``) grouped by run, ordered by ``step``, with every
  numeric tag (``loss``, ``eval_loss``, ...) as a series.
* ``storage``: the repository's sizes and what each backup added over time.
* ``activity``: the ledger, newest first, filtered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from weightvault import api

__all__ = [
    "Checkpoint",
    "FormatRow",
    "PolicyRow",
    "Run",
    "SourceRow",
    "activity",
    "by_format",
    "colour",
    "overview_rows",
    "policy_rows",
    "runs",
    "storage_series",
]

_RTO = re.compile(r"RTO ([0-9.]+) s")
_NOT_SERIES = {"step", "epoch", "run", "rank", "world_size"}
VERIFYING = ("verify", "check", "drill")


@dataclass
class SourceRow:
    repository: str
    source: str  # "run NAME" for snapshots tagged run=NAME, else the backed-up paths, joined
    paths: list[str]  # of the newest snapshot
    snapshots: int
    last: api.Snapshot | None
    age_s: float | None
    verified: str | None = None  # time of the newest successful verification in this repository
    drill: dict[str, Any] | None = None  # the newest drill: time, ok, rto_s


def colour(age_s: float | None, rpo_s: float | None) -> str:
    """green / amber / red against the RPO (see the module doc); grey without one."""
    if rpo_s is None:
        return "grey"
    if age_s is None or age_s > rpo_s:
        return "red"
    return "green" if age_s <= 0.75 * rpo_s else "amber"


def _age(t: str | None, now: datetime) -> float | None:
    if t is None:
        return None
    return (now - datetime.fromisoformat(t)).total_seconds()


def _checks(ledger: Sequence[dict[str, Any]]) -> tuple[str | None, dict[str, Any] | None]:
    verified, drill = None, None
    for r in ledger:
        if r.get("op") not in VERIFYING or not r.get("ok"):
            if r.get("op") == "drill":
                drill = {"time": r.get("time"), "ok": False, "rto_s": None, "detail": r.get("detail")}
            continue
        if r.get("op") == "verify" and "sample" in str(r.get("detail", "")):
            continue
        verified = str(r.get("time"))
        if r.get("op") == "drill":
            m = _RTO.search(str(r.get("detail", "")))
            drill = {"time": r.get("time"), "ok": True, "rto_s": float(m.group(1)) if m else None,
                     "detail": r.get("detail")}
    return verified, drill


def overview_rows(name: str, repo: api.Repository, now: datetime) -> list[SourceRow]:
    """One repository's sources (snapshot groups by their paths), newest first verification and
    drill from its ledger; grey: the policy's lines (``policy_rows``) carry the RPO colours."""
    verified, drill = _checks(repo.ledger())
    by_source: dict[str, list[api.Snapshot]] = {}
    for s in repo.snapshots():  # a run's checkpoints (its ``run`` tag) are one source, else the paths
        run = next((t.split("=", 1)[1] for t in s.tags if t.startswith("run=")), None)
        by_source.setdefault(f"run {run}" if run else ", ".join(s.paths), []).append(s)
    return [SourceRow(name, source, list(group[-1].paths), len(group), group[-1], _age(group[-1].time, now),
                      verified=verified, drill=drill) for source, group in sorted(by_source.items())]


@dataclass
class PolicyRow:
    line: api.RpoLine
    colour: str
    copies: int  # lines of this source and class: the primary and its replicas
    sites: int
    immutable: int  # of those copies, in append-only repositories
    verified: int  # of those copies, verified since backup (a drill, a full verify, a copy read back)

    @property
    def rule(self) -> str:
        """3-2-1-1-0 as this source stands: copies, sites (for media), off-site, immutable, verified."""
        return f"{self.copies}-{self.sites}-{max(0, self.sites - 1)}-{self.immutable}-{self.verified}"


def policy_rows(lines: Sequence[api.RpoLine], immutable: Collection[str] = ()) -> list[PolicyRow]:
    """The policy's recovery points, coloured; with, per source and class, how many copies on how
    many sites, how many in append-only repositories (``immutable``: their names) and how many
    verified: 3-2-1-1-0 at a glance."""
    copies: dict[tuple[str, str | None], list[api.RpoLine]] = {}
    for ln in lines:
        copies.setdefault((ln.source, ln.dc), []).append(ln)
    out = []
    for ln in lines:
        mine = copies[(ln.source, ln.dc)]
        state = "green" if ln.no_files else colour(ln.age_s, ln.rpo_s)
        out.append(PolicyRow(ln, state, len(mine), len({x.site for x in mine}),
                             sum(x.repository in immutable for x in mine),
                             sum(x.last_verified is not None for x in mine)))
    return out


@dataclass
class Checkpoint:
    snapshot: api.Snapshot
    step: float | None
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    name: str
    checkpoints: list[Checkpoint]

    @property
    def series_names(self) -> list[str]:
        return sorted({k for c in self.checkpoints for k in c.values})


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if v == v and abs(v) != float("inf") else None


def runs(snaps: Sequence[api.Snapshot]) -> list[Run]:
    """Snapshots of training runs grouped by run (the ``run`` tag; a snapshot with only a ``step``
    tag by its source's base name), by step. Snapshots with neither tag are no run's."""
    out: dict[str, list[Checkpoint]] = {}
    for s in snaps:
        tags = dict(t.split("=", 1) for t in s.tags if "=" in t)
        if "run" not in tags and "step" not in tags:
            continue
        name = tags.get("run") or ", ".join(os.path.basename(p.rstrip("/")) for p in s.paths) or s.short_id
        values = {k: v for k, t in tags.items() if k not in _NOT_SERIES and (v := _number(t)) is not None}
        out.setdefault(name, []).append(Checkpoint(s, _number(tags.get("step", "")), values))
    result = []
    for name, cps in sorted(out.items()):
        cps.sort(key=lambda c: (c.step is None, c.step or 0.0, c.snapshot.time))
        result.append(Run(name, cps))
    return result


def storage_series(snaps: Sequence[api.Snapshot]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(raw bytes of each snapshot, cumulative stored bytes backups added), by snapshot number."""
    raw, stored, total = [], [], 0.0
    for i, s in enumerate(snaps, 1):
        raw.append((float(i), float(s.summary.get("bytes", 0))))
        total += float(s.summary.get("stored_bytes_added", 0))
        stored.append((float(i), total))
    return raw, stored


@dataclass
class FormatRow:
    format: str  # the file name's extension (".safetensors"), or "(none)"
    files: int
    raw: int
    stored: int  # of the files' distinct blobs, as stored (delta bases not included)


def by_format(nodes: Sequence[api.Node], layouts: dict[bytes, api.FileLayout]) -> list[FormatRow]:
    """One snapshot's files by extension: raw and stored bytes, largest first."""
    rows: dict[str, FormatRow] = {}
    for n in nodes:
        if n.type != "file":
            continue
        ext = os.path.splitext(os.fsdecode(n.path))[1].lower() or "(none)"
        row = rows.setdefault(ext, FormatRow(ext, 0, 0, 0))
        row.files += 1
        row.raw += n.size
        layout = layouts.get(n.path)
        row.stored += layout.stored_bytes if layout is not None else 0
    return sorted(rows.values(), key=lambda r: -r.raw)


def activity(records: Sequence[dict[str, Any]], *, op: str | None = None, result: str | None = None,
             limit: int = 500) -> list[dict[str, Any]]:
    """Ledger records newest first; ``op`` exact, ``result`` "ok" or "failed"."""
    out = []
    for r in reversed(records):
        if op and r.get("op") != op:
            continue
        if (result == "ok" and not r.get("ok")) or (result == "failed" and r.get("ok")):
            continue
        out.append(r)
        if len(out) >= limit:
            break
    return out


def now_utc() -> datetime:
    return datetime.now(UTC)
