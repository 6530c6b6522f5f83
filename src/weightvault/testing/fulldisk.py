"""A real full disk at each step of a backup and of a restore.

A tmpfs of a fixed size is mounted (root only; tmpfs answers a write that does not fit with a
real ENOSPC, at the call that needs the space: a file's data, a new file, a directory). One clean
run measures how many bytes the operation adds; then for each of ``steps`` amounts of free space,
evenly from none to just short of that, a ballast file leaves exactly that much free and the
operation runs as a user would run it (the CLI, in a child process). Each run must complete or
stop with "no space" (exit 15), never a traceback or another error. Then the ballast goes and:

* **backup** (the repository on the small disk, ``--min-free 0`` so that the backup really runs
  into the wall rather than refusing up front): ``unlock``, ``check --read-data`` clean, the
  snapshot made before restores identical, the backup run again completes and its snapshot
  restores identical;
* **restore** (the target on the small disk): every file under its real name in the target is
  whole (identical to the snapshot's), and a restore run again (``--overwrite if-changed``)
  leaves exactly the snapshot, with no temporary file.

    report = run_full_disk(work_dir, steps=12)   # report.skipped says why, where it cannot mount
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.testing.torture import _digest

__all__ = ["DiskTry", "FullDiskReport", "run_full_disk"]

PASSWORD = "full disk password"  # noqa: S105 - throwaway repositories
DISK_BYTES = 48 * 1024 * 1024


@dataclass
class DiskTry:
    op: str
    free: int  # bytes left free when the operation started
    exit_code: int
    problems: list[str]


@dataclass
class FullDiskReport:
    tries: list[DiskTry] = field(default_factory=list)
    needed: dict[str, int] = field(default_factory=dict)  # op -> bytes its clean run added
    skipped: str | None = None

    @property
    def failures(self) -> list[DiskTry]:
        return [t for t in self.tries if t.problems]


@contextlib.contextmanager
def _tmpfs(path: Path) -> Iterator[str | None]:
    """Mount a tmpfs of DISK_BYTES at ``path``; yields None, or why it could not."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield "mounting a small file system needs root"
        return
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        yield f"mount -t tmpfs failed: {p.stderr.strip()}"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _wv(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WEIGHTVAULT_PASSWORD": PASSWORD}
    p = subprocess.run([sys.executable, "-m", "weightvault", *args], capture_output=True, text=True, env=env,
                       timeout=300, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"weightvault {' '.join(args)} failed: {p.stdout[-500:]} {p.stderr[-1500:]}")
    return p


def _version(src: Path, v: int) -> None:
    rng = random.Random(v)
    src.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        (src / f"shard-{i}.bin").write_bytes(rng.randbytes(700_000))
    (src / "logs").mkdir(exist_ok=True)
    for i in range(40):
        (src / "logs" / f"{i}.log").write_bytes(b"step %d loss %f\n" % (v, rng.random()) * 200)


def _used(disk: Path) -> int:
    st = os.statvfs(disk)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _fill(disk: Path, free: int) -> None:
    """A ballast file leaving ``free`` bytes (rounded to pages) free on ``disk``."""
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - free
    if size > 0:
        with open(disk / "ballast", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)


def _outcome(p: subprocess.CompletedProcess[str]) -> list[str]:
    if p.returncode in (0, 15):
        return [] if p.returncode == 0 or "space" in (p.stdout + p.stderr).lower() else ["exit 15 without saying why"]
    return [f"exit {p.returncode}, not 0 or 15 (no space): {(p.stdout + p.stderr).strip()[-400:]}"]


def _snap(repo: str, tag: str) -> str:
    """The id of the newest snapshot tagged ``tag`` (empty if none)."""
    p = _wv("-r", repo, "snapshots", "--tag", tag, "--json")
    snaps = json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else []
    return str(snaps[-1]["id"]) if snaps else ""


def _restores_identical(repo: str, snap_tag: str, want: dict[str, str], scratch: Path) -> list[str]:
    out = scratch / f"verify-{snap_tag}"
    shutil.rmtree(out, ignore_errors=True)
    sid = _snap(repo, snap_tag)
    if not sid:
        return [f"no snapshot tagged {snap_tag}"]
    p = _wv("-r", repo, "restore", sid, "--target", str(out))
    try:
        if p.returncode != 0:
            return [f"snapshot {snap_tag} does not restore: {p.stderr.strip()[-300:]}"]
        got = _digest(next(out.iterdir()))
        return [] if got == want else [f"snapshot {snap_tag} restores other files than were backed up"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _backup_tries(work: Path, disk: Path, steps: int, report: FullDiskReport) -> None:
    from weightvault.api import KdfParams, Repository

    src, template = work / "src" / "run", work / "template"
    _version(src, 1)
    Repository.init(template, PASSWORD, kdf=KdfParams(time_cost=1, memory_kib=8192, parallelism=1))
    _wv("-r", str(template), "backup", str(src), "--tag", "v=1", check=True)
    v1 = _digest(src)
    _version(src, 2)
    v2 = _digest(src)
    repo = disk / "repo"
    shutil.copytree(template, repo)
    before = _used(disk)
    _wv("-r", str(repo), "backup", str(src), "--tag", "v=2", "--min-free", "0", check=True)
    report.needed["backup"] = need = _used(disk) - before
    for k in range(steps):
        shutil.rmtree(repo)
        shutil.copytree(template, repo)
        free = need * k // steps
        _fill(disk, free)
        p = _wv("-r", str(repo), "backup", str(src), "--tag", "v=2", "--min-free", "0")
        problems = _outcome(p)
        (disk / "ballast").unlink(missing_ok=True)
        _wv("-r", str(repo), "unlock")
        chk = _wv("-r", str(repo), "check", "--read-data")
        if chk.returncode != 0:
            problems.append(f"check after the full disk: {chk.stdout.strip()[-300:]}")
        problems += _restores_identical(str(repo), "v=1", v1, work)
        again = _wv("-r", str(repo), "backup", str(src), "--tag", "v=2", "--min-free", "0")
        if again.returncode != 0:
            problems.append(f"the backup run again failed: {again.stderr.strip()[-300:]}")
        problems += _restores_identical(str(repo), "v=2", v2, work)
        report.tries.append(DiskTry("backup", free, p.returncode, problems))
    shutil.rmtree(repo)


def _restore_tries(work: Path, disk: Path, steps: int, report: FullDiskReport) -> None:
    repo, src = str(work / "template"), work / "src" / "run"
    _wv("-r", repo, "backup", str(src), "--tag", "v=2", check=True)
    want, sid = _digest(src), _snap(repo, "v=2")
    target = disk / "target"
    before = _used(disk)
    _wv("-r", repo, "restore", sid, "--target", str(target), check=True)
    report.needed["restore"] = need = _used(disk) - before
    for k in range(steps):
        shutil.rmtree(target, ignore_errors=True)
        free = need * k // steps
        _fill(disk, free)
        p = _wv("-r", repo, "restore", sid, "--target", str(target))
        problems = _outcome(p)
        run = target / "run"
        for path in sorted(run.rglob("*")) if run.exists() else []:
            rel = str(path.relative_to(run))
            if path.is_file() and not path.name.startswith(".wvtmp-") and \
                    hashlib.sha256(path.read_bytes()).hexdigest() != want.get(rel):
                problems.append(f"{rel} is under its own name but not whole")
        (disk / "ballast").unlink(missing_ok=True)
        again = _wv("-r", repo, "restore", sid, "--target", str(target), "--overwrite", "if-changed")
        if again.returncode != 0:
            problems.append(f"the restore run again failed: {again.stderr.strip()[-300:]}")
        elif _digest(run) != want:
            problems.append("after the rerun the target is not exactly the snapshot")
        report.tries.append(DiskTry("restore", free, p.returncode, problems))


def run_full_disk(work: Path, steps: int = 12) -> FullDiskReport:
    """A backup and a restore, each at ``steps`` amounts of free space (see the module docstring)."""
    report = FullDiskReport()
    disk = work / "disk"
    with _tmpfs(disk) as why:
        if why is not None:
            report.skipped = why
            return report
        _backup_tries(work, disk, steps, report)
        _restore_tries(work, disk, steps, report)
    return report
