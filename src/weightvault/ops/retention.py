"""Retention: which snapshots a ``forget`` policy keeps, and why. A pure function of the snapshots,
the policy and the current time (no I/O), so it is tested with golden files.

Snapshots are grouped (default by host and paths; ``group_by`` may name any of host, paths, tags)
and each group is decided on its own. Within a group, snapshots are ordered newest first by time;
if every snapshot of the group carries a numeric ``step=N`` tag, by step instead (a checkpoint
series), never by name. A snapshot is kept if any rule keeps it, and each kept snapshot lists every
rule that did:

* ``keep_last N``: the N newest.
* ``keep_hourly/daily/weekly/monthly/yearly N``: going from the newest, the newest snapshot of
  each of the N most recent hours/days/ISO weeks/months/years that have a snapshot (UTC).
* ``keep_within D``: every snapshot taken within D before ``now`` (not before the newest snapshot:
  a writer flooding the repository with new snapshots cannot push good ones out of the window).
* ``keep_tags``: every snapshot carrying one of these tags.
* Whatever the policy: every snapshot under a retention lock (``locked_until`` after ``now``).

A policy with no rule at all is refused (it would remove everything).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from weightvault.errors import UsageError
from weightvault.repository.snapshots import Snapshot

__all__ = ["GROUP_FIELDS", "Decision", "GroupDecision", "Policy", "decide", "parse_duration"]

GROUP_FIELDS = ("host", "paths", "tags")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1), "m": timedelta(days=30),
          "y": timedelta(days=365)}


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '2w', '6m' (30 days), '1y' (365 days), '1y6m' -> timedelta; UsageError if malformed."""
    parts = re.findall(r"(\d+)([hdwmy])", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise UsageError(f"cannot read duration {text!r}", hint="use e.g. 30d, 12h, 2w, 6m, 1y or 1y6m")
    return sum((int(n) * _UNITS[u] for n, u in parts), timedelta())


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None
    keep_tags: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ("host", "paths")

    @classmethod
    def from_arguments(cls, keep_last: int = 0, keep_hourly: int = 0, keep_daily: int = 0, keep_weekly: int = 0,
                       keep_monthly: int = 0, keep_yearly: int = 0, keep_within: str | timedelta | None = None,
                       keep_tags: Sequence[str] = (), group_by: Sequence[str] = ("host", "paths")) -> Policy:
        """A policy from ``forget``'s arguments; ``keep_within`` may be text such as '7d'."""
        if any(n < 0 for n in (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)):
            raise UsageError("keep counts must be >= 0")
        within = parse_duration(keep_within) if isinstance(keep_within, str) else keep_within
        return cls(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, within,
                   tuple(keep_tags), tuple(group_by))

    def empty(self) -> bool:
        counts = (self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly,
                  self.keep_yearly)
        return not any(counts) and self.keep_within is None and not self.keep_tags


@dataclass
class Decision:
    snapshot: Snapshot
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


@dataclass
class GroupDecision:
    key: dict[str, object]
    ordered_by: str  # "time" or "step"
    decisions: list[Decision]  # newest first

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if not d.keep]


def _step(s: Snapshot) -> int | None:
    v = s.tag_dict().get("step")
    return int(v) if v is not None and v.isdigit() else None


_BUCKETS: list[tuple[str, str, Callable[[datetime], str]]] = [
    ("keep_hourly", "hourly", lambda t: t.strftime("%Y-%m-%d %H:00")),
    ("keep_daily", "daily", lambda t: t.strftime("%Y-%m-%d")),
    ("keep_weekly", "weekly", lambda t: f"{t.isocalendar()[0]}-W{t.isocalendar()[1]:02d}"),
    ("keep_monthly", "monthly", lambda t: t.strftime("%Y-%m")),
    ("keep_yearly", "yearly", lambda t: t.strftime("%Y")),
]


def _group_key(s: Snapshot, fields: tuple[str, ...]) -> tuple[tuple[str, object], ...]:
    values: dict[str, object] = {"host": s.host, "paths": tuple(sorted(s.paths)), "tags": tuple(sorted(s.tags))}
    return tuple((f, values[f]) for f in fields)


def decide(snapshots: list[Snapshot], policy: Policy, now: datetime) -> list[GroupDecision]:
    """Apply ``policy`` to ``snapshots`` at time ``now`` (timezone-aware). Groups come in order of
    their newest snapshot's time; within a group, newest first."""
    if policy.empty():
        raise UsageError("no keep rule given: refusing to forget every snapshot",
                         hint="give --keep-last/--keep-daily/.../--keep-within/--keep-tag, or snapshot ids")
    bad = [f for f in policy.group_by if f not in GROUP_FIELDS]
    if bad:
        raise UsageError(f"cannot group by {', '.join(bad)}", hint=f"use any of {', '.join(GROUP_FIELDS)}")
    groups: dict[tuple[tuple[str, object], ...], list[Snapshot]] = {}
    for s in snapshots:
        groups.setdefault(_group_key(s, policy.group_by), []).append(s)
    out = []
    for key, snaps in groups.items():
        by_step = all(_step(s) is not None for s in snaps)
        if by_step:
            snaps = sorted(snaps, key=lambda s: (_step(s), s.datetime, s.id), reverse=True)
        else:
            snaps = sorted(snaps, key=lambda s: (s.datetime, s.id), reverse=True)
        decisions = [Decision(s) for s in snaps]
        for d in decisions:
            if d.snapshot.locked(now):
                d.reasons.append(f"locked until {d.snapshot.locked_until}")
        for i, d in enumerate(decisions):
            if i < policy.keep_last:
                d.reasons.append(f"last {policy.keep_last}")
        for attr, label, bucket in _BUCKETS:
            n = getattr(policy, attr)
            seen: set[str] = set()
            for d in decisions:
                if len(seen) >= n:
                    break
                b = bucket(d.snapshot.datetime.astimezone(UTC))
                if b not in seen:
                    seen.add(b)
                    d.reasons.append(f"{label} {b}")
        if policy.keep_within is not None:
            cutoff = now - policy.keep_within
            for d in decisions:
                if d.snapshot.datetime >= cutoff:
                    d.reasons.append(f"within {_show(policy.keep_within)}")
        for tag in policy.keep_tags:
            for d in decisions:
                if d.snapshot.has_tag(tag):
                    d.reasons.append(f"tag {tag}")
        out.append(GroupDecision(dict(key), "step" if by_step else "time", decisions))
    out.sort(key=lambda g: max(d.snapshot.datetime for d in g.decisions))
    return out


def _show(d: timedelta) -> str:
    days, secs = d.days, d.seconds
    if secs == 0:
        return f"{days}d"
    return f"{days}d{secs // 3600}h" if days else f"{secs // 3600}h"
