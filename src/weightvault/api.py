"""The public Python API. The CLI, integrations and the web dashboard use only this module.

    from weightvault.api import Repository
    repo = Repository.open("/backups/repo", password="...")
    result = repo.backup(["runs/exp7"], tags=["run=exp7", "step=2000"])
    repo.restore("latest:run=exp7", target="/tmp/exp7", verify=True)
    assert repo.check(read_data=True).ok

Errors are ``weightvault.errors.WeightvaultError`` subclasses, each with an ``exit_code``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import getpass
import json
import logging
import os
import random as _random
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from weightvault.backends.base import FileType
from weightvault.backends.factory import StorageOptions, io_threads, is_remote, open_backend, repository_exists
from weightvault.backends.limits import parse_rate
from weightvault.backends.retry import RetryPolicy
from weightvault.codec.crypto import KdfParams
from weightvault.errors import (
    ImmutableError,
    IntegrityError,
    ObjectNotFoundError,
    RepositoryNotFoundError,
    SnapshotNotFoundError,
    UsageError,
    ValidationFailedError,
    WeightvaultError,
)
from weightvault.ops import backup as _backup
from weightvault.ops import check as _check
from weightvault.ops import copy as _copy
from weightvault.ops import diff as _diff
from weightvault.ops import forget as _forget
from weightvault.ops import groups as _groups
from weightvault.ops import heal as _heal
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
from weightvault.ops.diff import DiffEntry, DiffResult
from weightvault.ops.forget import ForgetResult
from weightvault.ops.groups import Group
from weightvault.ops.heal import HealResult
from weightvault.ops.progress import Progress, ProgressCallback
from weightvault.ops.prune import PruneResult
from weightvault.ops.repair import RepairResult
from weightvault.ops.restore import OVERWRITE_MODES, RestoreResult
from weightvault.ops.retention import parse_duration
from weightvault.ops.stats import Stats
from weightvault.ops.validate import ValidationReport
from weightvault.ops.verify import VerifyResult
from weightvault.policy import journal as _journal_mod
from weightvault.policy import plan as _plan
from weightvault.policy import spec as _spec
from weightvault.policy import suggest as _suggest
from weightvault.policy.plan import RpoLine
from weightvault.policy.spec import PolicySpec
from weightvault.repository import keys as _keys
from weightvault.repository import ledger as _ledger
from weightvault.repository import locks as _locks
from weightvault.repository.keys import KeyInfo
from weightvault.repository.ledger import LedgerCheck
from weightvault.repository.locks import LockInfo
from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import Repository as _Engine
from weightvault.repository.snapshots import Snapshot, resolve_snapshot

__all__ = [
    "OVERWRITE_MODES",
    "BackupResult",
    "CheckResult",
    "CopyResult",
    "DefaultRepository",
    "DiffEntry",
    "DiffResult",
    "DrillResult",
    "Fleet",
    "ForgetResult",
    "Group",
    "HealResult",
    "KdfParams",
    "KeyInfo",
    "LedgerCheck",
    "LockInfo",
    "Node",
    "PolicyRun",
    "PolicySpec",
    "PolicyStep",
    "Progress",
    "ProgressCallback",
    "PruneResult",
    "RepairResult",
    "Repository",
    "RestoreResult",
    "RetryPolicy",
    "RpoLine",
    "Snapshot",
    "Stats",
    "StorageOptions",
    "SwapResult",
    "ValidationReport",
    "VerifyResult",
    "apply_policy",
    "default_key_file",
    "default_repository_path",
    "load_policy",
    "open_or_create_default",
    "parse_duration",
    "parse_policy",
    "parse_rate",
    "policy_status",
    "read_password_file",
    "repository_exists",
    "suggest_policy",
    "tier_run",
]


def _pw(password: str | bytes) -> bytes:
    if isinstance(password, str):
        password = password.encode("utf-8")
    if not password:
        raise UsageError("the password is empty", hint="set $WEIGHTVAULT_PASSWORD or use --password-file")
    return password


def read_password_file(path: str | os.PathLike[str]) -> bytes:
    """The first line of a password file, without its line ending."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from exc
    return _pw(data.splitlines()[0] if data else b"")


_log = logging.getLogger(__name__)


def _check_level(level: int, check: str | None) -> None:
    if level not in _validate.LEVELS:
        raise UsageError(f"validation level {level} is not one of 1..4",
                         hint="1 integrity, 2 format, 3 structure, 4 function (with a check)")
    if level == 4 and not check:
        raise UsageError("level 4 runs a check of yours: give one as module:function",
                         hint="e.g. --check mychecks:forward_pass (it gets the restored directory)")


