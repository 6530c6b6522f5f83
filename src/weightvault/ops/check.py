"""Check: verify the repository's structure and, optionally, every stored byte.

Without ``read_data``: every index file decrypts; every indexed pack exists and its header agrees
with the index; every delta blob's chain of bases is intact; every snapshot decrypts; every
manifest loads and every blob it references is
indexed. With ``read_data`` (or a subset ``n/t`` / ``x%``): each selected pack is read whole, its
BLAKE3 must equal its name, and every blob in it is authenticated, decompressed and hash-checked.
Problems name the blob, the pack and the snapshot files that use the blob. Always: every key
file's name is the BLAKE3 of its bytes, and the ledger's chain holds (as ``ledger verify``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import blake3

from weightvault.backends.base import FileType
from weightvault.errors import ColdDataError, UsageError, WeightvaultError
from weightvault.ops.progress import ProgressCallback, Reporter
from weightvault.repository import ledger
from weightvault.repository.blobcache import BlobCache
from weightvault.repository.maintenance import read_index_files
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.packer import read_pack_header
from weightvault.repository.plans import load_plans
from weightvault.repository.repo import Repository
from weightvault.types import PackedBlob

__all__ = ["CheckResult", "check", "parse_subset", "select_packs"]


@dataclass
class CheckResult:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    packs: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    snapshots: int = 0
    ledger_records: int = 0
    bad_blobs: dict[str, list[str]] = field(default_factory=dict)  # blob hex -> ["snap:path", ...]
    subset: str | None = None  # the part read, "n/t"
    coverage: float | None = None  # with a rotating X% subset: share of the parts read this round
    cold_packs: int = 0  # packs an offline storage class keeps: not checked (a warning, never damage)

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_subset(spec: str) -> tuple[int, int] | float:
    """'n/t' -> (n, t) with 1 <= n <= t; 'x%' -> fraction in (0, 1]."""
    try:
        if spec.endswith("%"):
            frac = float(spec[:-1]) / 100
            if not 0 < frac <= 1:
                raise ValueError
            return frac
        n, t = (int(x) for x in spec.split("/"))
        if not 1 <= n <= t:
            raise ValueError
        return n, t
    except ValueError:
        raise UsageError(f"invalid subset {spec!r}", hint="use n/t (e.g. 1/10) or a percentage (e.g. 5%)") from None


def select_packs(pack_ids: list[str], subset: tuple[int, int] | None) -> list[str]:
    """Part n of t of the packs sorted by id: those at positions i with i % t == n - 1, so the t
    parts together read every pack once. A part that would be empty (t above the pack count) reads
    the pack at position (n - 1) % count: a subset never reads nothing from a repository with data.
    (An X% subset is turned into rotating parts by the caller: ``weightvault.runner.sampling``.)"""
    ordered = sorted(pack_ids)
    if subset is None or not ordered:
        return ordered
    n, t = subset
    return ordered[n - 1::t] or [ordered[(n - 1) % len(ordered)]]


def _check_keys_and_ledger(repo: Repository, res: CheckResult) -> None:
    """Key files are named by the BLAKE3 of their bytes (FORMAT.md section 3): a name that no
    longer matches was edited or replaced. The ledger (version 4) must chain (``ledger verify``)."""
    for name, _ in repo.backend.list(FileType.KEY):
        try:
            raw = repo.backend.load(FileType.KEY, name)
        except WeightvaultError as exc:
            res.errors.append(f"key file {name}: cannot be read: {exc.message}")
            continue
        if blake3.blake3(raw).hexdigest() != name:
            res.errors.append(f"key file {name}: its content no longer matches its name (edited or replaced);"
                              " compare `key list` with the keys you added, and remove one you did not")
    if repo.config.version >= 4:
        chain = ledger.verify_chain(repo.backend, repo.key, keep=True)
        res.ledger_records = chain.records
        res.errors += [f"ledger: {p}" for p in chain.problems]
        res.warnings += _recorded_snapshots_gone(repo, chain.read)


def _recorded_snapshots_gone(repo: Repository, records: list[dict[str, Any]]) -> list[str]:
    """Snapshots the ledger ``records`` say were made (by a backup or a copy into this
    repository) that no forget recorded removing, and that are gone: a snapshot file deleted
    behind the tool's back (whoever deleted it could not forge the forget record without the
    key), or by a forget that was killed before it could append its record. A warning, since
    the second is no fault."""
    made: dict[str, dict[str, Any]] = {}
    removed: set[str] = set()
    for rec in records:
        if rec.get("op") in ("backup", "copy"):
            made.update((sid, rec) for sid in rec.get("snapshots", []) if isinstance(sid, str))
        elif rec.get("op") == "forget":
            removed.update(sid for sid in rec.get("snapshots", []) if isinstance(sid, str))
    present = set(repo.list_snapshot_ids())
    return [f"snapshot {sid[:8]}, made by ledger record {rec['seq']} ({rec['op']} at {rec.get('time')}), is gone"
            " and no forget recorded removing it: deleted behind weightvault's back, or by a forget that was"
            " interrupted"
            for sid, rec in sorted(made.items()) if sid not in present and sid not in removed]


def check(
    repo: Repository,
    read_data: bool = False,
    subset: tuple[int, int] | None = None,
    progress: ProgressCallback | None = None,
) -> CheckResult:
    res = CheckResult()
    _check_keys_and_ledger(repo, res)
    # 1. index files
    stored = read_index_files(repo, strict=False)
    indexed = stored.packs
    for name, why in sorted(stored.unreadable.items()):
        res.errors.append(f"index file {name}: {why}")
    for pack_id, blobs in indexed.items():
        repo.index.add_pack(pack_id, blobs.values())
    # 2. packs against the index
    on_disk = dict(repo.backend.list(FileType.PACK))
    res.packs = len(on_disk)
    missing_blobs: set[bytes] = set()
    for pack_id in sorted(set(indexed) - set(on_disk)):
        n = len(indexed[pack_id])
        res.errors.append(f"pack {pack_id} is in the index but missing from the repository ({n} blobs)")
        missing_blobs.update(indexed[pack_id])
    bad_plans: list[str] = []
    condemned = {p for plan in load_plans(repo.backend, repo.key, bad_plans) for p in plan.packs}
    for name in bad_plans:
        res.errors.append(f"prune plan {name} cannot be read (the next prune removes it; its packs stay)")
    for pack_id in sorted(set(on_disk) - set(indexed)):
        if pack_id in condemned:
            res.warnings.append(f"pack {pack_id} is condemned by an interrupted prune (the next prune deletes it)")
        else:
            res.warnings.append(
                f"pack {pack_id} is not indexed (left by an interrupted backup; the next backup reuses it)")
    bad: dict[bytes, str] = {}
    for pack_id in sorted(set(on_disk) & set(indexed)):
        try:
            header = {b.blob_id: b for b in read_pack_header(repo.backend, repo.key, pack_id, on_disk[pack_id])}
        except ColdDataError:
            _cold(res, pack_id)
            continue
        except WeightvaultError as exc:
            res.errors.append(f"pack {pack_id}: header unreadable: {exc.message}")
            for bid in indexed[pack_id]:
                bad[bid] = f"pack {pack_id} header unreadable"
            continue
        for bid, b in indexed[pack_id].items():
            if header.get(bid) != b:
                res.errors.append(f"pack {pack_id}: blob {bid.hex()} in the index does not match the pack header")
                bad[bid] = f"pack {pack_id} header mismatch"
    # delta blobs whose chain of bases is broken (a base missing, unindexed or with a bad header)
    for entry in list(repo.index.entries()):
        base = entry.blob.base
        while base is not None:
            if base in bad or base in missing_blobs or base not in repo.index:
                bad[entry.blob.blob_id] = f"its delta base {base.hex()} is unavailable"
                break
            base = repo.index.base_of(base)
    # 3. read data
    if read_data or subset is not None:
        chosen = select_packs([p for p in on_disk if p in indexed], subset)
        res.subset = f"{subset[0]}/{subset[1]}" if subset is not None else None
        reporter = Reporter(progress, "check")
        reporter.set_totals(len(chosen), sum(on_disk[p] for p in chosen))
        bases = BlobCache(repo, wanted={e.blob.base for e in repo.index.entries() if e.blob.base is not None})
        for pack_id in chosen:
            _read_pack(repo, pack_id, indexed[pack_id], res, bad, bases)
            reporter.add(files=1, nbytes=on_disk[pack_id])
        reporter.done()
    _check_snapshots(repo, bad, missing_blobs, res)
    return res


def _cold(res: CheckResult, pack_id: str) -> None:
    res.cold_packs += 1
    res.warnings.append(f"pack {pack_id} is in an offline storage class (GLACIER, DEEP_ARCHIVE): not checked;"
                        " `restore --thaw` makes a snapshot's packs readable")


def _check_snapshots(repo: Repository, bad: dict[bytes, str], missing: set[bytes], res: CheckResult) -> None:
    """4. every snapshot and manifest readable; every blob they use present and sound."""
    users: dict[bytes, list[str]] = defaultdict(list)
    for snap_id in repo.list_snapshot_ids():
        try:
            snap = repo.load_snapshot(snap_id)
        except WeightvaultError as exc:
            res.errors.append(f"snapshot {snap_id}: {exc.message}")
            continue
        res.snapshots += 1
        seen: set[bytes] = set()
        try:
            for node in iter_manifest(snap.tree, repo.load_blob):
                if node.path in seen:  # restore refuses such a snapshot (exit 17)
                    res.errors.append(f"snapshot {snap.short_id}: entry {node.path.decode('utf-8', 'replace')!r}"
                                      " appears twice in its manifest (malformed; restore refuses it)")
                seen.add(node.path)
                for bid in node.blobs:
                    if bid in bad or bid in missing or bid not in repo.index:
                        users[bid].append(f"{snap.short_id}:{node.path.decode('utf-8', 'replace')}")
        except WeightvaultError as exc:
            res.errors.append(f"snapshot {snap.short_id}: manifest unreadable: {exc.message}")
    for bid, files in users.items():
        reason = bad.get(bid) or ("its pack is missing" if bid in missing else "not in any index")
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        res.errors.append(f"blob {bid.hex()} ({reason}) is used by {shown}")
        res.bad_blobs[bid.hex()] = files


def _read_pack(
    repo: Repository,
    pack_id: str,
    blobs: dict[bytes, PackedBlob],
    res: CheckResult,
    bad: dict[bytes, str],
    bases: BlobCache,
) -> None:
    try:
        data = repo.backend.load(FileType.PACK, pack_id)
    except ColdDataError:
        if not any(f"pack {pack_id} " in w for w in res.warnings):
            _cold(res, pack_id)
        return
    except WeightvaultError as exc:
        res.errors.append(f"pack {pack_id}: cannot be read: {exc.message}")
        for bid in blobs:
            bad[bid] = f"pack {pack_id} unreadable"
        return
    res.packs_read += 1
    res.bytes_read += len(data)
    if blake3.blake3(data).hexdigest() != pack_id:
        res.errors.append(f"pack {pack_id}: content hash does not match its name (the file is corrupted)")
    for bid, b in blobs.items():
        try:
            plain = repo.decode_blob(pack_id, b, data[b.offset : b.offset + b.length], bases.load)
            bases.keep(bid, plain)
            res.blobs_read += 1
        except WeightvaultError as exc:
            res.errors.append(exc.message)
            bad[bid] = f"corrupt in pack {pack_id}"
