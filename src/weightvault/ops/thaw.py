"""Thaw: make the data packs a restore of a snapshot needs readable again when a cold storage
class (S3 GLACIER, DEEP_ARCHIVE) keeps them offline.

The packs are found from the snapshot's manifest (trees stay in a readable class, see
``backends/base.py``) and the index: every chunk of every selected file and each delta base
below it. Each pack is asked for with ``Backend.thaw`` (a HEAD, then a RestoreObject where
needed), several at once. Resumable by construction: the store, not a local file, remembers
what was requested, so running the same command again asks only for what is neither online nor
on its way, and restores once everything is online.

Costs (the estimate ``ThawReport.cost_usd`` prints) are AWS's published retrieval prices per GB
in us-east-1 (S3 pricing page, 2026): a real bill also counts requests and the restored copy's
storage for ``days``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from weightvault.backends.base import FileType
from weightvault.errors import UsageError
from weightvault.ops.walk import matches_any
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot

__all__ = ["RETRIEVAL", "TIERS", "ThawReport", "packs_for", "thaw"]

TIERS = ("Expedited", "Standard", "Bulk")
#: tier -> (USD per GB from GLACIER, USD per GB from DEEP_ARCHIVE, typical hours GLACIER, DEEP_ARCHIVE)
RETRIEVAL: dict[str, tuple[float, float, str, str]] = {
    "Expedited": (0.03, 0.0, "1-5 minutes", "not offered"),
    "Standard": (0.01, 0.02, "3-5 hours", "up to 12 hours"),
    "Bulk": (0.0, 0.0025, "5-12 hours", "up to 48 hours"),
}


@dataclass
class ThawReport:
    snapshot: str
    tier: str
    days: int
    packs: int = 0  # data packs the restore needs
    online: int = 0  # readable now
    restoring: int = 0  # requested earlier, still under way
    requested: int = 0  # asked for by this call
    bytes_requested: int = 0  # of the packs asked for by this call
    bytes_offline: int = 0  # of every pack not yet online
    states: dict[str, str] = field(default_factory=dict)  # pack id -> state

    @property
    def ready(self) -> bool:
        return self.online == self.packs

    @property
    def cost_usd(self) -> float:
        """Estimated retrieval cost of this call's requests, at the GLACIER price (the dearer of
        the two for Expedited and Standard; DEEP_ARCHIVE's for Bulk is given in docs/CLOUD.md)."""
        return self.bytes_requested / 1e9 * max(RETRIEVAL[self.tier][0], RETRIEVAL[self.tier][1])

    @property
    def typical_wait(self) -> str:
        return f"GLACIER {RETRIEVAL[self.tier][2]}, DEEP_ARCHIVE {RETRIEVAL[self.tier][3]}"


def packs_for(repo: Repository, snap: Snapshot, includes: list[str] | None = None) -> set[str]:
    """The packs holding the file data (and delta bases) that restoring ``snap`` reads."""
    packs: set[str] = set()
    for node in iter_manifest(snap.tree, repo.load_blob):
        if node.type != "file" or (includes and not matches_any(node.path, includes)):
            continue
        for bid in node.blobs:
            cur: bytes | None = bid
            while cur is not None and (entry := repo.index.get(cur)) is not None:
                packs.add(entry.pack_id)
                cur = repo.index.base_of(cur)
    return packs


def thaw(repo: Repository, snap: Snapshot, *, includes: list[str] | None = None, days: int = 7,
         tier: str = "Standard", threads: int = 8) -> ThawReport:
    """Ask for every offline pack ``snap``'s restore needs; report what is online, on its way and
    newly asked for. UsageError where the storage has no cold classes or the arguments are bad."""
    if tier not in TIERS:
        raise UsageError(f"unknown restore tier {tier!r}", hint=f"use one of {', '.join(TIERS)}")
    if not 1 <= days <= 3650:
        raise UsageError(f"--restore-days {days}: the restored copy must be kept 1 to 3650 days")
    if not repo.backend.supports_cold:
        raise UsageError(f"{repo.backend.location} has no cold storage: nothing to thaw",
                         hint="restore without --thaw")
    needed = sorted(packs_for(repo, snap, includes))
    sizes = {name: size for name, size in repo.backend.list(FileType.PACK)}
    report = ThawReport(snap.id, tier, days, packs=len(needed))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        states = list(pool.map(lambda p: repo.backend.thaw(FileType.PACK, p, days, tier), needed))
    for pack, state in zip(needed, states, strict=True):
        report.states[pack] = state
        size = sizes.get(pack, 0)
        if state == "online":
            report.online += 1
            continue
        report.bytes_offline += size
        if state == "requested":
            report.requested += 1
            report.bytes_requested += size
        else:
            report.restoring += 1
    return report