def _verify_state_path(repo_id: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "weightvault" / "verify" / f"{repo_id}.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Atomically: temp file, fsync, rename (a crash leaves the old state or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def default_repository_path() -> Path:
    """The embedded default repository: $XDG_DATA_HOME/weightvault/repo (~/.local/share/...)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "weightvault" / "repo"


def default_key_file() -> Path:
    """Generated password of the default repository: $XDG_CONFIG_HOME/weightvault/default-repo.key."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "weightvault" / "default-repo.key"


class Repository:
    """An open, unlocked repository. Methods take the locks they need."""

    def __init__(self, engine: _Engine) -> None:
        self._repo = engine

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        location: str | os.PathLike[str],
        password: str | bytes,
        *,
        kdf: KdfParams | None = None,
        delta_max_depth: int | None = None,
        storage: StorageOptions | None = None,
        append_only: bool = False,
    ) -> Repository:
        """Create a repository at a local path or ``s3://bucket/prefix`` (the bucket must exist).
        ``delta_max_depth`` (default 8, 0..32; 0 disables checkpoint deltas) bounds delta chains:
        restoring a chunk decodes at most that many bases first. ``append_only``: this tool
        refuses forget, prune, repair and key removal there (ImmutableError); the storage should
        enforce it too (docs/POLICIES.md)."""
        extra: dict[str, int] = {} if delta_max_depth is None else {"delta_max_depth": delta_max_depth}
        if append_only:
            extra["append_only"] = True
        engine = _Engine.init(open_backend(location, storage), _pw(password), kdf=kdf, **extra)
        engine.io_threads = io_threads(location, storage)
        return cls(engine)

    @classmethod
    def open(
        cls, location: str | os.PathLike[str], password: str | bytes, *, storage: StorageOptions | None = None
    ) -> Repository:
        """Open the repository at a local path or ``s3://bucket/prefix``."""
        if not is_remote(location) and not Path(location, "config").exists() and not Path(location).is_dir():
            raise RepositoryNotFoundError(
                f"no repository at {location}", hint=f"create one with `weightvault -r {location} init`"
            )
        engine = _Engine.open(open_backend(location, storage), _pw(password))
        engine.io_threads = io_threads(location, storage)
        return cls(engine)

    @property
    def location(self) -> str:
        return self._repo.backend.location

    @property
    def id(self) -> str:
        return self._repo.config.repo_id

    # -- the ledger ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _audit(self, op: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Record the operation in the repository's ledger (format v4) when the block ends, also
        when it fails with a WeightvaultError (then ``ok`` is False and ``detail`` the message)."""
        rec: dict[str, Any] = {"op": op, "ok": True, "snapshots": [], "source": None, "target": None, "bytes": 0,
                               "detail": "", **fields}
        t0 = time.perf_counter()
        try:
            yield rec
        except WeightvaultError as exc:
            rec.update(ok=False, detail=exc.message)
            self._append(rec, t0)
            raise
        self._append(rec, t0)

    def _append(self, rec: dict[str, Any], t0: float) -> None:
        if self._repo.config.version < 4 or rec.pop("dry_run", False):
            return  # the ledger is a format v4 object; dry runs change nothing, so nothing is recorded
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        fields = {**rec, "time": datetime.now(UTC).isoformat(), "operator": f"{user}@{socket.gethostname()}",
                  "duration_s": round(time.perf_counter() - t0, 3), "repository": self.location}
        for k in ("source", "target", "detail"):  # paths may hold bytes that are not UTF-8
            if isinstance(fields.get(k), str):
                fields[k] = fields[k].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        try:
            _ledger.append_record(self._repo.backend, self._repo.key, fields)
        except WeightvaultError as exc:
            _log.warning("could not append to the ledger of %s: %s", self.location, exc.message)

    def ledger(self, *, since: str | None = None, op: str | None = None) -> list[dict[str, Any]]:
        """The ledger's records (oldest first), through the local SQLite catalog
        (``$XDG_CACHE_HOME/weightvault/ledger-<id>.sqlite``), which is brought up to date first."""
        catalog = _ledger.LedgerCatalog(_ledger.catalog_path(self.id))
        try:
            catalog.sync(self._repo.backend, self._repo.key)
            return catalog.query(since, op)
        finally:
            catalog.close()

    def verify_ledger(self) -> _ledger.LedgerCheck:
        """Check the ledger's chain: every record readable, no sequence number missing, every
        record chained onto the one before (deleting or editing a record is detected)."""
        res = _ledger.verify_chain(self._repo.backend, self._repo.key)
        catalog = _ledger.LedgerCatalog(_ledger.catalog_path(self.id))
        try:
            seen = catalog.last_seq()  # records this machine has seen: catches a truncated tail
        finally:
            catalog.close()
        if seen >= res.records and seen >= 0:
            res.problems.append(f"records up to {seen} were seen here before, the repository holds {res.records}:"
                                " the end of the ledger was removed")
        return res

    # -- snapshots -------------------------------------------------------------------------------
    def snapshots(self, tags: Sequence[str] = (), paths: Sequence[str] = (), host: str | None = None) -> list[Snapshot]:
        """Snapshots oldest first, filtered: every tag must be present; any path may match. The
        ranks of a sharded group are not listed: its merged group snapshot is, once complete."""
        absp = {os.path.abspath(p) for p in paths}
        return [
            s
            for s in _groups.representatives(self._repo.snapshots())
            if all(s.has_tag(t) for t in tags)
            and (not absp or any(p in absp for p in s.paths))
            and (host is None or s.host == host)
        ]

    def find_snapshot(self, spec: str) -> Snapshot:
        """Resolve an id prefix, 'latest', 'latest:k=v' or '@TIME'. Only an explicit id names a
        rank snapshot of a group; 'latest' and '@TIME' see complete groups only."""
        snaps = self._repo.snapshots()
        if spec.startswith(("latest", "@")):
            snaps = _groups.representatives(snaps)
        return resolve_snapshot(spec, snaps)

    def groups(self) -> list[Group]:
        """Every sharded-checkpoint group, oldest first, with its ranks, state and group snapshot."""
        return list(_groups.groups(self._repo.snapshots()).values())

    def ls(self, spec: str, path: str | None = None) -> list[Node]:
        snap = self.find_snapshot(spec)
        prefix = os.fsencode(path.strip("/")) if path else b""
        return [
            n
            for n in iter_manifest(snap.tree, self._repo.load_blob)
            if not prefix or n.path == prefix or n.path.startswith(prefix + b"/")
        ]

    def diff(self, spec_a: str, spec_b: str) -> DiffResult:
        return _diff.diff(self._repo, self.find_snapshot(spec_a), self.find_snapshot(spec_b))

    # -- operations ------------------------------------------------------------------------------
    def backup(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        tags: Sequence[str] = (),
        excludes: Sequence[str] = (),
        exclude_caches: bool = False,
        force: bool = False,
        parent: str | None = None,
        host: str | None = None,
        time: datetime | None = None,
        progress: ProgressCallback | None = None,
        group: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        min_free: float = 0.10,
        includes: Sequence[str] = (),
        lock_until: datetime | None = None,
    ) -> BackupResult:
        """Back up ``paths`` into one snapshot. Unreadable files are listed in ``result.errors``.

        With ``group``/``rank``/``world_size`` (all or none) the snapshot is one rank's shard of a
        distributed checkpoint; when all ranks have committed, a merged group snapshot appears
        (``result.group`` tells the group's state). Before reading data, a backup to storage of
        known size is refused (NoSpaceError, nothing written) if its new and changed files would
        leave less than ``min_free`` of it free (0 disables the check). With ``includes`` only files
        matching one of the globs are backed up (directories always). ``lock_until`` puts the
        snapshot under a retention lock: forget keeps it (and refuses to remove it by id) until then."""
        for t in tags:
            if not t or "\n" in t:
                raise UsageError(f"invalid tag {t!r}")
        opts = _backup.BackupOptions(
            tags=list(tags), excludes=list(excludes), exclude_caches=exclude_caches, force=force,
            parent=self.find_snapshot(parent).id if parent else None, host=host, time=time, progress=progress,
            group=group, rank=rank, world_size=world_size, min_free=min_free, includes=list(includes),
            lock_until=lock_until,
        )
        with self._audit("backup", source=", ".join(os.path.abspath(p) for p in paths)) as rec:
            with self._repo.lock(exclusive=False):
                self._repo.load_index()
                res = _backup.backup(self._repo, [os.fspath(p) for p in paths], opts)
            s = res.snapshot.summary
            rec.update(snapshots=[res.snapshot.id], bytes=int(s.get("bytes", 0)), ok=not res.errors,
                       detail=f"{int(s.get('files', 0))} files, {int(s.get('stored_bytes_added', 0))} bytes added,"
                       f" {len(res.errors)} unreadable")
            return res

    def restore(
        self,
        spec: str,
        target: str | os.PathLike[str],
        *,
        includes: Sequence[str] = (),
        overwrite: str = "error",
        verify: bool = False,
        progress: ProgressCallback | None = None,
        repair_from: Repository | None = None,
    ) -> RestoreResult:
        """Restore a snapshot under ``target`` (never outside it). With ``repair_from`` (a replica
        that ``copy`` filled), data found damaged on the way is rewritten from the replica
        (``heal_from``) and the files that failed are restored again."""
        if repair_from is not None:
            try:
                first = self.restore(spec, target, includes=includes, overwrite=overwrite, verify=verify,
                                     progress=progress)
                if not first.errors:
                    return first
            except IntegrityError:
                pass
            healed = self.heal_from(repair_from)
            if not healed.repaired:
                raise IntegrityError("restore found damaged data and the replica could not repair it: "
                                     + "; ".join(why for _, why in healed.unrepaired[:3]),
                                     hint="run `weightvault check --read-data` to see what is damaged")
            return self.restore(spec, target, includes=includes, overwrite="if-changed" if overwrite == "error"
                                else overwrite, verify=verify, progress=progress)
        snap = self.find_snapshot(spec)
        if overwrite not in OVERWRITE_MODES:
            raise UsageError(f"unknown overwrite mode {overwrite!r}; use one of {', '.join(OVERWRITE_MODES)}")
        opts = _restore.RestoreOptions(includes=list(includes), overwrite=overwrite,  # type: ignore[arg-type]
                                       verify=verify, progress=progress)
        with self._audit("restore", snapshots=[snap.id], target=os.path.abspath(target)) as rec:
            with self._repo.lock(exclusive=False):
                self._still_there(snap)
                res = _restore.restore(self._repo, snap, os.fspath(target), opts)
            rec.update(bytes=res.bytes, ok=not res.errors,
                       detail=f"{res.files} files" + (f", {res.verified} verified" if verify else "")
                       + (f", {len(res.errors)} failed" if res.errors else ""))
            return res

    def restore_swap(self, spec: str, target: str | os.PathLike[str], *, level: int = 1,
                     progress: ProgressCallback | None = None, backup_previous: bool = False) -> SwapResult:
        """Restore a snapshot (of one source path) into a fresh sibling of ``target``, verify every
        file's SHA-256, validate it at ``level`` (1..3), then swap it into place: atomically where
        the kernel can exchange two paths (Linux renameat2), else with two renames. The previous
        contents are kept beside it as ``<target>.before-<UTC time>``. Any failure before the swap
        removes the new copy and leaves ``target`` untouched (the error is raised). With
        ``backup_previous`` the safety copy is itself backed up (tags ``safety-copy`` and
        ``replaced-by=<snapshot>``) before this returns."""
        snap = self.find_snapshot(spec)
        if len(snap.paths) != 1:
            raise UsageError(f"snapshot {snap.short_id} has {len(snap.paths)} source paths; --swap needs exactly one",
                             hint="restore it with --target and move the parts yourself")
        _check_level(level, None)
        dest = Path(target).absolute()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.wv-swap-", dir=dest.parent))
        try:
            restored = self.restore(snap.id, scratch, verify=True, progress=progress)
            if restored.errors:
                raise IntegrityError(f"{len(restored.errors)} file(s) could not be restored; first: "
                                     f"{restored.errors[0][0]}: {restored.errors[0][1]}")
            new = scratch / os.path.basename(snap.paths[0])
            report = self.validate(snap.id, new, level=level)
            if not report.ok:
                bad = report.failed[0]
                raise ValidationFailedError(
                    f"the restored copy failed validation at level {level}: {bad.path}: {bad.problems[0]}",
                    hint=f"{dest} was left untouched")
            backup = dest.with_name(f"{dest.name}.before-{stamp}") if dest.exists() else None
            _swap_into_place(new, dest, backup)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        saved = None
        if backup_previous and backup is not None:
            saved = self.backup([backup], tags=["safety-copy", f"replaced-by={snap.short_id}"]).snapshot.id
        return SwapResult(snap.id, str(dest), str(backup) if backup else None, restored, report, saved)

    def verify(self, spec: str, *, against: str | os.PathLike[str] | None = None, sample: float | None = None,
               progress: ProgressCallback | None = None) -> VerifyResult:
        """Re-read a snapshot's data: every blob authenticated and hash-checked, every file's
        SHA-256 and size compared with the manifest; with ``against``, compared with that live
        directory too. ``sample`` (0 < x <= 1) checks one of round(1/x) deterministic buckets of
        files, the next one on each run (state in ``$XDG_STATE_HOME/weightvault/verify/``), so
        repeated runs cover every file; ``result.coverage`` says how much has been covered."""
        snap = self.find_snapshot(spec)
        buckets = None
        if sample is not None:
            if not 0 < sample <= 1:
                raise UsageError(f"sample {sample} is outside (0, 1]", hint="e.g. --sample 5%")
            buckets = max(1, round(1 / sample))
        state_path = _verify_state_path(self.id)
        state = _read_json(state_path) if buckets else {}
        key = f"{snap.id}:{buckets}"
        entry = state.get(key, {})
        done, last = set(entry.get("done", [])), int(entry.get("last", -1))
        if buckets and len(done) >= buckets:
            done = set()  # every bucket verified: start another round
        order = [(last + 1 + i) % buckets for i in range(buckets)] if buckets else []
        pick = (next((b for b in order if b not in done), order[0]), buckets) if buckets else None
        with self._audit("verify", snapshots=[snap.id], target=os.fspath(against) if against else None) as rec:
            with self._repo.lock():
                self._still_there(snap)
                res = _verify.verify_snapshot(self._repo, snap, against, pick, progress)
            rec.update(bytes=res.bytes, ok=res.ok, detail=f"{res.files} files"
                       + (f", sample {pick[0] + 1}/{pick[1]}" if pick else "")
                       + f", {len(res.damaged)} damaged, {len(res.missing) + len(res.changed) + len(res.extra)} differ")
        if buckets and pick is not None:
            if res.ok:
                done.add(pick[0])
            state[key] = {"done": sorted(done), "last": pick[0]}
            _write_json(state_path, state)
            res.coverage = len(done) / buckets
        return res

    def validate(self, spec: str, directory: str | os.PathLike[str], *, level: int = 3,
                 check: str | None = None) -> ValidationReport:
        """Validate the restored (or live) copy of a snapshot in ``directory`` (standing for its
        source path) at model-validation ``level`` 1..4 (see ``weightvault.ops.validate``); level 4
        runs the user's ``check`` (``module:function``)."""
        _check_level(level, check)
        snap = self.find_snapshot(spec)
        with self._repo.lock():
            self._still_there(snap)
            return _validate.validate_tree(self._repo, snap, Path(directory), level, check)

    def drill(self, *, pick: str = "latest", within: str | timedelta | None = None, level: int = 3,
              now: datetime | None = None, workdir: str | os.PathLike[str] | None = None,
              seed: int | None = None, journal: Path | None = None, record: bool = True,
              check: str | None = None) -> DrillResult:
        """A restore drill: pick a snapshot (``latest`` or ``random``, optionally ``within`` a time
        before now), restore it into a fresh temporary directory (every file SHA-256-checked before
        it is renamed into place), validate it at ``level``, record the outcome and the measured
        restore time (RTO) in the journal (unless ``record`` is False: ``policy apply`` records it
        itself), and remove the copy. Failure is a result, not an error."""
        if pick not in ("latest", "random"):
            raise UsageError(f"unknown pick {pick!r}", hint="use latest or random")
        _check_level(level, check)
        clock = now or datetime.now(UTC)
        snaps = self.snapshots()
        if within is not None:
            span = _retention.parse_duration(within) if isinstance(within, str) else within
            snaps = [s for s in snaps if s.datetime >= clock - span]
        if not snaps:
            raise SnapshotNotFoundError("no snapshot to drill" + (f" within {within}" if within else ""))
        snap = snaps[-1] if pick == "latest" else _random.Random(seed).choice(snaps)
        result = DrillResult(snap.id, level, False, clock.isoformat())
        tmp = Path(tempfile.mkdtemp(prefix="wv-drill-", dir=workdir))
        try:
            t0 = time.perf_counter()
            try:
                restored = self.restore(snap.id, tmp, verify=True)
                result.restore_s = time.perf_counter() - t0
                result.files, result.bytes = restored.files, restored.bytes
                if restored.errors:
                    raise IntegrityError(f"{len(restored.errors)} file(s) could not be restored; first: "
                                         f"{restored.errors[0][0]}: {restored.errors[0][1]}")
                root = tmp / os.path.basename(snap.paths[0]) if len(snap.paths) == 1 else tmp
                t1 = time.perf_counter()
                result.report = self.validate(snap.id, root, level=level, check=check)
                result.validate_s = time.perf_counter() - t1
                result.ok = result.report.ok
                if not result.ok and result.report.failed:
                    bad = result.report.failed[0]
                    result.error = f"{len(result.report.failed)} file(s) failed; first: {bad.path}: {bad.problems[0]}"
                elif not result.ok:
                    result.error = "; ".join(result.report.check_problems[:3])
            except WeightvaultError as exc:
                result.error = f"restore failed: {exc.message}"
            result.rto_s = time.perf_counter() - t0
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        entry = {"time": result.time, "step": "drill", "repository": self.location, "snapshot": snap.id,
                  "level": level, "ok": result.ok, "rto_s": round(result.rto_s, 3), "bytes": result.bytes,
                  "detail": result.error or f"restored {result.files} files and validated them at level {level}"}
        if record:
            _journal_mod.append_record(journal or _journal_mod.default_journal_path(), entry)
        self._append({"op": "drill", "ok": result.ok, "snapshots": [snap.id], "source": None, "target": None,
                      "bytes": result.bytes, "detail": f"level {level}, RTO {result.rto_s:.1f} s: {entry['detail']}"},
                     time.perf_counter() - result.rto_s)
        return result

    def heal_from(self, replica: Repository, *, dry_run: bool = False) -> HealResult:
        """Rewrite blobs that are damaged or missing here from ``replica`` (a repository ``copy``
        filled from this one), each checked against its id first; then the index no longer names
        the damaged copies (see ``weightvault.ops.heal``). Exclusive lock here, shared there."""
        if not dry_run:
            self._mutable("rewrite damaged data")
        with self._audit("repair", source=replica.location, dry_run=dry_run) as rec, \
                self._repo.lock(exclusive=not dry_run), replica._repo.lock():
            self._repo.load_index()
            res = _heal.heal(self._repo, replica._repo, dry_run)
            rec.update(ok=res.ok, detail=f"{len(res.damaged)} damaged, {len(res.repaired)} rewritten from the replica,"
                       f" {len(res.unrepaired)} not repairable")
        if res.damaged and not dry_run:
            _journal_mod.append_record(_journal_mod.default_journal_path(), {
                "time": datetime.now(UTC).isoformat(), "step": "repair", "repository": self.location,
                "replica": replica.location, "ok": res.ok, "repaired": len(res.repaired),
                "detail": f"{len(res.repaired)} blob(s) rewritten from the replica, {len(res.unrepaired)} not"})
        return res

    def _still_there(self, snap: Snapshot) -> None:
        """With a lock held: the snapshot was not forgotten after it was looked up (a prune that
        starts later waits for this lock, so its data stays until the lock is released)."""
        try:
            self._repo.backend.stat(FileType.SNAPSHOT, snap.id)
        except ObjectNotFoundError:
            raise SnapshotNotFoundError(f"snapshot {snap.short_id} was removed by a concurrent forget") from None

    def check(self, *, read_data: bool = False, subset: str | None = None,
              progress: ProgressCallback | None = None) -> CheckResult:
        """Verify the repository (see ``weightvault.ops.check``). Takes a maintenance lock so that
        no prune deletes packs while it compares index and storage; backups may run beside it."""
        sub = _check.parse_subset(subset) if subset else None
        with self._repo.lock(maintenance=True):
            return _check.check(self._repo, read_data=read_data, subset=sub, progress=progress)

    @property
    def append_only(self) -> bool:
        return self._repo.config.append_only

    def _mutable(self, what: str) -> None:
        if self._repo.config.append_only:
            raise ImmutableError(
                f"refusing to {what}: {self.location} is an append-only repository",
                hint="append-only repositories only ever grow; remove data from a repository created without"
                " --append-only",
            )

    def repair_index(self) -> RepairResult:
        """Rebuild the index from pack headers (exclusive lock); old index files are removed after."""
        self._mutable("rewrite the index")
        with self._repo.lock(exclusive=True):
            return _repair.rebuild_index(self._repo)

    def forget(
        self,
        snapshots: Sequence[str] = (),
        *,
        keep_last: int = 0,
        keep_hourly: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
        keep_monthly: int = 0,
        keep_yearly: int = 0,
        keep_within: str | timedelta | None = None,
        keep_tags: Sequence[str] = (),
        group_by: Sequence[str] = ("host", "paths"),
        dry_run: bool = False,
        now: datetime | None = None,
        prune: bool = False,
        max_unused: float = _prune.DEFAULT_MAX_UNUSED,
        tags: Sequence[str] = (),
        retention: _retention.Policy | None = None,
    ) -> ForgetResult:
        """Remove the snapshots named in ``snapshots`` and/or those no keep rule keeps (see
        ``weightvault.ops.retention``). Data stays until prune, or ``prune=True`` prunes right
        after (``result.prune``). With ``tags``, the keep rules consider only snapshots carrying all
        of them. ``retention`` (a ``weightvault.ops.retention.Policy``) replaces the keep_* arguments.
        Takes a maintenance lock: backups may run beside it."""
        counts = (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)
        if any(n < 0 for n in counts):
            raise UsageError("keep counts must be >= 0")
        within = _retention.parse_duration(keep_within) if isinstance(keep_within, str) else keep_within
        policy = retention or _retention.Policy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
                                                keep_yearly, within, tuple(keep_tags), tuple(group_by))
        rules = not policy.empty()
        if not rules and not snapshots:
            raise UsageError("nothing to forget: give snapshot ids or keep rules",
                             hint="e.g. --keep-last 5 --keep-daily 7, or SNAPSHOT...; --dry-run shows the decision")
        when = now or datetime.now(UTC)
        if not dry_run:
            self._mutable("forget snapshots")
        with self._audit("forget", dry_run=dry_run) as rec, \
                self._repo.lock(maintenance=True, exclusive=self._repo.config.version < 4 and prune) as lock:
            explicit = [self.find_snapshot(s) for s in snapshots]
            result = _forget.forget(self._repo, policy if rules else None, explicit, now=when, dry_run=dry_run,
                                    only_tags=tuple(tags))
            if prune:
                gone = frozenset(result.removed_ids) if dry_run else frozenset()
                result.prune = _prune.prune(self._repo, lock, _prune.PruneOptions(max_unused, dry_run, None, gone))
            rec.update(snapshots=result.removed_ids,
                       detail=f"{len(result.removed_ids)} snapshot(s) removed"
                       + (f"; prune deleted {result.prune.deleted_packs} pack(s)" if result.prune else ""),
                       bytes=result.prune.deleted_bytes if result.prune else 0)
            return result

    def copy_to(self, dest: Repository, snapshots: Sequence[str] = (), *,
                say: Callable[[str], None] | None = None) -> CopyResult:
        """Copy snapshots (default: every listed one) from this repository into ``dest``, which
        may have other keys and chunking parameters. Only blobs ``dest`` lacks are stored; what
        was written is read back and verified before each snapshot is saved; snapshots copied
        before are skipped (see ``weightvault.ops.copy``). Shared locks on both."""
        with dest._audit("copy", source=self.location, target=dest.location) as rec:
            with self._repo.lock(), dest._repo.lock():
                chosen = ([self.find_snapshot(s) for s in snapshots] if snapshots
                          else _groups.representatives(self._repo.snapshots()))
                for snap in chosen:
                    self._still_there(snap)
                res = _copy.copy_snapshots(self._repo, dest._repo, chosen, say)
            rec.update(snapshots=[d for _, d in res.copied], bytes=res.bytes_read,
                       detail=f"{len(res.copied)} copied, {len(res.skipped)} already there,"
                       f" {res.packs_verified} packs verified")
            return res

    def prune(self, *, max_unused: float = _prune.DEFAULT_MAX_UNUSED, dry_run: bool = False,
              say: Callable[[str], None] | None = None) -> PruneResult:
        """Delete data no snapshot needs, repacking packs more than ``max_unused`` unused (see
        ``weightvault.ops.prune``). Safe while other clients back up: in a format v4 repository
        it takes a maintenance lock, and packs that running clients might still use are deleted
        by a later prune once they have finished (``result.pending_packs``). Older formats take
        an exclusive lock."""
        if not 0 <= max_unused <= 1:
            raise UsageError(f"max unused {max_unused} is outside 0..1 (0 %..100 %)")
        if not dry_run:
            self._mutable("prune")
        exclusive = self._repo.config.version < 4
        with self._audit("prune", dry_run=dry_run) as rec, \
                self._repo.lock(maintenance=True, exclusive=exclusive) as lock:
            res = _prune.prune(self._repo, lock, _prune.PruneOptions(max_unused, dry_run, say))
            rec.update(bytes=res.deleted_bytes, detail=f"{res.deleted_packs} pack(s) deleted, {res.repacked_packs}"
                       f" repacked, {res.rebased_blobs} blobs rebased, {res.pending_packs} pending")
            return res

    def stats(self, spec: str | None = None) -> Stats:
        """Sizes of one snapshot, or of all: every listed snapshot plus the ranks of incomplete
        groups (a complete group's ranks are counted once, through its group snapshot)."""
        if spec:
            return _stats.stats(self._repo, [self.find_snapshot(spec)])
        everything = self._repo.snapshots()
        pending = [s for g in _groups.groups(everything).values() if not g.complete for s in g.ranks.values()]
        return _stats.stats(self._repo, _groups.representatives(everything) + pending)

    # -- keys and locks --------------------------------------------------------------------------
    @property
    def current_key(self) -> str:
        return self._repo.key_name

    def list_keys(self) -> list[KeyInfo]:
        return _keys.list_keys(self._repo.backend)

    def add_key(self, password: str | bytes, *, kdf: KdfParams | None = None) -> str:
        return _keys.create_key_file(self._repo.backend, self.id, self._repo.key, _pw(password), kdf or KdfParams())

    def remove_key(self, key_id: str) -> str:
        """Remove a key file by id prefix. The key in use and the last key cannot be removed."""
        from weightvault.backends.base import FileType

        self._mutable("remove a key")
        matches = [k.name for k in self.list_keys() if k.name.startswith(key_id)]
        if len(matches) != 1:
            raise UsageError(f"key id {key_id!r} matches {len(matches)} keys; give a unique prefix")
        if matches[0] == self._repo.key_name:
            raise UsageError("refusing to remove the key this session is using", hint="open with another key first")
        self._repo.backend.remove(FileType.KEY, matches[0])
        return matches[0]

    def change_password(self, new_password: str | bytes, *, kdf: KdfParams | None = None) -> str:
        """Add a key for ``new_password``, then remove the current one. Returns the new key id."""
        from weightvault.backends.base import FileType

        self._mutable("change the password (it removes the old key)")
        old = self._repo.key_name
        name = self.add_key(new_password, kdf=kdf)
        self._repo.key_name = name
        self._repo.backend.remove(FileType.KEY, old)
        return name

    def locks(self) -> list[LockInfo]:
        return _locks.list_locks(self._repo.backend)

    def unlock(self, remove_all: bool = False) -> list[LockInfo]:
        return _locks.remove_stale_locks(self._repo.backend, remove_all)


