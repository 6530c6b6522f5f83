"""The load-and-faults campaign: many writers, forget + prune and check at once, on S3 with faults.

moto's S3 server behind ``s3faults`` (a reverse proxy that answers a share of the requests with
503, a reset, a lost answer after the write happened, or a 1.5 s delay). For ``seconds``:

* ``writers`` processes each change their own small run directory and back it up, again and
  again, recording every acknowledged snapshot with the digest of what it backed up;
* one process runs ``forget --keep-last 3`` (per writer: its own path) and ``prune`` in a loop;
* one process runs ``check`` in a loop, beside them;

all through the faulty proxy, with the client's retries. Then, straight to moto (no faults):
``check --read-data`` must be clean, every acknowledged snapshot still there must restore
byte-identical, each writer's newest acknowledged snapshot must be there, and an acknowledged
snapshot that is gone must have been removed by a forget. The check loop must never have
reported damage.

    from weightvault.testing.load import run_load
    report = run_load(work_dir, seconds=60)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LoadReport", "child_main", "run_load"]

PASSWORD = "load password"  # noqa: S105 - a throwaway repository
_CHILD = "import sys; from weightvault.testing.load import child_main; child_main(sys.argv[1:])"


def _storage(endpoint: str) -> object:
    from weightvault.backends.factory import StorageOptions
    from weightvault.backends.retry import RetryPolicy

    return StorageOptions(s3_endpoint=endpoint, retry=RetryPolicy(attempts=10, base_delay=0.05, max_delay=1.0))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _log(path: Path, doc: dict[str, object]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(doc) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _writer(url: str, endpoint: str, src: Path, out: Path, deadline: float, n: int) -> None:
    from weightvault import api
    from weightvault.errors import WeightvaultError

    repo = api.Repository.open(url, PASSWORD, storage=_storage(endpoint))  # type: ignore[arg-type]
    k = 0
    while time.time() < deadline:
        k += 1
        src.mkdir(parents=True, exist_ok=True)
        (src / "weights.bin").write_bytes(os.urandom(120_000))
        (src / "state.json").write_text(json.dumps({"writer": n, "step": k}))
        digest = _digest(src)
        try:
            snap = repo.backup([src], tags=[f"w={n}", f"k={k}"]).snapshot
        except WeightvaultError as exc:
            _log(out, {"failed": exc.message, "exit": exc.exit_code})
            continue
        _log(out, {"ack": snap.id, "writer": n, "k": k, "time": time.time(), "digest": digest})


def _maintainer(url: str, endpoint: str, out: Path, deadline: float) -> None:
    from weightvault import api
    from weightvault.errors import RepositoryLockedError, WeightvaultError

    repo = api.Repository.open(url, PASSWORD, storage=_storage(endpoint))  # type: ignore[arg-type]
    while time.time() < deadline:
        t = time.time()
        try:  # queued for the maintenance lock with the check loop, first come first served
            with api.lock_wait(max(0.0, deadline - time.time())):
                res = repo.forget(keep_last=3, prune=True)
            _log(out, {"removed": res.removed_ids, "start": t, "end": time.time()})
            time.sleep(1.0)
        except RepositoryLockedError as exc:  # still locked at the deadline
            _log(out, {"locked": exc.message})
            time.sleep(0.3)
        except WeightvaultError as exc:  # faults past the retries
            _log(out, {"failed": exc.message, "exit": exc.exit_code})


def _checker(url: str, endpoint: str, out: Path, deadline: float) -> None:
    from weightvault import api
    from weightvault.errors import RepositoryLockedError, WeightvaultError

    repo = api.Repository.open(url, PASSWORD, storage=_storage(endpoint))  # type: ignore[arg-type]
    while time.time() < deadline:
        t = time.time()
        try:
            with api.lock_wait(max(0.0, deadline - time.time())):
                res = repo.check()
            _log(out, {"errors": res.errors, "start": t, "end": time.time()})
            time.sleep(1.0)
        except RepositoryLockedError as exc:  # still locked at the deadline
            _log(out, {"locked": exc.message})
            time.sleep(0.5)
        except WeightvaultError as exc:
            _log(out, {"failed": exc.message, "exit": exc.exit_code})


def child_main(argv: list[str]) -> None:
    role, url, endpoint, out, deadline = argv[:5]
    if role == "writer":
        _writer(url, endpoint, Path(argv[5]), Path(out), float(deadline), int(argv[6]))
    elif role == "maintain":
        _maintainer(url, endpoint, Path(out), float(deadline))
    else:
        _checker(url, endpoint, Path(out), float(deadline))


@dataclass
class LoadReport:
    seconds: float = 0.0
    acked: int = 0
    backup_failures: int = 0
    forgets: int = 0
    forget_failures: int = 0
    forgets_locked: int = 0
    removed: int = 0
    checks: int = 0
    checks_locked: int = 0
    maintenance_runs: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, start, end), by end
    restored_identical: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _verify(url: str, endpoint: str, work: Path, writers: int, report: LoadReport) -> None:
    from weightvault import api

    acks = [a for n in range(writers) for a in _read(work / f"writer-{n}.jsonl") if "ack" in a]
    fails = [a for n in range(writers) for a in _read(work / f"writer-{n}.jsonl") if "failed" in a]
    maint, checks = _read(work / "maintain.jsonl"), _read(work / "check.jsonl")
    report.acked, report.backup_failures = len(acks), len(fails)
    report.forgets = sum(1 for m in maint if "removed" in m)
    report.forget_failures = sum(1 for m in maint if "failed" in m)
    report.forgets_locked = sum(1 for m in maint if "locked" in m)
    removed = {str(s) for m in maint for s in m.get("removed", [])}  # type: ignore[attr-defined]
    report.removed = len(removed)
    report.checks = sum(1 for c in checks if "errors" in c)
    report.checks_locked = sum(1 for c in checks if "locked" in c)
    report.maintenance_runs = sorted(
        [("forget+prune", float(m["start"]), float(m["end"])) for m in maint if "end" in m]  # type: ignore[arg-type]
        + [("check", float(c["start"]), float(c["end"])) for c in checks if "end" in c],  # type: ignore[arg-type]
        key=lambda r: r[2])
    report.problems += [f"check beside the load: {e}" for c in checks for e in c.get("errors", [])]  # type: ignore[attr-defined]
    repo = api.Repository.open(url, PASSWORD, storage=_storage(endpoint))  # type: ignore[arg-type]
    repo.unlock()
    res = repo.check(read_data=True)
    report.problems += [f"final check: {e}" for e in res.errors]
    present = {s.id for s in repo.snapshots()}
    for n in range(writers):
        mine = [a for a in acks if a["writer"] == n]
        if mine and mine[-1]["ack"] not in present:
            report.problems.append(f"writer {n}'s newest acknowledged snapshot {str(mine[-1]['ack'])[:8]} is gone")
    for a in acks:
        sid = str(a["ack"])
        if sid not in present:
            if sid not in removed and not report.forget_failures:
                report.problems.append(f"acknowledged snapshot {sid[:8]} is gone and no forget removed it")
            continue
        out = work / f"restore-{sid[:12]}"
        repo.restore(sid, out)
        got = _digest(next(out.iterdir()))
        subprocess.run(["rm", "-rf", str(out)], check=False)
        if got != a["digest"]:
            report.problems.append(f"snapshot {sid[:8]} restores other files than writer {a['writer']} backed up")
        else:
            report.restored_identical += 1


def run_load(work: Path, seconds: float = 60.0, writers: int = 8, rate: float = 0.05) -> LoadReport:
    """See the module docstring; the report's ``problems`` must be empty."""
    from weightvault import api
    from weightvault.api import KdfParams
    from weightvault.testing.s3server import s3_endpoint

    report = LoadReport()
    t0 = time.monotonic()
    with s3_endpoint() as ep:
        url = ep.url("load")
        api.Repository.init(url, PASSWORD, kdf=KdfParams(time_cost=1, memory_kib=8192, parallelism=1),
                            storage=ep.storage)
        counts = work / "faults.json"
        proxy = subprocess.Popen([sys.executable, "-m", "weightvault.testing.s3faults", "--upstream", ep.endpoint,
                                  "--rate", str(rate), "--counts", str(counts)], stdout=subprocess.PIPE, text=True)
        try:
            assert proxy.stdout is not None
            faulty = proxy.stdout.readline().split()[-1]
            deadline = time.time() + seconds
            procs = [subprocess.Popen([sys.executable, "-c", _CHILD, "writer", url, faulty,
                                       str(work / f"writer-{n}.jsonl"), str(deadline), str(work / f"src-{n}" / "run"),
                                       str(n)]) for n in range(writers)]
            procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, "maintain", url, faulty,
                                           str(work / "maintain.jsonl"), str(deadline)]))
            procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, "check", url, faulty,
                                           str(work / "check.jsonl"), str(deadline)]))
            for p in procs:
                rc = p.wait(timeout=seconds + 600)
                if rc != 0:
                    report.problems.append(f"a load process exited {rc} (a crash, not a weightvault error)")
            report.faults = json.loads(counts.read_text())
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)
            if proxy.stdout is not None:
                proxy.stdout.close()
        _verify(url, ep.endpoint, work, writers, report)
    report.seconds = time.monotonic() - t0
    return report
