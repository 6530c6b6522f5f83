"""kill -9 during backup: the repository stays consistent, nothing partial is listed, work is reused.

A real backup runs in a subprocess and is SIGKILLed at seeded random moments. (SIGKILL keeps the
page cache, so this tests crash consistency of the write protocol, not power-loss durability.)
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD
from weightvault import api
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.packer import read_pack_header
from weightvault.repository.repo import Repository as Engine

MiB = 1024 * 1024
ITERATIONS = 8
SEED = 20240611

BACKUP_SCRIPT = """
import os, sys
from weightvault import api
repo = api.Repository.open(sys.argv[1], os.environ["WV_TEST_PASSWORD"])
print("START", flush=True)
# force: every run reads the whole source, so a run after one that committed is not a quick
# no-op re-backup that ends before its kill (the kill delays are calibrated on a full read)
res = repo.backup([sys.argv[2]], tags=["crash-test"], force=True)
print("DONE", res.snapshot.id, flush=True)
"""


def _digest(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mode)} of every regular file under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode & 0o7777)
    return out


def _make_source(src: Path, rng: random.Random, version: int) -> None:
    """~50 MB: incompressible 'weights' (rewritten per version) and compressible logs (appended)."""
    src.mkdir(exist_ok=True)
    n_weights = 4 if version == 1 else 6
    for i in range(n_weights):
        if version == 1 or i % 2 == 0 or i >= 4:  # v2 rewrites half the shards and adds two
            (src / f"shard-{i}.bin").write_bytes(rng.randbytes(8 * MiB))
    for i in range(3):
        lines = b"".join(b"step %d loss %.6f lr 0.0003\n" % (j, rng.random()) for j in range(120_000))
        with open(src / f"train-{i}.log", "ab") as f:
            f.write(lines)
    (src / "config.yaml").write_text(f"version: {version}\n")


def _run_backup(repo_path: Path, src: Path, kill_after: float | None) -> tuple[int, str, float]:
    """Run a backup subprocess; SIGKILL it ``kill_after`` seconds after it opened the repository.
    Returns (return code, stdout, seconds from open to exit or kill)."""
    env = dict(os.environ, WV_TEST_PASSWORD=PASSWORD)
    with subprocess.Popen(
        [sys.executable, "-c", BACKUP_SCRIPT, str(repo_path), str(src)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first == b"START\n", proc.stderr.read().decode()
        started = time.monotonic()
        if kill_after is not None:
            time.sleep(kill_after)
            proc.kill()
        rest = proc.stdout.read()
        err = proc.stderr.read()
        rc = proc.wait(timeout=120)
        elapsed = time.monotonic() - started
    if rc not in (0, -9):
        pytest.fail(f"backup subprocess failed with {rc}: {err.decode()}")
    return rc, rest.decode(), elapsed


def _snapshot_blobs(engine: Engine, snap_id: str) -> set[bytes]:
    snap = engine.load_snapshot(snap_id)
    blobs = set(snap.tree)
    for node in iter_manifest(snap.tree, engine.load_blob):
        blobs.update(node.blobs)
    return blobs


def test_kill9_during_backup(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    repo_path, src = tmp_path / "repo", tmp_path / "src"
    Engine.init(LocalBackend(repo_path), PASSWORD.encode(), kdf=FAST_KDF, pack_size=4 * MiB)

    # 1. one complete snapshot of version 1, timed to calibrate the kill delays
    _make_source(src, rng, 1)
    v1 = _digest(src)
    rc, out, full_duration = _run_backup(repo_path, src, kill_after=None)
    assert rc == 0 and out.startswith("DONE ")
    snap1 = out.split()[1]
    packs_after_snap1 = {p for p, _ in LocalBackend(repo_path).list(FileType.PACK)}

    # 2. version 2 of the source; back it up repeatedly, killing each run at a random moment
    _make_source(src, rng, 2)
    v2 = _digest(src)
    killed_pids: set[int] = set()
    n_snapshots = 1
    killed = 0
    for i in range(ITERATIONS):
        delay = rng.uniform(0.05, 0.6) * full_duration
        rc, _, _ = _run_backup(repo_path, src, kill_after=delay)
        repo = api.Repository.open(repo_path, PASSWORD)
        res = repo.check()
        assert res.errors == [], f"iteration {i} (kill after {delay:.2f}s): {res.errors}"
        assert all("not indexed" in w for w in res.warnings), res.warnings
        snaps = repo.snapshots()
        # A snapshot is listed only if that run committed it (it may be killed after the commit).
        committed = len(snaps) - n_snapshots
        assert committed in (0, 1), f"iteration {i}: {committed} new snapshots"
        assert committed or rc != 0, f"iteration {i}: the backup finished but its snapshot is missing"
        n_snapshots = len(snaps)
        killed += not committed
        out_dir = tmp_path / f"restore-{i}"
        repo.restore(snap1, out_dir)
        assert _digest(out_dir / "src") == v1
        if committed:  # it must be complete, never partial
            repo.restore(snaps[-1].id, out_dir / "new")
            assert _digest(out_dir / "new" / "src") == v2
        shutil.rmtree(out_dir)
        killed_pids.update(lk.pid for lk in repo.locks())
    assert killed >= ITERATIONS // 2, "most runs should have been killed mid-way; the delays are miscalibrated"

    # 3. the killed runs left stale shared locks; they do not block another backup
    repo = api.Repository.open(repo_path, PASSWORD)
    stale = repo.locks()
    assert stale, "a killed backup should have left its lock behind"
    assert all(not lk.exclusive and lk.stale() for lk in stale)

    # 4. a complete backup reuses everything the killed runs uploaded
    backend = LocalBackend(repo_path)
    before = Engine.open(backend, PASSWORD.encode())
    leftover = {p for p, _ in backend.list(FileType.PACK)} - packs_after_snap1
    uploaded_by_killed: dict[bytes, int] = {}
    for pack in leftover:
        for b in read_pack_header(backend, before.key, pack):
            uploaded_by_killed[b.blob_id] = b.length
    assert uploaded_by_killed, "no killed run got as far as writing a pack"
    result = repo.backup([src], tags=["final"])
    assert result.errors == []
    final = result.snapshot

    after = Engine.open(backend, PASSWORD.encode())
    assert after.unindexed_packs() == [], "the final backup must adopt the packs of killed runs"
    new_blobs = _snapshot_blobs(after, final.id) - _snapshot_blobs(after, snap1)
    from_scratch = sum(after.lookup(b).blob.length for b in new_blobs)
    reused = sum(uploaded_by_killed.get(b, 0) for b in new_blobs)
    assert reused > 0
    assert final.summary["stored_bytes_added"] == from_scratch - reused
    assert final.summary["stored_bytes_added"] < from_scratch

    # 5. everything verifies; both snapshots restore exactly
    res = repo.check(read_data=True)
    assert res.ok and res.warnings == [], (res.errors, res.warnings)
    repo.restore(final.id, tmp_path / "final")
    assert _digest(tmp_path / "final" / "src") == v2
    repo.restore(snap1, tmp_path / "first")
    assert _digest(tmp_path / "first" / "src") == v1

    # 6. unlock removes exactly the stale locks of the killed processes
    removed = repo.unlock()
    assert {lk.name for lk in removed} == {lk.name for lk in stale}
    assert {lk.pid for lk in removed} <= killed_pids
    assert repo.locks() == []