@dataclass(frozen=True)
class DefaultRepository:
    repository: Repository
    created: bool
    key_file: Path | None  # the generated key file, when this call created it


def open_or_create_default(
    password: str | bytes | None, *, create: bool, delta_max_depth: int | None = None
) -> DefaultRepository:
    """Open the embedded default repository, creating it (and a key file, mode 0600) if asked.

    With no password, the generated key file is used; with one, it protects the new repository.
    """
    path = default_repository_path()
    keyfile = default_key_file()
    if password is None and keyfile.exists():
        password = read_password_file(keyfile)
    if (path / "config").exists():
        if password is None:
            raise UsageError(
                f"the default repository at {path} needs a password and {keyfile} does not exist",
                hint="set $WEIGHTVAULT_PASSWORD or use --password-file",
            )
        return DefaultRepository(Repository.open(path, password), False, None)
    if not create:
        raise RepositoryNotFoundError(
            f"the default repository {path} does not exist yet",
            hint="run `weightvault init` or a first `weightvault backup PATH`",
        )
    generated = None
    if password is None:
        password = secrets.token_urlsafe(32)
        keyfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, password.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        generated = keyfile
    try:
        repo = Repository.init(path, password, delta_max_depth=delta_max_depth)
    except WeightvaultError:
        if generated is not None:
            generated.unlink()
        raise
    return DefaultRepository(repo, True, generated)


