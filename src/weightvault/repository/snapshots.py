"""Snapshot documents and how users name them.

``snapshots/<id>`` is ``seal(codec || len || zstd(json))`` (kind SNAPSHOT); ``id`` is the hex
BLAKE3 of the stored bytes. Fields: version, time (ISO 8601 UTC), host, user, paths (absolute
sources), tags (list of "k=v" or plain strings), tree (hex TREE blob ids of the manifest stream),
parent (snapshot id or null), summary (totals), program_version, and optionally group:

    {"id": RUN_ID, "rank": R, "world_size": W}           one rank's shard of a distributed job
    {"id": RUN_ID, "world_size": W, "ranks": [id, ...]}   the group's merged snapshot (all W ranks)

Rank snapshots are not listed or picked by ``latest``/``@TIME`` on their own (``ops/groups.py``).

Snapshot specifiers: an id prefix, ``latest``, ``latest:k=v`` (newest with that tag), or
``@2026-11-20T10:00`` (newest at or before that time, UTC unless an offset is given).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from weightvault.errors import IntegrityError, SnapshotNotFoundError, UnsupportedFormatError, UsageError

__all__ = ["Snapshot", "resolve_snapshot"]


@dataclass(slots=True)
class Snapshot:
    time: str
    host: str
    user: str
    paths: list[str]
    tags: list[str]
    tree: list[bytes]
    parent: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    program_version: str = ""
    id: str = ""  # set when saved or loaded
    group: dict[str, Any] | None = None
    copied_from: dict[str, str] | None = None  # {"repo": source repo id, "snapshot": source id}
    locked_until: str | None = None  # ISO 8601 UTC: forget refuses to remove the snapshot before then

    def locked(self, now: datetime) -> bool:
        """Whether a retention lock protects this snapshot at ``now`` (timezone-aware)."""
        return self.locked_until is not None and _parse_time(self.locked_until) > now

    @property
    def group_rank(self) -> int | None:
        """This snapshot's rank if it is one rank's shard of a group, else None."""
        if self.group is None:
            return None
        rank = self.group.get("rank")
        return rank if isinstance(rank, int) else None

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def datetime(self) -> datetime:
        """The snapshot time, always timezone-aware (a stored time without offset is UTC)."""
        t = datetime.fromisoformat(self.time)
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    def tag_dict(self) -> dict[str, str]:
        return dict(t.split("=", 1) for t in self.tags if "=" in t)

    def has_tag(self, tag: str) -> bool:
        return tag in self.tags

    def to_doc(self) -> dict[str, Any]:
        return {
            "version": 1,
            "time": self.time,
            "host": self.host,
            "user": self.user,
            "paths": self.paths,
            "tags": self.tags,
            "tree": [b.hex() for b in self.tree],
            "parent": self.parent,
            "summary": self.summary,
            "program_version": self.program_version,
            **({"group": self.group} if self.group is not None else {}),
            **({"copied_from": self.copied_from} if self.copied_from is not None else {}),
            **({"locked_until": self.locked_until} if self.locked_until is not None else {}),
        }

    @classmethod
    def from_doc(cls, d: Any, snap_id: str) -> Snapshot:
        if not isinstance(d, dict) or d.get("version") != 1:
            raise UnsupportedFormatError(f"snapshot {snap_id} has an unknown version")
        try:
            return cls(
                time=str(d["time"]),
                host=str(d["host"]),
                user=str(d["user"]),
                paths=[str(p) for p in d["paths"]],
                tags=[str(t) for t in d["tags"]],
                tree=[bytes.fromhex(h) for h in d["tree"]],
                parent=d.get("parent"),
                summary=dict(d.get("summary") or {}),
                program_version=str(d.get("program_version", "")),
                id=snap_id,
                group=_group(d.get("group"), snap_id),
                copied_from=_copied_from(d.get("copied_from"), snap_id),
                locked_until=_locked_until(d.get("locked_until"), snap_id),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"snapshot {snap_id} is malformed: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        """The user-facing JSON form (listing commands)."""
        d = self.to_doc()
        d.pop("tree")
        d.pop("version")
        d["id"] = self.id
        d["short_id"] = self.short_id
        return d


def _locked_until(raw: Any, snap_id: str) -> str | None:
    if raw is None:
        return None
    try:
        _parse_time(str(raw))
    except (ValueError, UsageError) as exc:
        raise IntegrityError(f"snapshot {snap_id} has a malformed locked_until field") from exc
    return str(raw)


def _copied_from(raw: Any, snap_id: str) -> dict[str, str] | None:
    if raw is None:
        return None
    if not (isinstance(raw, dict) and isinstance(raw.get("repo"), str) and isinstance(raw.get("snapshot"), str)):
        raise IntegrityError(f"snapshot {snap_id} has a malformed copied_from field")
    return {"repo": raw["repo"], "snapshot": raw["snapshot"]}


def _group(raw: Any, snap_id: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    ok = isinstance(raw, dict) and isinstance(raw.get("id"), str) and isinstance(raw.get("world_size"), int)
    if ok and "rank" in raw:
        ok = isinstance(raw["rank"], int) and 0 <= raw["rank"] < raw["world_size"]
    elif ok:
        ok = isinstance(raw.get("ranks"), list) and all(isinstance(r, str) for r in raw["ranks"])
    if not ok:
        raise IntegrityError(f"snapshot {snap_id} has a malformed group field")
    return dict(raw)


def _parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"cannot parse time {text!r}", hint="use ISO 8601, e.g. @2026-11-20T10:00") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def resolve_snapshot(spec: str, snapshots: list[Snapshot], unreadable: Mapping[str, str] | None = None) -> Snapshot:
    """Pick one snapshot by specifier; SnapshotNotFoundError (or UsageError if ambiguous).

    ``unreadable`` (id -> why): snapshots that exist but cannot be read. Their times and tags are
    unknown, so 'latest' and '@TIME' might mean one of them: IntegrityError rather than a silent
    older answer; an id prefix that names one is an IntegrityError too."""
    ordered = sorted(snapshots, key=lambda s: (s.datetime, s.id))
    damaged = dict(unreadable or {})
    if damaged and spec.startswith(("latest", "@")):
        first = min(damaged)
        more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
        raise IntegrityError(
            f"snapshot {first[:8]}{more} cannot be read ({damaged[first]}); {spec!r} might be it",
            hint="name a snapshot by id, run `weightvault check`, or add --skip-unreadable to resolve past it")
    hit = [i for i in damaged if spec and i.startswith(spec.lower())]
    if hit and not any(s.id.startswith(spec.lower()) for s in ordered):
        raise IntegrityError(f"snapshot {hit[0][:8]} cannot be read: {damaged[hit[0]]}",
                             hint="run `weightvault check`; restore another snapshot, or heal it from a replica")
    if spec == "latest" or spec.startswith("latest:"):
        tag = spec[len("latest:"):] if ":" in spec else None
        cands = [s for s in ordered if tag is None or s.has_tag(tag)]
        if not cands:
            raise SnapshotNotFoundError(f"no snapshot matches {spec!r}", hint="list them with `weightvault snapshots`")
        return cands[-1]
    if spec.startswith("@"):
        at = _parse_time(spec[1:])
        cands = [s for s in ordered if s.datetime <= at]
        if not cands:
            raise SnapshotNotFoundError(f"no snapshot at or before {at.isoformat()}")
        return cands[-1]
    if not spec or any(c not in "0123456789abcdef" for c in spec.lower()):
        raise UsageError(f"{spec!r} is not a snapshot id, 'latest', 'latest:k=v' or '@TIME'")
    matches = [s for s in ordered if s.id.startswith(spec.lower())]
    if not matches:
        raise SnapshotNotFoundError(f"no snapshot with id starting {spec!r}")
    if len(matches) > 1:
        raise UsageError(f"snapshot id prefix {spec!r} is ambiguous ({len(matches)} matches); give more characters")
    return matches[0]
