"""Prune: delete the data no snapshot needs, in two phases that are safe beside running backups.

A blob is *live* if a snapshot references it (tree blobs, file blobs) or it is, transitively, the
delta base of the copy of a live blob that is kept. Each live blob keeps one copy (preferring packs
no plan condemns); every other pack byte is unused.

Phase 1 (mark): a referenced blob kept as a delta whose base no snapshot references is first
re-encoded standalone (*rebased*), so the base and its chain stop being live; then a pack holding
no kept copy is condemned; a pack whose unused share exceeds
``max_unused`` is repacked (its kept copies are authenticated and written to new packs, indexed)
and condemned. Condemned packs go into a *plan* (``repository/plans.py``), written durably; then
the locks present are recorded in it as the clients it waits for.

Phase 2 (sweep), for every plan whose waited-for clients are gone (at once if there were none):
re-read snapshots and index, recompute the live blobs, *rescue* (keep) any condemned pack that
now holds the only copy of a live blob (a backup that started before the plan referenced it),
write a new index without the doomed packs, remove the index files it replaces, delete the
packs, and finally remove the plan. Every client that locks the repository after the plan was
written reads it and never reuses a blob held only by condemned packs, so nothing racing the
sweep can come to need a deleted pack. A crash at any step leaves a consistent repository and a
plan that the next prune continues (docs/FORMAT.md section 9).

Format v1..v3 repositories have no plans (an older weightvault would not honour them): prune
there runs under an exclusive lock, so no client runs beside it, and does both phases at once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from weightvault.backends.base import FileType
from weightvault.errors import IntegrityError, ObjectNotFoundError, UnsupportedFormatError, WeightvaultError
from weightvault.repository.locks import LockInfo, list_locks
from weightvault.repository.maintenance import PackWriter, read_index_files, replace_index
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.plans import Plan, load_plans, remove_plan, save_plan
from weightvault.repository.repo import Repository
from weightvault.repository.snapshots import Snapshot
from weightvault.types import PackedBlob

__all__ = ["DEFAULT_MAX_UNUSED", "PruneOptions", "PruneResult", "prune"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UNUSED = 0.10
TEMP_MIN_AGE = 3600.0  # seconds: leftover temp files older than this are removed

Copy = tuple[str, PackedBlob]  # (pack id, blob as that pack holds it)


@dataclass
class PruneOptions:
    max_unused: float = DEFAULT_MAX_UNUSED  # repack a pack when more than this share of it is unused
    dry_run: bool = False
    say: Callable[[str], None] | None = None  # progress lines for a terminal
    assume_gone: frozenset[str] = frozenset()  # dry run only: snapshot ids to treat as forgotten


@dataclass
class PruneResult:
    snapshots: int = 0
    live_blobs: int = 0
    packs: int = 0  # packs in the repository before
    pack_bytes: int = 0
    condemned_packs: int = 0  # packs this run condemned (whole-unused plus repacked)
    repacked_packs: int = 0
    repacked_blobs: int = 0
    rebased_blobs: int = 0  # live blobs re-encoded without their delta base, which no snapshot needed
    rebase_written_bytes: int = 0
    repack_written_bytes: int = 0
    deleted_packs: int = 0
    deleted_bytes: int = 0
    rescued_packs: int = 0
    pending_packs: int = 0  # condemned, waiting for running clients
    pending_bytes: int = 0
    waiting_on: list[str] = field(default_factory=list)  # descriptions of the locks waited for
    unused_bytes_kept: int = 0  # unused bytes left in packs below the repack threshold
    adopted_blobs: int = 0  # blobs of unindexed packs indexed first (no other client running)
    temp_files_removed: int = 0
    missing_packs_dropped: int = 0  # index entries of packs storage lacks (no live blob in them)
    index_files_written: int = 0
    index_files_removed: int = 0
    dry_run: bool = False


@dataclass
class _View:
    """The index as stored: which index files exist and what each pack holds."""

    files: list[str]
    packs: dict[str, dict[bytes, PackedBlob]]
    copies: dict[bytes, list[Copy]]
    on_disk: dict[str, int]


def prune(repo: Repository, own_lock: str, opts: PruneOptions) -> PruneResult:
    """Run both phases. The caller holds a maintenance lock (format v4) or an exclusive one
    (v1..v3) named ``own_lock``. Refuses (IntegrityError) when a snapshot, a manifest or an index
    file cannot be read, or a live blob has no copy: deleting on a partial view could lose data."""
    if not 0 <= opts.max_unused <= 1:
        raise ValueError("max_unused must be within 0..1")
    res = PruneResult(dry_run=opts.dry_run)
    say = opts.say or (lambda _msg: None)
    persist = repo.config.version >= 4
    others = _other_locks(repo, own_lock)
    if not others and not opts.dry_run:
        # nobody else is writing: packs left unindexed by crashed backups can be judged too
        res.adopted_blobs = repo.recover_unindexed_packs()
        res.temp_files_removed = _remove_temp_files(repo)
    say("reading index and snapshots")
    bad_plans: list[str] = []
    plans = load_plans(repo.backend, repo.key, bad_plans) if persist else []
    if not opts.dry_run:
        for name in bad_plans:  # its packs stay; this run judges them like any other
            repo.backend.remove(FileType.PLAN, name)
    pending = {p for plan in plans for p in plan.packs}
    snaps, view = _read_state(repo)
    if opts.dry_run:
        snaps = [s for s in snaps if s.id not in opts.assume_gone]
    dtypes: dict[bytes, str] = {}
    roots = _roots(repo, snaps, dtypes)
    chosen = _choose(roots, view, avoid=pending)
    rebase = _rebase_candidates(roots, chosen)
    res.rebased_blobs = len(rebase)
    if rebase and not opts.dry_run:
        # a live blob whose delta base nothing else needs: store it standalone, so the base goes
        say(f"re-encoding {len(rebase)} blobs whose delta bases are no longer needed")
        res.rebase_written_bytes = _rebase(repo, rebase, dtypes)
        snaps, view = _read_state(repo)
        chosen = _choose(roots, view, avoid=pending)
    res.snapshots, res.live_blobs = len(snaps), len(chosen)
    res.packs, res.pack_bytes = len(view.on_disk), sum(view.on_disk.values())
    condemn = _mark(repo, own_lock, opts, chosen, view, pending, res)
    if opts.dry_run:
        return res
    _sweep_ready(repo, own_lock, condemn, persist, res, say)
    return res


def _mark(repo: Repository, own_lock: str, opts: PruneOptions, chosen: dict[bytes, Copy], view: _View,
          pending: set[str], res: PruneResult) -> set[str]:
    """Phase 1: condemn unused packs, repack those over the threshold, write the plan (format
    v4) and record the locks present. Returns the condemned packs (a dry run only counts)."""
    used: dict[str, int] = defaultdict(int)
    kept_in: dict[str, list[PackedBlob]] = defaultdict(list)
    for pack_id, blob in chosen.values():
        used[pack_id] += blob.length
        kept_in[pack_id].append(blob)
    condemn: set[str] = set()
    repack: list[str] = []
    for pack_id in sorted(set(view.packs) & set(view.on_disk) - pending):
        size = view.on_disk[pack_id]
        unused = sum(b.length for b in view.packs[pack_id].values()) - used[pack_id]  # header: not unused
        if used[pack_id] == 0:
            condemn.add(pack_id)
        elif unused / size > opts.max_unused:
            repack.append(pack_id)
        else:
            res.unused_bytes_kept += unused
    res.repacked_packs = len(repack)
    res.repacked_blobs = sum(len(kept_in[p]) for p in repack)
    if opts.dry_run:
        res.condemned_packs = len(condemn) + len(repack)
        res.pending_packs = len(pending)
        res.pending_bytes = sum(view.on_disk.get(p, 0) for p in pending)
        return condemn
    if repack:
        if opts.say:
            opts.say(f"repacking {res.repacked_blobs} blobs from {len(repack)} packs")
        res.repack_written_bytes = _repack(repo, repack, kept_in)
        condemn.update(repack)
    res.condemned_packs = len(condemn)
    if condemn and repo.config.version >= 4:
        plan = save_plan(repo.backend, repo.key, condemn, waiting=None)
        _record_waiting(repo, own_lock, plan)
    return condemn


def _sweep_ready(repo: Repository, own_lock: str, condemn: set[str], persist: bool, res: PruneResult,
                 say: Callable[[str], None]) -> None:
    """Phase 2 for every plan no running client can still need (format v1..v3: at once)."""
    if persist:
        ready = _ready_plans(repo, own_lock, res)
        doomed = {p for plan in ready for p in plan.packs}
    else:
        ready, doomed = [], condemn  # exclusive lock: nobody else runs
    if doomed:
        say(f"deleting up to {len(doomed)} packs")
        planned = load_plans(repo.backend, repo.key) if persist else []
        still_planned = {p for plan in planned for p in plan.packs} - doomed
        _sweep(repo, doomed, still_planned, ready, res)
    repo.apply_plans()
    repo.reload_index()  # this client's view: what is left
    if persist:
        left = {p for plan in load_plans(repo.backend, repo.key) for p in plan.packs}
        sizes = dict(repo.backend.list(FileType.PACK))
        res.pending_packs = len(left & set(sizes))
        res.pending_bytes = sum(sizes[p] for p in left if p in sizes)


# -- phase 1 ---------------------------------------------------------------------------------------
def _other_locks(repo: Repository, own_lock: str) -> list[LockInfo]:
    """Locks of other clients that may still act: a lock whose process is gone on this host
    cannot (its snapshot will never be written), every other one may."""
    return [lk for lk in list_locks(repo.backend) if lk.name != own_lock and not lk.process_gone()]


def _remove_temp_files(repo: Repository) -> int:
    """Remove temp objects of interrupted writes that are over ``TEMP_MIN_AGE`` old (a younger one
    may belong to a client that is starting right now: its lock file is written that way)."""
    return repo.backend.remove_temp(TEMP_MIN_AGE)


def _read_state(repo: Repository) -> tuple[list[Snapshot], _View]:
    """Snapshots, then the index. In that order: a snapshot is saved only after the index files
    naming its blobs, so every snapshot read has its blobs in the index read after it."""
    snaps = _read_snapshots(repo)
    view = _read_view(repo)
    repo.load_index()  # the engine's index too (manifests are read through it)
    return snaps, view


def _read_view(repo: Repository) -> _View:
    stored = read_index_files(
        repo, strict=True, hint="prune needs the whole index; run `weightvault repair index`, then prune again")
    return _View(stored.files, stored.packs, stored.copies(), dict(repo.backend.list(FileType.PACK)))


def _read_snapshots(repo: Repository) -> list[Snapshot]:
    snaps = []
    for snap_id in repo.list_snapshot_ids():
        try:
            snaps.append(repo.load_snapshot(snap_id))
        except ObjectNotFoundError:
            continue  # forgotten meanwhile
        except (IntegrityError, UnsupportedFormatError) as exc:
            raise IntegrityError(
                f"snapshot {snap_id} cannot be read: {exc.message}",
                hint="prune would delete the data it references; run `weightvault check`, and forget the"
                " snapshot by id if it is beyond repair",
            ) from exc
    return snaps


def _roots(repo: Repository, snaps: list[Snapshot], dtypes: dict[bytes, str] | None = None) -> set[bytes]:
    """Every blob a snapshot references directly (its tree blobs and its files' blobs); with
    ``dtypes``, the dtype hint of each file blob that has one is recorded there."""
    roots: set[bytes] = set()
    for snap in snaps:
        roots.update(snap.tree)
        try:
            for node in iter_manifest(snap.tree, repo.load_blob):
                roots.update(node.blobs)
                if dtypes is not None and node.tensors:
                    for b, t in zip(node.blobs, node.tensors, strict=False):
                        if t is not None and t[2]:
                            dtypes[b] = t[2]
        except WeightvaultError as exc:
            raise IntegrityError(
                f"the manifest of snapshot {snap.id} cannot be read: {exc.message}",
                hint="prune needs every manifest; run `weightvault check` first",
            ) from exc
    return roots


def _choose(roots: Iterable[bytes], view: _View, avoid: set[str]) -> dict[bytes, Copy]:
    """The copy kept of every live blob, following delta bases of the copies kept. Prefers packs
    not in ``avoid``; a blob only ``avoid`` packs hold is kept there. Packs missing from storage
    hold nothing; a live blob without any copy raises IntegrityError."""
    chosen: dict[bytes, Copy] = {}
    todo = list(roots)
    while todo:
        bid = todo.pop()
        if bid in chosen:
            continue
        cands = [c for c in view.copies.get(bid, ()) if c[0] in view.on_disk]
        if not cands:
            raise IntegrityError(
                f"blob {bid.hex()} is needed by a snapshot (or as a delta base) but no pack holds it",
                hint="prune refuses to run on a damaged repository; run `weightvault check` to see which"
                " snapshots are affected",
            )
        # outside condemned packs first; then a copy without a delta base (it needs nothing else)
        pick = min(cands, key=lambda c: (c[0] in avoid, c[1].base is not None))
        chosen[bid] = pick
        if pick[1].base is not None:
            todo.append(pick[1].base)
    return chosen


def _rebase_candidates(roots: set[bytes], chosen: dict[bytes, Copy]) -> list[bytes]:
    """Referenced blobs kept as deltas against a base that no snapshot references: re-encoding
    them standalone frees the base (and its own chain)."""
    return sorted(b for b in roots if b in chosen and (base := chosen[b][1].base) is not None and base not in roots)


def _rebase(repo: Repository, blobs: list[bytes], dtypes: dict[bytes, str]) -> int:
    """Store each blob again without a delta base (decoded through its chain, hash-checked, coded
    with the best standalone codec), packs first, then their index. Returns bytes written."""
    out = PackWriter(repo)
    for bid in blobs:
        out.add_plain(repo.lookup(bid).blob.type, bid, repo.load_blob(bid), dtypes.get(bid))
    return out.finish()


def _repack(repo: Repository, packs: list[str], kept_in: dict[str, list[PackedBlob]]) -> int:
    """Copy the kept blobs of ``packs`` into new packs (envelopes authenticated, bytes unchanged),
    write the packs, then an index for them. Returns bytes written."""
    out = PackWriter(repo)
    for pack_id in packs:
        data = repo.backend.load(FileType.PACK, pack_id)
        for b in sorted(kept_in[pack_id], key=lambda b: b.offset):
            out.add_envelope(b, data[b.offset : b.offset + b.length], pack_id)
    return out.finish()


def _record_waiting(repo: Repository, own_lock: str, plan: Plan) -> Plan:
    """Record in ``plan`` the locks present now (listed after the plan is durable)."""
    waiting = {lk.name for lk in _other_locks(repo, own_lock)}
    if not waiting:
        return plan
    recorded = save_plan(repo.backend, repo.key, plan.packs, waiting, plan.created)
    if recorded.name != plan.name:
        remove_plan(repo.backend, plan)
    return recorded


# -- phase 2 ---------------------------------------------------------------------------------------
def _ready_plans(repo: Repository, own_lock: str, res: PruneResult) -> list[Plan]:
    """Plans none of whose waited-for clients still hold a lock. A plan without a record of them
    gets one now (every lock present, a superset of those that matter)."""
    live = {lk.name: lk for lk in _other_locks(repo, own_lock)}
    ready = []
    waiting_on: dict[str, LockInfo] = {}
    for plan in load_plans(repo.backend, repo.key):
        if plan.waiting is None:
            plan = _record_waiting(repo, own_lock, plan)
            if plan.waiting is None:
                ready.append(plan)
                continue
        blocking = [live[n] for n in plan.waiting if n in live]
        if blocking:
            waiting_on.update((lk.name, lk) for lk in blocking)
        else:
            ready.append(plan)
    res.waiting_on = [lk.describe() for lk in waiting_on.values()]
    return ready


def _sweep(repo: Repository, doomed: set[str], still_planned: set[str], ready: list[Plan], res: PruneResult) -> None:
    snaps, view = _read_state(repo)
    chosen = _choose(_roots(repo, snaps), view, avoid=doomed | still_planned)
    rescued = {pack_id for pack_id, _ in chosen.values()} & doomed
    if rescued:
        log.info("keeping %d condemned packs: a backup that started before prune referenced them", len(rescued))
    res.rescued_packs = len(rescued)
    delete = doomed - rescued
    missing = [p for p in view.packs if p not in view.on_disk]
    if missing:
        log.warning("dropping %d packs from the index that storage no longer holds (no snapshot needs them)",
                    len(missing))
    res.missing_packs_dropped = len(missing)
    keep = {p: blobs.values() for p, blobs in view.packs.items() if p not in delete and p in view.on_disk}
    # new index first, then drop the files it replaces, then the packs, then the plans
    written = replace_index(repo, keep, view.files)
    res.index_files_written = len(written)
    res.index_files_removed = len([n for n in view.files if n not in written])
    for pack_id in sorted(delete):
        if pack_id in view.on_disk:
            repo.backend.remove(FileType.PACK, pack_id)
            res.deleted_packs += 1
            res.deleted_bytes += view.on_disk[pack_id]
    for plan in ready:
        remove_plan(repo.backend, plan)
