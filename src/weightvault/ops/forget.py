"""Forget: remove snapshot documents by retention policy (``ops/retention.py``) or by id.

Only snapshot files are removed; the data they referenced stays until prune. Runs under a
maintenance lock: backups may run beside it (one whose parent is forgotten meanwhile still holds
its lock when a later prune starts, so prune waits for it).

The ranks of a sharded group go with their group snapshot (and every duplicate group snapshot of
that group): ranks are removed first, so an interrupted forget leaves the group snapshot, which is
complete on its own, never rank snapshots that look like a fresh group. Rank snapshots of
incomplete groups are never forgotten by a policy (only by explicit id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from weightvault.errors import ImmutableError
from weightvault.ops.groups import representatives
from weightvault.ops.prune import PruneResult
from weightvault.ops.retention import GroupDecision, Policy, decide
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot

__all__ = ["ForgetResult", "forget"]


@dataclass
class ForgetResult:
    groups: list[GroupDecision] = field(default_factory=list)
    removed: list[Snapshot] = field(default_factory=list)  # listed snapshots (group members not repeated)
    removed_ids: list[str] = field(default_factory=list)  # every snapshot document removed (or to be)
    dry_run: bool = False
    prune: PruneResult | None = None  # with ``forget --prune``


def forget(
    repo: Repository, policy: Policy | None, explicit: list[Snapshot], *, now: datetime, dry_run: bool = False,
    only_tags: tuple[str, ...] = (),
) -> ForgetResult:
    """Decide with ``policy`` (if any) over the snapshots carrying every tag in ``only_tags``, and
    remove those snapshots plus ``explicit`` ones. Call with a maintenance (or exclusive) lock held."""
    snaps = repo.snapshots()
    result = ForgetResult(dry_run=dry_run)
    chosen: dict[str, Snapshot] = {s.id: s for s in explicit}
    if policy is not None:
        considered = [s for s in representatives(snaps) if all(s.has_tag(t) for t in only_tags)]
        result.groups = decide(considered, policy, now)
        for g in result.groups:
            for s in g.remove:
                chosen.setdefault(s.id, s)
    locked = [s for s in explicit if s.locked(now)]
    if locked:
        raise ImmutableError(
            "refusing to forget snapshots under a retention lock: "
            + ", ".join(f"{s.short_id} (locked until {s.locked_until})" for s in locked),
            hint="a retention lock cannot be lifted; the snapshot can be forgotten once it expires",
        )
    result.removed = sorted(chosen.values(), key=lambda s: (s.datetime, s.id))
    ranks: list[str] = []
    tops: list[str] = []
    for s in result.removed:
        if s.group is not None and s.group_rank is None:  # a group snapshot: its ranks and duplicates go too
            gid = s.group["id"]
            ranks += [o.id for o in snaps if o.group is not None and o.group["id"] == gid and o.group_rank is not None]
            tops += [o.id for o in snaps if o.group is not None and o.group["id"] == gid and o.group_rank is None]
        elif s.group_rank is not None:
            ranks.append(s.id)
        else:
            tops.append(s.id)
    order = list(dict.fromkeys(ranks + tops))  # ranks first
    result.removed_ids = order
    if not dry_run:
        for snap_id in order:
            repo.remove_snapshot(snap_id)
    return result
