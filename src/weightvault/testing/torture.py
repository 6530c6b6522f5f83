"""The crash-point campaign: every durable write of an operation, crashed at in turn.

For each mutating operation (``OPS``), a child process runs it on a copy of a prepared
repository and is crashed at its N-th durable write, for every N (``sample=k``: an even k per op
and mode; policy runs, with 100-170 points, always an even ``FULL_SAMPLE``). A point is a
mutating backend call (``CrashPoints``: ``save``, ``remove``, ``retain``) or, for the operations
whose durable writes are not backend calls or not through one backend (``FS_OPS``: restore,
restore --swap, policy apply, tier run), a durable file-system call under the work copy
(``PowerCutTracer``: fsync, fdatasync, syncfs, rename, replace, link, renameat2). Modes
(``MODES``): SIGKILL before the write or right after it returned; an EIO or ENOSPC instead of
it; a simulated power cut before or after it (the kill, then every write and directory change
not yet made durable dropped, ``weightvault.testing.powercut``). A first run with no crash
counts the points. After each try the parent checks, as a user would recover (``unlock`` of the
dead process's stale lock, then):

* ``check --read-data`` finds no error;
* every snapshot is one that was acknowledged before or the one the operation was making, and
  restores byte-identical to the source version its tag names (no partial snapshot);
* every snapshot that must survive the operation is there (``forget`` may remove only what its
  policy drops);
* the operation run again without a crash completes, and the checks above hold after it;
* an injected I/O error fails the operation with a weightvault error (exit code and message),
  never a traceback.

Per operation: a restore's target holds, under real names, only whole files of the snapshot
(the rerun leaves exactly the snapshot); a heal may leave the damage it was repairing, nothing
else, and its rerun leaves none; policy runs are checked by ``torture_policy.verify_policy``.

    from weightvault.testing.torture import run_campaign
    report = run_campaign(work_dir, ops=OPS, sample=None)   # sample=k: k points per op and mode
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from weightvault.backends.base import Backend, FileType
from weightvault.backends.local import LocalBackend
from weightvault.backends.wrapper import WrapperBackend
from weightvault.repository.repo import Repository as Engine
from weightvault.testing.faults import backend_error, enospc
from weightvault.testing.powercut import JOURNAL_DIR, PowerCutTracer, apply_power_cut
from weightvault.testing.torture_policy import POLICY_OPS, prepare_policy_world, run_policy_op, verify_policy
from weightvault.testing.torture_swap import prepare_swap_world, run_swap, swap_problems

__all__ = ["MODES", "OPS", "CampaignReport", "CrashPoints", "child_main", "run_campaign"]

PASSWORD = "torture password"  # noqa: S105 - throwaway repositories
NEW_PASSWORD = "torture password 2"  # noqa: S105
OPS = ("backup", "group-commit", "forget", "prune", "copy", "key-add", "key-passwd", "key-remove", "repair-index",
       "heal", "restore", "restore-swap", *POLICY_OPS)
FS_OPS = ("restore", "restore-swap", *POLICY_OPS)  # crash points: durable file-system calls under the work copy
MODES = ("kill-before", "kill-after", "eio", "enospc", "cut-before", "cut-after")
PACK_SIZE = 256 * 1024
FULL_SAMPLE = {op: 40 for op in POLICY_OPS}  # a policy run has 100-170 points: an even 40 of them per mode
_CHILD = "import sys; from weightvault.testing.torture import child_main; child_main(sys.argv[1:])"


class CrashPoints(WrapperBackend):
    """Counts mutating calls; at call number ``at`` (1-based; 0: never) does ``mode``. ``kill``
    ends the process (a power-cut run passes its tracer's ``crash``)."""

    def __init__(self, inner: Backend, at: int = 0, mode: str = "kill-before",
                 kill: Callable[[], None] | None = None) -> None:
        super().__init__(inner)
        self.at, self.mode, self.count = at, mode, 0
        self._kill = kill or (lambda: os.kill(os.getpid(), signal.SIGKILL))
        self._lock = threading.Lock()

    def _point(self, ftype: FileType, name: str, call: Callable[[], None]) -> None:
        with self._lock:
            self.count += 1
            n = self.count
        if n == self.at:
            if self.mode == "kill-before":
                self._kill()
            elif self.mode == "eio":
                raise backend_error(ftype, name)
            elif self.mode == "enospc":
                raise enospc(ftype, name)
        call()
        if n == self.at and self.mode == "kill-after":
            self._kill()

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        self._point(ftype, name, lambda: self.inner.save(ftype, name, data, create_only=create_only))

    def remove(self, ftype: FileType, name: str) -> None:
        self._point(ftype, name, lambda: self.inner.remove(ftype, name))

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        self._point(ftype, name, lambda: self.inner.retain(ftype, name, until))


# -- the world each crash point starts from ------------------------------------------------------
def _write_version(src: Path, version: int) -> None:
    """Version 1, or 2: half the weights rewritten, one added, the log appended, one file gone."""
    rng = random.Random(1000 + version)
    src.mkdir(parents=True, exist_ok=True)
    for i in range(3 if version == 1 else 4):
        if version == 1 or i % 2 == 0 or i == 3:
            (src / f"shard-{i}.bin").write_bytes(rng.randbytes(600_000))
    with open(src / "train.log", "ab") as f:
        f.write(b"".join(b"step %d loss %.5f\n" % (j, rng.random()) for j in range(20_000)))
    (src / "config.json").write_text(json.dumps({"version": version}))
    if version == 2:
        (src / "shard-1.bin").unlink()


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class World:
    root: Path  # holds repo/ and dest/ (copied for every crash point)
    src: Path  # the source at version 3, shared: operations only read it
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # tag -> digest of that source

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def dest(self) -> Path:
        return self.root / "dest"


# op -> (snapshots that must exist after the crash, after the rerun, that must be gone after it)
MUST: dict[str, tuple[set[str], set[str], set[str]]] = {
    "backup": ({"v=1", "v=2"}, {"v=1", "v=2", "v=3"}, set()),
    "group-commit": ({"v=1", "v=2"}, {"v=1", "v=2", "v=3"}, set()),
    "forget": ({"v=2"}, {"v=2"}, {"v=1"}),
    "prune": ({"v=2"}, {"v=2"}, set()),
    "copy": (set(), {"v=1", "v=2"}, set()),
}
_ALL = ({"v=1", "v=2"}, {"v=1", "v=2"}, set[str]())


def _prepare(work: Path, op: str, kdf: object) -> World:
    """A repository holding v1 and v2 (tags v=1, v=2; for prune, v1 already forgotten), the
    source at v3 for a backup, and an empty destination repository for copy."""
    from weightvault import api

    w = World(work / f"template-{op}", work / "src" / "run")
    for path, pw in ((w.repo, PASSWORD), (w.dest, NEW_PASSWORD)):  # small packs: a backup writes several
        Engine.init(LocalBackend(str(path)), pw.encode(), kdf=kdf, pack_size=PACK_SIZE)  # type: ignore[arg-type]
    repo = api.Repository.open(w.repo, PASSWORD)
    if w.src.exists():
        shutil.rmtree(w.src.parent)
    for v in (1, 2):
        _write_version(w.src, v)
        if op not in POLICY_OPS:
            repo.backup([w.src], tags=[f"v={v}"])
        w.versions[f"v={v}"] = _digest(w.src)
    (w.src / "shard-0.bin").write_bytes(random.Random(3).randbytes(600_000))
    (w.src / "config.json").write_text(json.dumps({"version": 3}))
    w.versions["v=3"] = _digest(w.src)
    if op == "prune":
        repo.forget(keep_last=1)
    if op in POLICY_OPS:
        prepare_policy_world(w.root, w.src, op)
    if op == "restore-swap":
        prepare_swap_world(repo, w.root)
    if op == "group-commit":  # v3 as two shards of one run; rank 0 committed, the op commits rank 1
        names = sorted(p.name for p in w.src.iterdir())
        for r in (0, 1):
            shard = _shard_dir(w, r)
            shard.mkdir(parents=True)
            for name in names[r::2]:
                shutil.copy2(w.src / name, shard / name)
        repo.backup([_shard_dir(w, 0)], tags=["v=3"], group="g", rank=0, world_size=2)
    if op == "heal":  # a replica filled by copy, then a data pack lost here: heal rewrites its blobs
        repo.copy_to(api.Repository.open(w.dest, NEW_PASSWORD))
        packs = sorted(p for p in (w.repo / "data").rglob("*") if p.is_file())
        packs[len(packs) // 2].unlink()
        (w.root / "damage.json").write_text(json.dumps(repo.check(read_data=True).errors))
    return w


def _shard_dir(w: World, rank: int) -> Path:
    return w.src.parent.parent / f"rank-{rank}" / w.src.name


# -- the child: one operation through CrashPoints -------------------------------------------------
def _open(wrapped: Backend, op: str) -> object:
    from weightvault import api
    from weightvault.errors import WrongPasswordError

    try:
        return api.open_repository_on(wrapped, PASSWORD)
    except WrongPasswordError:
        if op != "key-passwd":
            raise
        return api.open_repository_on(wrapped, NEW_PASSWORD)  # an earlier run changed it


def _run_op(op: str, repo_dir: Path, dest_dir: Path, src: Path, wrap: Callable[[Backend], Backend]) -> str:
    from weightvault import api

    if op in POLICY_OPS:
        return run_policy_op(op, repo_dir.parent, src)
    if op == "copy":
        source = api.Repository.open(repo_dir, PASSWORD)
        dest = api.open_repository_on(wrap(LocalBackend(str(dest_dir))), NEW_PASSWORD)
        return f"copied {len(source.copy_to(dest).copied)}"
    repo = _open(wrap(LocalBackend(str(repo_dir))), op)
    assert isinstance(repo, api.Repository)
    if op == "backup":
        return repo.backup([src], tags=["v=3"]).snapshot.id
    if op == "group-commit":
        res = repo.backup([src.parent.parent / "rank-1" / src.name], tags=["v=3"], group="g", rank=1, world_size=2)
        return f"group {res.group.status() if res.group is not None else None}"
    if op == "forget":
        return f"removed {len(repo.forget(keep_last=1).removed)}"
    if op == "prune":
        return f"condemned {repo.prune(max_unused=0.0).condemned_packs}"
    if op == "key-add":
        return repo.add_key(NEW_PASSWORD)
    if op == "key-passwd":
        return repo.change_password(NEW_PASSWORD)
    if op == "key-remove":
        other = repo.add_key(NEW_PASSWORD)  # counted too: the points of adding it come first
        return repo.remove_key(other)
    if op == "repair-index":
        return f"indexed {repo.repair_index().blobs}"
    if op == "heal":
        return f"rewrote {len(repo.heal_from(api.Repository.open(dest_dir, NEW_PASSWORD)).repaired)}"
    if op == "restore-swap":
        return run_swap(repo, repo_dir.parent)
    if op == "restore":  # v2 into target/ (run again after a crash: what is there and whole is kept)
        snap = next(s for s in repo.snapshots() if "v=2" in s.tags)
        return f"restored {repo.restore(snap.id, repo_dir.parent / 'target', overwrite='if-changed').files}"
    raise ValueError(f"unknown op {op}")


def child_main(argv: list[str]) -> None:
    """``op repo dest src at mode``: run ``op``, print ``POINTS n`` and ``ACK result``."""
    from weightvault.errors import WeightvaultError

    op, repo_dir, dest_dir, src, at, mode = argv
    seen: list[CrashPoints] = []
    kill, tracer = None, None
    if op in FS_OPS:  # the tracer counts the points and crashes (and journals for a power cut)
        tracer = PowerCutTracer(Path(repo_dir).parent, int(at), mode.replace("cut-", "kill-"))
        at, mode = "0", "none"
    elif mode.startswith("cut-"):  # a power cut: the tracer journals what the kill would leave unsynced
        tracer = PowerCutTracer(Path(repo_dir).parent)
        kill, mode = tracer.crash, mode.replace("cut-", "kill-")
    if tracer is not None:
        tracer.install()
        from weightvault.ops import restore_durable
        from weightvault.runner import swap

        if restore_durable._SYNCFS is not None:
            restore_durable._SYNCFS = tracer.traced_syncfs(restore_durable._SYNCFS)
        swap._rename2 = tracer.traced_rename2(swap._rename2)  # type: ignore[assignment]

    def wrap(b: Backend) -> Backend:
        seen.append(CrashPoints(b, int(at), mode, kill))
        return seen[-1]

    def points() -> int:
        return tracer.points if op in FS_OPS and tracer is not None else sum(c.count for c in seen)

    try:
        result = _run_op(op, Path(repo_dir), Path(dest_dir), Path(src), wrap)
    except WeightvaultError as exc:
        print(f"POINTS {points()}", flush=True)
        print(f"ERROR {exc.exit_code} {exc.message}", flush=True)
        sys.exit(exc.exit_code)
    print(f"POINTS {points()}", flush=True)
    print(f"ACK {result}", flush=True)


def _child(w: World, op: str, at: int, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CHILD, op, str(w.repo), str(w.dest), str(w.src), str(at), mode],
                          capture_output=True, text=True, timeout=300)


# -- the checks ------------------------------------------------------------------------------------
def _restores(repo: object, versions: dict[str, dict[str, str]], scratch: Path, damaged: bool = False) -> Iterator[str]:
    """Problems: a snapshot without a known version tag, or one that does not restore identical
    (``damaged``: the repository may still miss data, so a restore may fail, never give other bytes)."""
    from weightvault import api
    from weightvault.errors import WeightvaultError

    assert isinstance(repo, api.Repository)
    for snap in repo.snapshots():
        tag = next((t for t in snap.tags if t in versions), None)
        if tag is None:
            yield f"snapshot {snap.short_id} has no version tag ({snap.tags}): not one that was being made"
            continue
        out = scratch / f"restore-{snap.short_id}"
        try:
            repo.restore(snap.id, out)
            got = _digest(out / "run")
        except WeightvaultError:
            if not damaged:
                raise
            continue
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if got != versions[tag]:
            yield f"snapshot {snap.short_id} ({tag}) restores different files than its source had"


def _verify(w: World, op: str, scratch: Path, after_rerun: bool) -> list[str]:
    from weightvault import api
    from weightvault.errors import WeightvaultError, WrongPasswordError

    if op in POLICY_OPS:
        return verify_policy(w.root, w.versions["v=3"], op, after_rerun)
    path, pw = (w.dest, NEW_PASSWORD) if op == "copy" else (w.repo, PASSWORD)
    try:
        try:
            repo = api.Repository.open(path, pw)
        except WrongPasswordError:
            if op != "key-passwd":  # only a password change may leave the old one unusable
                raise
            repo = api.Repository.open(path, NEW_PASSWORD)
    except WeightvaultError as exc:
        return [f"{path.name} does not open: {exc.message}"]
    repo.unlock()  # the killed process's lock, as `weightvault unlock` removes it
    res = repo.check(read_data=True)
    damaged = op == "heal" and not after_rerun  # the lost pack may still be missing: nothing else
    known = set(json.loads((w.root / "damage.json").read_text())) if damaged else set()
    problems = [f"check: {e}" for e in res.errors
                if not (damaged and (e in known or "missing" in e or "not found" in e))]
    problems += list(_restores(repo, w.versions, scratch, damaged))
    tags = {t for s in repo.snapshots() for t in s.tags}
    must_after_crash, must_after_rerun, gone_after_rerun = MUST.get(op, _ALL)
    must = must_after_rerun if after_rerun else must_after_crash
    problems += [f"snapshot {t} is missing" for t in sorted(must - tags)]
    if after_rerun:
        problems += [f"snapshot {t} should have been removed" for t in sorted(gone_after_rerun & tags)]
    if op == "restore":
        problems += _target_problems(w, after_rerun)
    if op == "restore-swap":
        problems += swap_problems(w.root, w.versions, after_rerun)
    return problems


def _target_problems(w: World, after_rerun: bool) -> list[str]:
    """A restore's target: every file under its own name whole (identical to v2's); temporary
    files only under the restore's temporary prefix; after the rerun, exactly v2."""
    from weightvault.ops.restore_temps import TMP_PREFIX

    target = w.root / "target" / "run"
    want, problems = w.versions["v=2"], []
    if not target.exists():
        return ["the rerun left no target"] if after_rerun else []
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        rel = str(path.relative_to(target))
        if path.name.encode().startswith(TMP_PREFIX):
            if after_rerun:
                problems.append(f"a temporary file is left after the rerun: {rel}")
        elif rel not in want:
            problems.append(f"{rel} is in the target but not in the snapshot")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != want[rel]:
            problems.append(f"{rel} is under its own name but not whole (differs from the snapshot)")
    if after_rerun and _digest(target) != want:
        problems.append("after the rerun the target differs from the snapshot")
    return problems


@dataclass
class PointResult:
    op: str
    point: int
    mode: str
    outcome: str  # killed, failed (exit N), completed
    problems: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # a power cut's journal records, undone, cut


@dataclass
class CampaignReport:
    points: dict[str, int] = field(default_factory=dict)  # op -> mutating calls of one clean run
    results: list[PointResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lost(self) -> list[PointResult]:
        return [r for r in self.results if r.problems]

    def summary(self) -> dict[str, dict[str, int]]:
        """Per op: crash points of a clean run, points tried (over all modes), tries with problems."""
        out: dict[str, dict[str, int]] = {}
        for r in self.results:
            row = out.setdefault(r.op, {"points": self.points.get(r.op, 0), "tried": 0, "with_problems": 0})
            row["tried"] += 1
            row["with_problems"] += bool(r.problems)
        return out


def _points(n: int, sample: int | None) -> list[int]:
    if sample is None or sample >= n:
        return list(range(1, n + 1))
    return sorted({1 + round(i * (n - 1) / max(1, sample - 1)) for i in range(sample)})


def _try(template: World, scratch: Path, op: str, at: int, mode: str) -> PointResult:
    root = scratch / f"{op}-{at}-{mode}"
    shutil.copytree(template.root, root, symlinks=True)
    w = World(root, template.src, template.versions)
    try:
        r = _child(w, op, at, mode)
        dropped = apply_power_cut(root) if mode.startswith("cut-") else {}
        shutil.rmtree(root / JOURNAL_DIR, ignore_errors=True)  # a counting tracer's journal
        if r.returncode == -signal.SIGKILL:
            outcome = "killed"
        elif r.returncode == 0:
            outcome = "completed"
        else:
            outcome = f"failed (exit {r.returncode})"
        problems = []
        if mode in ("eio", "enospc") and r.returncode != 0 and "ERROR " not in r.stdout:
            problems.append(f"an injected {mode} was not a clear error: {r.stderr.strip()[-300:]}")
        problems += _verify(w, op, root, after_rerun=False)
        again = _child(w, op, 0, "none")  # run again, no crash: completes
        shutil.rmtree(root / JOURNAL_DIR, ignore_errors=True)
        if again.returncode != 0:
            problems.append(f"the operation run again failed: {again.stdout.strip()[-300:]}"
                            f" {again.stderr.strip()[-300:]}")
        problems += [f"after the rerun: {p}" for p in _verify(w, op, root, after_rerun=True)]
        return PointResult(op, at, mode, outcome, problems, dropped)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def run_campaign(work: Path, ops: tuple[str, ...] = OPS, modes: tuple[str, ...] = MODES, sample: int | None = None,
                 kdf: object = None, progress: Callable[[PointResult], None] | None = None) -> CampaignReport:
    """Every crash point (or ``sample`` of them per op and mode) of every op in every mode."""
    from weightvault.api import KdfParams

    t0 = time.monotonic()
    report = CampaignReport()
    for op in ops:
        template = _prepare(work, op, kdf or KdfParams(time_cost=1, memory_kib=8192, parallelism=1))
        probe = work / f"count-{op}"
        shutil.copytree(template.root, probe, symlinks=True)
        counted = _child(World(probe, template.src, template.versions), op, 0, "none")
        subprocess.run(["rm", "-rf", str(probe)], check=False)
        lines = dict(ln.split(" ", 1) for ln in counted.stdout.splitlines() if " " in ln)
        if counted.returncode != 0 or "POINTS" not in lines:
            raise RuntimeError(f"{op} does not run cleanly: {counted.stdout} {counted.stderr[-2000:]}")
        report.points[op] = int(lines["POINTS"])
        for mode in modes:
            for at in _points(report.points[op], sample or FULL_SAMPLE.get(op)):
                res = _try(template, work, op, at, mode)
                report.results.append(res)
                if progress is not None:
                    progress(res)
        subprocess.run(["rm", "-rf", str(template.root)], check=False)
    report.seconds = time.monotonic() - t0
    return report