# -- policies: apply, tiers, status ------------------------------------------------------------------
load_policy = _spec.load_policy
parse_policy = _spec.parse_policy


def suggest_policy(stage: str, model_size: str | int, *, repository: str | None = None,
                   paths: Sequence[str] = ("/path/to/run",)) -> str:
    """A policy file (TOML) for a run at ``stage`` (initial, middle, final) of a model of
    ``model_size`` bytes (or text such as '120GB'); see ``weightvault.policy.suggest``."""
    size = _suggest.parse_size(model_size) if isinstance(model_size, str) else int(model_size)
    return _suggest.suggest_policy(stage, size, repository=repository or str(default_repository_path()),
                                   paths=[os.path.abspath(p) if not p.startswith("/") else p for p in paths])


@dataclass
class PolicyStep:
    """One step ``apply_policy`` or ``tier_run`` carried out (or, in a dry run, would)."""

    step: str  # backup | forget | prune | copy | tier-move | tier-expire | tier-keep
    repository: str
    ok: bool
    detail: str
    source: str | None = None
    data_class: str | None = None
    snapshot: str | None = None
    time: str = ""
    exit_code: int = 0


@dataclass
class PolicyRun:
    steps: list[PolicyStep]
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


@dataclass
class SwapResult:
    """``restore_swap``: what is now at ``target``, where its previous contents went."""

    snapshot: str
    target: str
    previous: str | None  # the dated safety copy, or None if target did not exist
    restore: RestoreResult
    report: ValidationReport
    previous_snapshot: str | None = None  # with backup_previous: the snapshot of the safety copy


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _swap_into_place(new: Path, dest: Path, previous: Path | None) -> None:
    """Put ``new`` at ``dest``; the old ``dest`` (if any) ends up at ``previous``. With renameat2
    RENAME_EXCHANGE the switch is one atomic step; otherwise ``dest`` is briefly absent between
    two renames (never both half-there). Directories are fsynced."""
    if previous is None:
        os.rename(new, dest)
    elif _exchange(new, dest):
        os.rename(new, previous)  # ``new`` now holds the old contents
    else:
        os.rename(dest, previous)
        os.rename(new, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


@dataclass
class DrillResult:
    """What a restore drill did: the snapshot, whether restore and validation passed, the time
    to restore and validate (``rto_s``), and the validation report."""

    snapshot: str
    level: int
    ok: bool
    time: str
    rto_s: float = 0.0
    restore_s: float = 0.0
    validate_s: float = 0.0
    files: int = 0
    bytes: int = 0
    error: str | None = None
    report: ValidationReport | None = None


class Fleet:
    """The repositories a policy names, opened on first use. Passwords: the repository's
    ``password_file`` or ``password_env``; for the embedded default repository its key file;
    else ``$WEIGHTVAULT_PASSWORD``."""

    def __init__(self, spec: _spec.PolicySpec, storage: StorageOptions | None = None) -> None:
        self.spec = spec
        self.storage = storage or StorageOptions()
        self._open: dict[str, Repository] = {}

    def __getitem__(self, name: str) -> Repository:
        if name not in self._open:
            r = self.spec.repositories[name]
            storage = StorageOptions(**{**self.storage.__dict__, "s3_endpoint": r.s3_endpoint or
                                        self.storage.s3_endpoint})
            self._open[name] = Repository.open(os.path.expanduser(r.url), self._password(r), storage=storage)
        return self._open[name]

    def _password(self, r: _spec.RepoSpec) -> bytes:
        if r.password_file:
            return read_password_file(os.path.expanduser(r.password_file))
        if r.password_env:
            value = os.environ.get(r.password_env)
            if not value:
                raise UsageError(f"repository {r.name}: ${r.password_env} is not set",
                                 hint="set it, or give password_file in the policy")
            return value.encode()
        if Path(os.path.expanduser(r.url)) == default_repository_path() and default_key_file().exists():
            return read_password_file(default_key_file())
        env = os.environ.get("WEIGHTVAULT_PASSWORD")
        if env:
            return env.encode()
        raise UsageError(f"no password for repository {r.name}",
                         hint="give password_file or password_env in its [repositories] table")


def _journal(spec: _spec.PolicySpec) -> Path:
    if spec.settings.journal:
        return Path(os.path.expanduser(spec.settings.journal))
    return _journal_mod.default_journal_path()


def _run_step(steps: list[PolicyStep], step: PolicyStep, action: Callable[[], str | None], journal: Path | None,
              say: Callable[[str], None] | None, clock: datetime) -> bool:
    """Run one step, recording its outcome (a WeightvaultError fails the step, not the run)."""
    step.time = clock.isoformat()
    try:
        detail = action()
        if detail:
            step.detail = detail
    except WeightvaultError as exc:
        step.ok, step.exit_code, step.detail = False, exc.exit_code, f"{step.detail}: failed: {exc.message}"
    steps.append(step)
    if journal is not None:
        _journal_mod.append_record(journal, {k: v for k, v in step.__dict__.items() if v is not None})
    if say is not None:
        say(f"{'ok  ' if step.ok else 'FAIL'} {step.step} {step.repository}: {step.detail}")
    return step.ok


def apply_policy(spec: _spec.PolicySpec, *, now: datetime | None = None, dry_run: bool = False,
                 fleet: Fleet | None = None, say: Callable[[str], None] | None = None) -> PolicyRun:
    """Run what the policy says is due: backups per source and data class, retention (forget),
    prune (every ``settings.prune_every``), copies to replicas, then ``tier_run``. Every step is
    recorded in the journal. ``now`` (default: the clock) is also the time of new snapshots, so a
    schedule can be simulated. A failing step is recorded and the others still run."""
    fleet = fleet or Fleet(spec)
    clock = now or datetime.now(UTC)
    simulated = now is not None
    journal = None if dry_run else _journal(spec)
    run = PolicyRun([], dry_run)
    snaps = {name: fleet[name].snapshots() for name in spec.repositories}
    # 1. backups that are due
    for due in _plan.due_backups(spec, snaps, clock):
        src, dc = due.source, due.dc
        step = PolicyStep("backup", src.repository, True, f"{src.name}/{dc.name}: {due.reason}", src.name, dc.name)
        if dry_run:
            run.steps.append(step)
            continue

        def backup(src: _spec.SourceSpec = src, dc: _spec.DataClass = dc, due: _plan.BackupDue = due,
                   step: PolicyStep = step) -> str:
            res = fleet[src.repository].backup(
                list(src.paths), tags=_plan.class_tags(src, dc), includes=dc.globs, excludes=spec.excludes_for(dc),
                parent=due.parent.id if due.parent else None, time=clock if simulated else None,
                lock_until=clock + dc.lock_for if dc.lock_for else None)
            step.snapshot = res.snapshot.id
            s = res.snapshot.summary
            return (f"{src.name}/{dc.name}: snapshot {res.snapshot.short_id}, {int(s.get('files', 0))} files,"
                    f" {int(s.get('stored_bytes_added', 0))} bytes added")

        _run_step(run.steps, step, backup, journal, say, clock)
    # 2. retention per source and class, in every repository holding its snapshots (tiers, replicas)
    snaps = {name: fleet[name].snapshots() for name in spec.repositories}
    for src in spec.sources.values():
        for dc in spec.classes_of(src):
            tags = _plan.class_tags(src, dc)[:2]
            for name in spec.repositories:
                if not any(all(t in s.tags for t in tags) for s in snaps[name]):
                    continue
                step = PolicyStep("forget", name, True, f"{src.name}/{dc.name}", src.name, dc.name)

                def forget(dc: _spec.DataClass = dc, tags: list[str] = tags, name: str = name) -> str:
                    res = fleet[name].forget(retention=dc.retention, tags=tags, now=clock, dry_run=dry_run)
                    verb = "would remove" if dry_run else "removed"
                    return f"{tags[0][7:]}/{dc.name}: {verb} {len(res.removed)} snapshot(s)"

                _run_step(run.steps, step, forget, journal, say if not dry_run else None, clock)
    # 3. prune where due
    records = _journal_mod.read_records(_journal(spec))
    for name in spec.repositories:
        last = max((r["time"] for r in records if r.get("step") == "prune" and r.get("repository") == name
                    and r.get("ok")), default=None)
        if last is not None and datetime.fromisoformat(last) + spec.settings.prune_every > clock:
            continue
        step = PolicyStep("prune", name, True, "prune")

        def prune(name: str = name) -> str:
            res = fleet[name].prune(dry_run=dry_run)
            return (f"deleted {res.deleted_packs} pack(s), {res.deleted_bytes} bytes; {res.pending_packs} pending"
                    if not dry_run else f"would condemn {res.condemned_packs} pack(s)")

        _run_step(run.steps, step, prune, journal, say, clock)
    # 4. copies to replicas
    for src in spec.sources.values():
        for replica in src.replicate_to:
            ids = [s.id for s in fleet[src.repository].snapshots(tags=[f"source={src.name}"])]
            step = PolicyStep("copy", replica, True, f"{src.name}: {src.repository} -> {replica}", src.name)
            if dry_run or not ids:
                if ids:
                    run.steps.append(step)
                continue

            def copy(src: _spec.SourceSpec = src, replica: str = replica, ids: list[str] = ids) -> str:
                res = fleet[src.repository].copy_to(fleet[replica], ids)
                return (f"{src.name}: {len(res.copied)} snapshot(s) copied to {replica}, {len(res.skipped)} there;"
                        f" {res.packs_verified} pack(s) verified")

            _run_step(run.steps, step, copy, journal, say, clock)
    # 5. tier moves
    run.steps += tier_run(spec, now=now, dry_run=dry_run, fleet=fleet, say=say).steps
    # 6. restore drills that are due
    for drill in spec.drills.values():
        last = max((r["time"] for r in records if r.get("step") == "drill" and r.get("ok") and str(
            r.get("detail", "")).startswith(f"{drill.name}:") and r.get("repository") == drill.repository),
                   default=None)
        if last is not None and datetime.fromisoformat(last) + drill.every > clock:
            continue
        step = PolicyStep("drill", drill.repository, True, f"{drill.name}: level {drill.level}, pick {drill.pick}")
        if dry_run:
            run.steps.append(step)
            continue

        def do_drill(drill: _spec.DrillSpec = drill, step: PolicyStep = step) -> str:
            res = fleet[drill.repository].drill(pick=drill.pick, within=drill.within, level=drill.level, now=clock,
                                                record=False, check=drill.check)
            step.snapshot = res.snapshot
            if not res.ok:
                raise ValidationFailedError(f"{drill.name}: snapshot {res.snapshot[:8]}: {res.error}")
            return (f"{drill.name}: snapshot {res.snapshot[:8]} restored ({res.files} files) and validated at level"
                    f" {drill.level} in {res.rto_s:.1f} s (RTO)")

        _run_step(run.steps, step, do_drill, journal, say, clock)
    return run


def tier_run(spec: _spec.PolicySpec, *, now: datetime | None = None, dry_run: bool = False,
             fleet: Fleet | None = None, say: Callable[[str], None] | None = None) -> PolicyRun:
    """Move snapshots older than their repository's tier age down to the next tier their class
    passes through: copy (verified), then forget here; expire those whose class ends here. Before
    anything moves to an archive tier, a copy exists on a second site (else it stays put)."""
    fleet = fleet or Fleet(spec)
    clock = now or datetime.now(UTC)
    journal = None if dry_run else _journal(spec)
    run = PolicyRun([], dry_run)
    for repo in sorted(spec.repositories.values(), key=lambda r: _spec.TIERS.index(r.tier)):  # hot first: cascades
        snaps = {name: fleet[name].snapshots() for name in spec.repositories}
        for plan in _plan.tier_plan(spec, repo, snaps[repo.name], clock):
            s = plan.snapshot
            step = PolicyStep(f"tier-{plan.action}", repo.name, True, f"{s.short_id}: {plan.reason}",
                              s.tag_dict().get("source"), s.tag_dict().get("class"), s.id)
            if dry_run or plan.action == "keep":
                run.steps.append(step)
                continue

            def act(plan: _plan.TierStep = plan, s: Snapshot = s,
                    snaps: dict[str, list[Snapshot]] = snaps) -> str | None:
                src = fleet[plan.repo]
                if plan.action == "expire":
                    src.forget([s.id], now=clock)
                    return None
                assert plan.target is not None
                target = spec.repositories[plan.target]
                if target.tier == "archive":
                    _second_site(spec, fleet, snaps, plan.repo, target, s)
                if not any(_plan.lineage(x) == _plan.lineage(s) for x in snaps[plan.target]):
                    src.copy_to(fleet[plan.target], [s.id])  # verified there before it is forgotten here
                if s.locked(clock):
                    return f"{s.short_id}: copied to {plan.target}; kept here too: locked until {s.locked_until}"
                src.forget([s.id], now=clock)
                return None

            _run_step(run.steps, step, act, journal, say, clock)
    return run


def _second_site(spec: _spec.PolicySpec, fleet: Fleet, snaps: dict[str, list[Snapshot]], here: str,
                 archive: _spec.RepoSpec, s: Snapshot) -> None:
    """Make sure that, once ``s`` leaves ``here`` for ``archive``, two sites hold it: copy it to a
    repository on another site first if needed (ImmutableError-free UsageError if none exists)."""
    key = _plan.lineage(s)
    sites = {archive.site} | {spec.repositories[n].site for n, ss in snaps.items()
                              if n != here and any(_plan.lineage(x) == key for x in ss)}
    if len(sites) >= 2:
        return
    other = [r for r in spec.repositories.values() if r.site not in sites and r.name != here and r.tier != "archive"]
    if not other:
        raise UsageError(f"snapshot {s.short_id} would be held by one site only ({archive.site}) once archived",
                         hint="add a repository on a second site (3-2-1: one copy offsite) to the policy")
    fleet[here].copy_to(fleet[other[0].name], [s.id])


def policy_status(spec: _spec.PolicySpec, *, now: datetime | None = None,
                  fleet: Fleet | None = None) -> list[_plan.RpoLine]:
    """Per source and class (primary) and per replica: the newest snapshot's age against the RPO."""
    fleet = fleet or Fleet(spec)
    used = {s.repository for s in spec.sources.values()} | {r for s in spec.sources.values() for r in s.replicate_to}
    snaps = {name: fleet[name].snapshots() for name in sorted(used)}
    return _plan.rpo_lines(spec, snaps, now or datetime.now(UTC), _journal_mod.read_records(_journal(spec)))
