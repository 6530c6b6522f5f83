"""``Repository``: the public facade over the engine, one session per call (see ``weightvault.api``)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from weightvault.api import _files
from weightvault.api._errors import local_error
from weightvault.api._inspect import Inspection
from weightvault.api._keys import KeysAndLocks
from weightvault.api._ledger import Ledger
from weightvault.backends.factory import StorageOptions, io_threads, is_remote, open_backend
from weightvault.codec.crypto import KdfParams
from weightvault.errors import RepositoryNotFoundError, UsageError
from weightvault.kms import open_key_service
from weightvault.ops import backup as _backup
from weightvault.ops import backup_data as _backup_data
from weightvault.ops import check as _check
from weightvault.ops import copy as _copy
from weightvault.ops import diff as _diff
from weightvault.ops import forget as _forget
from weightvault.ops import groups as _groups
from weightvault.ops import heal as _heal
from weightvault.ops import layout as _layout
from weightvault.ops import prune as _prune
from weightvault.ops import repair as _repair
from weightvault.ops import restore as _restore
from weightvault.ops import retention as _retention
from weightvault.ops import stats as _stats
from weightvault.ops import validate as _validate
from weightvault.ops import verify as _verify
from weightvault.ops.backup import BackupResult
from weightvault.ops.check import CheckResult
from weightvault.ops.copy import CopyResult
from weightvault.ops.diff import DiffResult
from weightvault.ops.forget import ForgetResult
from weightvault.ops.groups import Group
from weightvault.ops.heal import HealResult
from weightvault.ops.layout import FileLayout
from weightvault.ops.progress import ProgressCallback
from weightvault.ops.prune import PruneResult
from weightvault.ops.repair import RepairResult
from weightvault.ops.restore import OVERWRITE_MODES, RestoreResult
from weightvault.ops.stats import Stats
from weightvault.ops.validate import ValidationReport
from weightvault.ops.verify import VerifyResult
from weightvault.policy import journal as _journal
from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import Repository as _Engine
from weightvault.repository.session import LockMode, Session
from weightvault.repository.snapshots import Snapshot
from weightvault.runner import audit as _audit
from weightvault.runner import drill as _drill
from weightvault.runner import repairing as _repairing
from weightvault.runner import runs as _runs
from weightvault.runner import swap as _swap
from weightvault.runner.defaults import (
    password_bytes,
)
from weightvault.runner.drill import DrillResult
from weightvault.runner.runs import RunRestore
from weightvault.runner.sampling import SampleRotation
from weightvault.runner.swap import SwapResult

__all__ = ["Repository"]

_COVERS = {  # the modes a session already holding a lock can serve without taking another
    LockMode.NONE: {LockMode.NONE}, LockMode.SHARED: {LockMode.NONE, LockMode.SHARED},
    LockMode.MAINTENANCE: {LockMode.NONE, LockMode.SHARED, LockMode.MAINTENANCE}, LockMode.EXCLUSIVE: set(LockMode)}


def _check_level(level: int, check: str | None) -> None:
    if level not in _validate.LEVELS:
        raise UsageError(f"validation level {level} is not one of 1..4",
                         hint="1 integrity, 2 format, 3 structure, 4 function (with a check)")
    if level == 4 and not check:
        raise UsageError("level 4 runs a check of yours: give one as module:function",
                         hint="e.g. --check mychecks:forward_pass (it gets the restored directory)")


class Repository(KeysAndLocks, Inspection, Ledger):
    """An open repository; each method takes the lock it needs for its duration."""

    def __init__(self, engine: _Engine) -> None:
        self._repo = engine
        self._active: dict[int, Session] = {}  # thread id -> the session a method of this object runs in
        self.skip_unreadable = False  # True: 'latest' / '@TIME' resolve past unreadable snapshots

    @classmethod
    def init(cls, location: str | os.PathLike[str], password: str | bytes | None, *, kdf: KdfParams | None = None,
             delta_max_depth: int | None = None, storage: StorageOptions | None = None,
             append_only: bool = False, kms: str | None = None) -> Repository:
        """Create a repository at a local path or a storage URL (the bucket must exist).
        ``delta_max_depth`` (default 8, 0..32; 0 disables checkpoint deltas) bounds delta chains.
        ``append_only``: forget, prune, repair and key removal are refused (ImmutableError).
        ``kms`` (``aws:KEY``): the master key is also (or, with ``password`` None, only) wrapped
        by that key service; the repository is then format version 6."""
        extra: dict[str, int] = {} if delta_max_depth is None else {"delta_max_depth": delta_max_depth}
        if append_only:
            extra["append_only"] = True
        service = None if kms is None else open_key_service(kms)
        engine = _Engine.init(open_backend(location, storage), None if password is None else password_bytes(password),
                              kdf=kdf, kms=service, **extra)
        engine.io_threads = io_threads(location, storage)
        return cls(engine)

    @classmethod
    def open(cls, location: str | os.PathLike[str], password: str | bytes | None, *,
             storage: StorageOptions | None = None) -> Repository:
        """Open the repository at a local path or a storage URL with ``password``, or with None
        through its KMS key files (KeyServiceError if the key service refuses)."""
        if not is_remote(location) and not Path(location, "config").exists() and not Path(location).is_dir():
            raise RepositoryNotFoundError(f"no repository at {location}",
                                          hint=f"create one with `weightvault -r {location} init`")
        engine = _Engine.open(open_backend(location, storage), None if password is None else password_bytes(password))
        engine.io_threads = io_threads(location, storage)
        return cls(engine)

    @property
    def location(self) -> str:
        return self._repo.backend.location

    @property
    def id(self) -> str:
        return self._repo.config.repo_id

    @property
    def append_only(self) -> bool:
        return self._repo.config.append_only

    @contextlib.contextmanager
    def _session(self, mode: LockMode = LockMode.SHARED) -> Iterator[Session]:
        """This thread's running session if its lock covers ``mode``, else a new one."""
        tid = threading.get_ident()
        outer = self._active.get(tid)
        if outer is not None and mode in _COVERS[outer.mode]:
            yield outer
            return
        try:
            with self._repo.session(mode) as s:
                s.skip_unreadable = self.skip_unreadable
                self._active[tid] = s
                try:
                    yield s
                finally:
                    if outer is None:
                        del self._active[tid]
                    else:
                        self._active[tid] = outer
        except OSError as exc:  # this machine's files (a restore target, a source): one error tree
            raise local_error(exc) from exc

    def _audit(self, op: str, **fields: Any) -> contextlib.AbstractContextManager[dict[str, Any]]:
        return _audit.record(self._repo, op, **fields)

    @staticmethod
    def _find(s: Session, spec: str) -> Snapshot:
        """An explicit id may name a rank snapshot of a group; 'latest' and '@TIME' see complete
        groups only."""
        snaps = s.snapshots()
        return s.find(spec, _groups.representatives(snaps) if spec.startswith(("latest", "@")) else snaps)

    # -- snapshots -------------------------------------------------------------------------------
    def snapshots(self, tags: Sequence[str] = (), paths: Sequence[str] = (), host: str | None = None) -> list[Snapshot]:
        """Snapshots oldest first, filtered: every tag must be present; any path may match. The
        ranks of a sharded group are not listed: its merged group snapshot is, once complete."""
        absp = {os.path.abspath(p) for p in paths}
        with self._session(LockMode.NONE) as s:
            snaps = _groups.representatives(s.snapshots())
        return [x for x in snaps if all(x.has_tag(t) for t in tags) and (not absp or any(p in absp for p in x.paths))
                and (host is None or x.host == host)]

    def unreadable_snapshots(self) -> dict[str, str]:
        """Snapshot files that exist but cannot be read (damaged, or of a newer format): id -> why."""
        with self._session(LockMode.NONE) as s:
            return s.unreadable()

    def find_snapshot(self, spec: str) -> Snapshot:
        """Resolve an id prefix, 'latest', 'latest:k=v' or '@TIME'."""
        with self._session(LockMode.NONE) as s:
            return self._find(s, spec)

    def groups(self) -> list[Group]:
        """Every sharded-checkpoint group, oldest first, with its ranks, state and group snapshot."""
        with self._session(LockMode.NONE) as s:
            return list(_groups.groups(s.snapshots()).values())

    def ls(self, spec: str, path: str | None = None) -> list[Node]:
        prefix = os.fsencode(path.strip("/")) if path else b""
        with self._session(LockMode.NONE) as s:
            nodes = iter_manifest(self._find(s, spec).tree, self._repo.load_blob)
            return [n for n in nodes if not prefix or n.path == prefix or n.path.startswith(prefix + b"/")]

    def layouts(self, spec: str, path: str | None = None) -> dict[bytes, FileLayout]:
        """How each file (under ``path``) of a snapshot is stored: chunking and bytes by codec."""
        with self._session(LockMode.NONE):
            return {n.path: _layout.file_layout(self._repo, n) for n in self.ls(spec, path) if n.type == "file"}

    @contextlib.contextmanager
    def open_files(self, spec: str) -> Iterator[_files.SnapshotFiles]:
        """Read a snapshot's files in place (``weightvault.api._files``), under a shared lock."""
        with self._session(LockMode.SHARED) as s:
            snap = self._find(s, spec)
            with _files.open_snapshot_files(self._repo, snap, lambda: s.still_there(snap)) as files:
                yield files

    def diff(self, spec_a: str, spec_b: str) -> DiffResult:
        with self._session(LockMode.NONE) as s:
            return _diff.diff(self._repo, self._find(s, spec_a), self._find(s, spec_b))

    def stats(self, spec: str | None = None) -> Stats:
        """Sizes of one snapshot, or of all: every listed snapshot plus the ranks of incomplete
        groups (a complete group's ranks are counted once, through its group snapshot)."""
        with self._session(LockMode.NONE) as s:
            if spec:
                return _stats.stats(self._repo, [self._find(s, spec)])
            everything = s.snapshots()
            pending = [x for g in _groups.groups(everything).values() if not g.complete for x in g.ranks.values()]
            return _stats.stats(self._repo, _groups.representatives(everything) + pending)

    # -- operations ------------------------------------------------------------------------------
    def backup(self, paths: Sequence[str | os.PathLike[str]], *, tags: Sequence[str] = (),
               excludes: Sequence[str] = (), exclude_caches: bool = False, force: bool = False,
               parent: str | None = None, host: str | None = None, time: datetime | None = None,
               progress: ProgressCallback | None = None, group: str | None = None, rank: int | None = None,
               world_size: int | None = None, min_free: float = 0.10, includes: Sequence[str] = (),
               lock_until: datetime | None = None, record_as: Sequence[str] | None = None) -> BackupResult:
        """Back up ``paths`` into one snapshot; unreadable files are listed in ``result.errors``.
        ``group``/``rank``/``world_size`` (all or none): one rank's shard of a distributed
        checkpoint, merged into a group snapshot once all ranks committed. A backup that would
        leave less than ``min_free`` of storage of known size free is refused (NoSpaceError).
        ``includes``: only files matching a glob. ``lock_until``: forget keeps it until then.
        ``record_as``: one path per source to record instead (same base name): a staged copy is
        recorded as the directory it was pinned from, so its parent and status are that path's."""
        for t in tags:
            if not t or "\n" in t:
                raise UsageError(f"invalid tag {t!r}")
        with self._audit("backup", source=", ".join(os.path.abspath(p) for p in paths)) as rec, \
                self._session(LockMode.SHARED) as s:
            opts = _backup.BackupOptions(
                tags=list(tags), excludes=list(excludes), exclude_caches=exclude_caches, force=force,
                parent=self._find(s, parent).id if parent else None, host=host, time=time, progress=progress,
                group=group, rank=rank, world_size=world_size, min_free=min_free, includes=list(includes),
                lock_until=lock_until, record_as=list(record_as) if record_as is not None else None)
            res = _backup.backup(self._repo, [os.fspath(p) for p in paths], opts)
            summary = res.snapshot.summary
            merged = res.group.merged if res.group is not None else None  # a group snapshot this rank completed
            rec.update(snapshots=[res.snapshot.id] + ([merged.id] if merged is not None else []),
                       bytes=int(summary.get("bytes", 0)), ok=not res.errors,
                       detail=f"{int(summary.get('files', 0))} files, {int(summary.get('stored_bytes_added', 0))}"
                       f" bytes added, {len(res.errors)} unreadable")
            return res

    def backup_data(self, root: str | os.PathLike[str], files: Mapping[str, bytes], *, tags: Sequence[str] = (),
                    parent: str | None = None, host: str | None = None, time: datetime | None = None,
                    group: str | None = None, rank: int | None = None, world_size: int | None = None,
                    lock_until: datetime | None = None) -> BackupResult:
        """One snapshot of files that exist only in memory (relative path -> bytes), recorded as the
        directory ``root``: stored as ``backup`` stores files from disk (splitters, deltas against
        the parent, group commit), with nothing written locally (``weightvault.ops.backup_data``)."""
        with self._audit("backup", source=os.path.abspath(root)) as rec, self._session(LockMode.SHARED) as s:
            opts = _backup.BackupOptions(tags=list(tags), parent=self._find(s, parent).id if parent else None,
                                         host=host, time=time, group=group, rank=rank, world_size=world_size,
                                         lock_until=lock_until)
            res = _backup_data.backup_data(self._repo, os.fspath(root), files, opts)
            rec.update(snapshots=[res.snapshot.id], bytes=int(res.snapshot.summary.get("bytes", 0)),
                       detail=f"{len(files)} in-memory files")
            return res

    def restore(self, spec: str, target: str | os.PathLike[str], *, includes: Sequence[str] = (),
                overwrite: str = "error", verify: bool = False, progress: ProgressCallback | None = None,
                repair_from: Repository | None = None, no_setuid: bool = False) -> RestoreResult:
        """Restore a snapshot under ``target`` (never outside it). With ``repair_from`` (a replica
        that ``copy`` filled), data found damaged on the way is rewritten from the replica
        (``heal_from``) and the restore runs again. ``no_setuid``: setuid/setgid bits dropped."""
        if overwrite not in OVERWRITE_MODES:
            raise UsageError(f"unknown overwrite mode {overwrite!r}; use one of {', '.join(OVERWRITE_MODES)}")
        if repair_from is not None:
            return _repairing.restore_repairing(self, repair_from, spec, target, includes=includes,
                                                overwrite=overwrite, verify=verify, progress=progress,
                                                no_setuid=no_setuid)
        opts = _restore.RestoreOptions(includes=list(includes), overwrite=overwrite,  # type: ignore[arg-type]
                                       verify=verify, progress=progress, no_setuid=no_setuid)
        with self._session(LockMode.SHARED) as s:
            snap = self._find(s, spec)
            with self._audit("restore", snapshots=[snap.id], target=os.path.abspath(target)) as rec:
                s.still_there(snap)
                res = _restore.restore(self._repo, snap, os.fspath(target), opts)
                rec.update(bytes=res.bytes, detail=f"{res.files} files" + (f", {res.verified} verified" if verify
                                                                           else ""))
                return res

    def restore_run(self, source: str, target: str | os.PathLike[str], *, at: datetime | None = None,
                    includes: Sequence[str] = (), overwrite: str = "error", verify: bool = False,
                    progress: ProgressCallback | None = None) -> RunRestore:
        """Restore the run ``source`` (snapshots tagged ``source=NAME``, one series per data class,
        as ``policy apply`` makes them) as of ``at`` (default: now) into ``target``: the newest
        snapshot of every class at or before then (``weightvault.runner.runs``), in one session."""
        with self._session(LockMode.SHARED):
            return _runs.restore_run(self, source, target, at=at, includes=includes, overwrite=overwrite,
                                     verify=verify, progress=progress)

    def restore_swap(self, spec: str, target: str | os.PathLike[str], *, level: int = 1, check: str | None = None,
                     progress: ProgressCallback | None = None, backup_previous: bool = False) -> SwapResult:
        """Restore a snapshot (of one source path) beside ``target``, verify and validate it at
        ``level`` (4 runs ``check``, ``module:function``, on the new copy), swap it into place and
        keep the old contents as ``<target>.before-<UTC time>``
        (``weightvault.runner.swap``: a kill at any step loses nothing; the next swap of the
        target finishes or removes what an interrupted one left). With ``backup_previous`` the
        safety copy is backed up too (tags ``safety-copy``, ``replaced-by=<snapshot>``)."""
        _check_level(level, check)
        with self._session(LockMode.SHARED) as s:
            return _swap.swap_restore(self, self._find(s, spec), target, level=level, check=check, progress=progress,
                                      backup_previous=backup_previous)

    def verify(self, spec: str, *, against: str | os.PathLike[str] | None = None, sample: float | None = None,
               progress: ProgressCallback | None = None) -> VerifyResult:
        """Re-read a snapshot: every blob authenticated and hash-checked, every file's SHA-256 and
        size compared with the manifest; with ``against``, with that live directory too.
        ``sample`` (0 < x <= 1) checks the next of round(1/x) deterministic buckets of files
        (``weightvault.runner.sampling``); ``result.coverage`` says how much is covered."""
        with self._session(LockMode.SHARED) as s:
            snap = self._find(s, spec)
            rot = SampleRotation.start(self.id, snap.id, sample) if sample is not None else None
            pick = (rot.pick, rot.buckets) if rot else None
            with self._audit("verify", snapshots=[snap.id], target=os.fspath(against) if against else None) as rec:
                s.still_there(snap)
                res = _verify.verify_snapshot(self._repo, snap, against, pick, progress)
                rec.update(bytes=res.bytes, ok=res.ok, detail=f"{res.files} files"
                           + (f", sample {pick[0] + 1}/{pick[1]}" if pick else "") + f", {len(res.damaged)} damaged,"
                           f" {len(res.missing) + len(res.changed) + len(res.extra)} differ")
        if rot is not None:
            res.coverage = rot.finish(res.ok)
        return res

    def validate(self, spec: str, directory: str | os.PathLike[str], *, level: int = 3, check: str | None = None,
                 hashed: bool = False) -> ValidationReport:
        """Validate the restored (or live) copy of a snapshot in ``directory`` (standing for its
        source path) at ``level`` 1..4 (``weightvault.ops.validate``); level 4 runs ``check``
        (``module:function``). ``hashed``: the caller has just checked every file's SHA-256."""
        _check_level(level, check)
        with self._session(LockMode.SHARED) as s:
            snap = self._find(s, spec)
            s.still_there(snap)
            return _validate.validate_tree(self._repo, snap, Path(directory), level, check, hashed=hashed)

    def drill(self, *, pick: str = "latest", within: str | timedelta | None = None, level: int = 3,
              now: datetime | None = None, workdir: str | os.PathLike[str] | None = None, seed: int | None = None,
              journal: Path | None = None, record: bool = True, check: str | None = None, any_snapshot: bool = False,
              progress: ProgressCallback | None = None, allow_cold: bool = False) -> DrillResult:
        """A restore drill (``weightvault.runner.drill``), in one session: pick a snapshot
        (``latest`` or ``random``, optionally ``within`` a time before now; one holding a model
        file, by name, unless ``any_snapshot`` or none does), restore it into a
        temporary directory, validate it at ``level``, record the outcome and RTO in the journal
        (unless ``record`` is False) and the ledger, remove the copy. Failure is a result; cold data a skip."""
        _check_level(level, check)
        clock = now or datetime.now(UTC)
        t0 = time.perf_counter()
        with self._session(LockMode.SHARED) as s:
            snap = _drill.pick_snapshot(_groups.representatives(s.snapshots()), pick, within, clock, seed,
                                        None if any_snapshot else lambda x: _drill.holds_models(self, x))
            res = _drill.drill(self, snap, level=level, clock=clock, workdir=workdir, check=check,
                               journal=(journal or _journal.default_journal_path()) if record else None,
                               progress=progress, allow_cold=allow_cold)
        detail = res.skipped or res.error or f"restored {res.files} files and validated them at level {level}"
        _audit.append(self._repo, {"op": "drill", "ok": res.ok, "snapshots": [snap.id], "source": None,
                                   "target": None, "bytes": res.bytes,
                                   "detail": f"level {level}, RTO {res.rto_s:.1f} s: {detail}"}, t0)
        return res

    def heal_from(self, replica: Repository, *, dry_run: bool = False) -> HealResult:
        """Rewrite blobs that are damaged or missing here from ``replica`` (a repository ``copy``
        filled from this one), each checked against its id first (``weightvault.ops.heal``).
        Exclusive lock here, shared there."""
        if not dry_run:
            self._mutable("rewrite damaged data")
        with self._audit("repair", source=replica.location, dry_run=dry_run) as rec, \
                self._session(LockMode.SHARED if dry_run else LockMode.EXCLUSIVE), replica._session(LockMode.SHARED):
            res = _heal.heal(self._repo, replica._repo, dry_run)
            rec.update(ok=res.ok, detail=f"{len(res.damaged)} damaged, {len(res.repaired)} rewritten from the replica,"
                       f" {len(res.unrepaired)} not repairable")
        if res.damaged and not dry_run:
            _repairing.journal_repair(self.location, replica.location, res)
        return res

    def check(self, *, read_data: bool = False, subset: str | None = None,
              progress: ProgressCallback | None = None) -> CheckResult:
        """Verify the repository (``weightvault.ops.check``) under a maintenance lock, so no
        prune deletes packs meanwhile; backups may run beside it. ``subset`` "n/t" reads part n of
        t of the packs; "X%" reads the next of round(100/X) parts in rotation (state kept with
        verify's, ``runner.sampling``), so repeated runs read every pack; ``result.coverage`` says
        how much of the current round is done."""
        sub = _check.parse_subset(subset) if subset else None
        rot = SampleRotation.start(self.id, "packs", sub) if isinstance(sub, float) else None
        part = (rot.pick + 1, rot.buckets) if rot is not None else sub
        assert not isinstance(part, float)
        with self._session(LockMode.MAINTENANCE):
            res = _check.check(self._repo, read_data=read_data, subset=part, progress=progress)
        if self._repo.config.version >= 4:  # a removed end of the ledger, as far as checks here saw it
            res.errors += [f"ledger: {p}" for p in _audit.truncated_here(self._repo, res.ledger_records)]
            if not any(e.startswith("ledger:") for e in res.errors):
                _audit.remember_here(self._repo, res.ledger_records)
        if rot is not None:
            res.coverage = rot.finish(res.ok)
        return res

    def repair_index(self) -> RepairResult:
        """Rebuild the index from pack headers (exclusive lock); old index files are removed after."""
        self._mutable("rewrite the index")
        with self._audit("repair-index") as rec, self._session(LockMode.EXCLUSIVE):
            res = _repair.rebuild_index(self._repo)
            rec.update(ok=not res.unreadable, detail=f"{res.packs} packs, {res.blobs} blobs indexed;"
                       f" {res.index_files_written} index file(s) written, {res.index_files_removed} removed;"
                       f" {len(res.unreadable)} pack(s) unreadable")
            return res

    def forget(self, snapshots: Sequence[str] = (), *, keep_last: int = 0, keep_hourly: int = 0,
               keep_daily: int = 0, keep_weekly: int = 0, keep_monthly: int = 0, keep_yearly: int = 0,
               keep_within: str | timedelta | None = None, keep_tags: Sequence[str] = (),
               group_by: Sequence[str] = ("host", "paths"), dry_run: bool = False, now: datetime | None = None,
               prune: bool = False, max_unused: float = _prune.DEFAULT_MAX_UNUSED, tags: Sequence[str] = (),
               retention: _retention.Policy | None = None) -> ForgetResult:
        """Remove the snapshots named in ``snapshots`` and/or those no keep rule keeps
        (``weightvault.ops.retention``; ``retention`` replaces the keep_* arguments; with ``tags``
        the rules consider only snapshots carrying all of them). Data stays until prune, or
        ``prune=True`` prunes right after. Maintenance lock: backups may run beside it."""
        policy = retention or _retention.Policy.from_arguments(
            keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, keep_tags,
            group_by)
        if policy.empty() and not snapshots:
            raise UsageError("nothing to forget: give snapshot ids or keep rules",
                             hint="e.g. --keep-last 5 --keep-daily 7, or SNAPSHOT...; --dry-run shows the decision")
        if not dry_run:
            self._mutable("forget snapshots")
        mode = LockMode.EXCLUSIVE if prune and self._repo.config.version < 4 else LockMode.MAINTENANCE
        with self._audit("forget", dry_run=dry_run) as rec, self._session(mode) as s:
            explicit = [self._find(s, x) for x in snapshots]
            result = _forget.forget(self._repo, None if policy.empty() else policy, explicit,
                                    now=now or datetime.now(UTC), dry_run=dry_run, only_tags=tuple(tags))
            if prune:
                gone = frozenset(result.removed_ids) if dry_run else frozenset()
                result.prune = _prune.prune(self._repo, s.lock, _prune.PruneOptions(max_unused, dry_run, None, gone))
            rec.update(snapshots=result.removed_ids, detail=f"{len(result.removed_ids)} snapshot(s) removed"
                       + (f"; prune deleted {result.prune.deleted_packs} pack(s)" if result.prune else ""),
                       bytes=result.prune.deleted_bytes if result.prune else 0)
            return result

    def prune(self, *, max_unused: float = _prune.DEFAULT_MAX_UNUSED, dry_run: bool = False,
              say: Callable[[str], None] | None = None) -> PruneResult:
        """Delete data no snapshot needs, repacking packs more than ``max_unused`` unused
        (``weightvault.ops.prune``). Safe beside running backups in a format v4 repository
        (maintenance lock; packs running clients may use are deleted by a later prune,
        ``result.pending_packs``); older formats take an exclusive lock."""
        if not 0 <= max_unused <= 1:
            raise UsageError(f"max unused {max_unused} is outside 0..1 (0 %..100 %)")
        if not dry_run:
            self._mutable("prune")
        mode = LockMode.EXCLUSIVE if self._repo.config.version < 4 else LockMode.MAINTENANCE
        with self._audit("prune", dry_run=dry_run) as rec, self._session(mode) as s:
            res = _prune.prune(self._repo, s.lock, _prune.PruneOptions(max_unused, dry_run, say))
            rec.update(bytes=res.deleted_bytes, detail=f"{res.deleted_packs} pack(s) deleted, {res.repacked_packs}"
                       f" repacked, {res.rebased_blobs} blobs rebased, {res.pending_packs} pending")
            return res

    def copy_to(self, dest: Repository, snapshots: Sequence[str] = (), *,
                say: Callable[[str], None] | None = None) -> CopyResult:
        """Copy snapshots (default: every listed one) into ``dest``, which may have other keys and
        chunking. Only blobs ``dest`` lacks are stored, read back and verified before each
        snapshot is saved; snapshots copied before are skipped. Shared locks on both."""
        with dest._audit("copy", source=self.location, target=dest.location) as rec, \
                self._session(LockMode.SHARED) as s, dest._session(LockMode.SHARED):
            chosen = [self._find(s, x) for x in snapshots] if snapshots else _groups.representatives(s.snapshots())
            for snap in chosen:
                s.still_there(snap)
            res = _copy.copy_snapshots(self._repo, dest._repo, chosen, say)
            rec.update(snapshots=[d for _, d in res.copied], bytes=res.bytes_read,
                       detail=f"{len(res.copied)} copied, {len(res.skipped)} already there,"
                       f" {res.packs_verified} packs verified")
            return res
