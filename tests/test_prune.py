"""prune: what it deletes and keeps, delta bases, repacking, racing backups, crashes, old formats."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD, write
from test_delta import Model
from weightvault.api import Repository
from weightvault.backends.base import Backend, FileType
from weightvault.backends.local import LocalBackend
from weightvault.errors import IntegrityError, RepositoryLockedError
from weightvault.ops import backup as backup_op
from weightvault.repository.locks import hold_lock, list_locks
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.plans import load_plans
from weightvault.repository.repo import Repository as Engine

KiB = 1024
MiB = 1024 * KiB


def make_repo(path: Path, **config: int) -> Repository:
    Engine.init(LocalBackend(path), PASSWORD.encode(), kdf=FAST_KDF, **config)
    return Repository.open(path, PASSWORD)


def engine(path: Path) -> Engine:
    return Engine.open(LocalBackend(path), PASSWORD.encode())


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def restored(repo: Repository, snap_id: str, out: Path) -> dict[str, str]:
    """Restore a snapshot and return the digest of the restored source directory."""
    shutil.rmtree(out, ignore_errors=True)
    repo.restore(snap_id, out)
    (src,) = repo.find_snapshot(snap_id).paths
    return digest(out / os.path.basename(src))


def repo_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path / "data").rglob("*") if p.is_file())


def pack_names(path: Path) -> set[str]:
    return {p.name for p in (path / "data").rglob("*") if p.is_file()}


def assert_healthy(path: Path) -> None:
    res = Repository.open(path, PASSWORD).check(read_data=True)
    assert res.errors == [], res.errors


# -- what prune deletes and keeps ------------------------------------------------------------------
def test_prune_deletes_forgotten_data_and_keeps_the_rest(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    src = tmp_path / "src"
    rng = random.Random(1)
    write(src / "shared.bin", rng.randbytes(MiB))
    ids, digests = [], []
    for _i in range(4):
        write(src / "weights.bin", rng.randbytes(2 * MiB))  # replaced each time
        ids.append(repo.backup([src]).snapshot.id)
        digests.append(digest(src))
    before = repo_bytes(tmp_path / "repo")
    repo.forget(ids[:2])
    res = repo.prune()
    after = repo_bytes(tmp_path / "repo")
    assert res.deleted_packs >= 2 and res.pending_packs == 0
    assert before - after >= 4 * MiB  # the two forgotten weights files
    assert after >= 5 * MiB  # shared + two kept weights files
    for snap_id, d in zip(ids[2:], digests[2:], strict=True):
        assert restored(repo, snap_id, tmp_path / "out") == d
    assert_healthy(tmp_path / "repo")
    assert list((tmp_path / "repo" / "plans").iterdir()) == []
    again = repo.prune()  # nothing left to do
    assert again.deleted_packs == again.repacked_packs == 0


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    src = tmp_path / "src"
    ids = []
    for i in range(2):
        write(src / "w.bin", random.Random(i).randbytes(MiB))
        ids.append(repo.backup([src]).snapshot.id)
    repo.forget([ids[0]])
    files = sorted(str(p) for p in (tmp_path / "repo").rglob("*"))
    res = repo.prune(dry_run=True)
    assert res.dry_run and res.condemned_packs >= 1 and res.deleted_packs == 0
    assert sorted(str(p) for p in (tmp_path / "repo").rglob("*")) == files


def test_partly_used_packs_are_repacked_above_the_threshold(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    src = tmp_path / "src"
    rng = random.Random(2)
    write(src / "keep.bin", rng.randbytes(MiB))
    write(src / "drop.bin", rng.randbytes(3 * MiB))
    first = repo.backup([src]).snapshot.id  # keep and drop share one data pack
    (src / "drop.bin").unlink()
    second = repo.backup([src]).snapshot.id
    expect = digest(src)
    repo.forget([first])

    lazy = repo.prune(max_unused=1.0)  # never repack: the shared pack stays, 3 MiB of it unused
    assert lazy.repacked_packs == 0 and lazy.unused_bytes_kept >= 3 * MiB
    assert repo_bytes(tmp_path / "repo") > 4 * MiB

    res = repo.prune()  # default 10 %: repacked
    assert res.repacked_packs >= 1 and res.repacked_blobs >= 1 and res.deleted_bytes >= 4 * MiB
    assert repo_bytes(tmp_path / "repo") < 1.2 * MiB
    assert restored(repo, second, tmp_path / "out") == expect
    assert_healthy(tmp_path / "repo")


def test_prune_keeps_delta_bases_that_live_blobs_need(tmp_path: Path) -> None:
    """Keep the 2 newest checkpoints: the newest stays a delta against the one before (a live
    base); the older kept one, whose bases were only in forgotten checkpoints, is re-encoded
    standalone so those go; both restore exactly."""
    repo = make_repo(tmp_path / "repo")
    src = tmp_path / "run"
    model = Model(layers=2)
    ids, digests = [], []
    for _ in range(5):
        model.step()
        model.save(src / "model.safetensors")
        ids.append(repo.backup([src]).snapshot.id)
        digests.append(digest(src))
    eng = engine(tmp_path / "repo")

    def file_blobs(snap_id: str) -> list[bytes]:
        return [b for n in iter_manifest(eng.load_snapshot(snap_id).tree, eng.load_blob) for b in n.blobs]

    newest, older = file_blobs(ids[-1]), file_blobs(ids[-2])
    live_bases = {eng.index.base_of(b) for b in newest} - {None}
    assert live_bases and live_bases <= set(older), "the newest checkpoint should be deltas against the one before"
    assert any(eng.index.base_of(b) is not None for b in older)
    before = repo_bytes(tmp_path / "repo")

    repo.forget(ids[:-2])
    res = repo.prune(max_unused=0.0)  # repack everything partly used: bases must move, not vanish
    assert res.deleted_packs >= 1 and res.rebased_blobs >= 1
    eng = engine(tmp_path / "repo")
    assert live_bases <= {e.blob.blob_id for e in eng.index.entries()}
    assert all(eng.index.base_of(b) in live_bases for b in newest if eng.index.base_of(b) is not None)
    assert all(eng.index.base_of(b) is None for b in older)  # re-encoded standalone
    assert all(eng.delta_depth(b) is not None for b in newest + older)
    assert repo_bytes(tmp_path / "repo") < before
    for snap_id, d in zip(ids[-2:], digests[-2:], strict=True):
        assert restored(repo, snap_id, tmp_path / "out") == d
    assert_healthy(tmp_path / "repo")
    stats = repo.stats()
    assert stats.delta_blobs > 0 and stats.base_bytes == 0  # every base is itself a kept blob


def test_forgetting_all_but_the_newest_checkpoint_frees_its_chain(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    src = tmp_path / "run"
    model = Model(layers=2)
    ids = []
    for _ in range(4):
        model.step()
        model.save(src / "model.safetensors")
        ids.append(repo.backup([src]).snapshot.id)
    size = (src / "model.safetensors").stat().st_size
    repo.forget(ids[:-1])
    res = repo.prune()
    assert res.rebased_blobs >= 1
    assert repo_bytes(tmp_path / "repo") < 1.05 * size  # one checkpoint's worth, not the chain
    assert restored(repo, ids[-1], tmp_path / "out") == digest(src)
    assert_healthy(tmp_path / "repo")


def test_prune_refuses_when_a_snapshot_cannot_be_read(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    src = tmp_path / "src"
    write(src / "a.bin", random.Random(3).randbytes(MiB))
    snap = repo.backup([src]).snapshot.id
    path = tmp_path / "repo" / "snapshots" / snap
    data = bytearray(path.read_bytes())
    data[40] ^= 1
    path.write_bytes(bytes(data))
    packs = pack_names(tmp_path / "repo")
    with pytest.raises(IntegrityError) as ei:
        repo.prune()
    assert snap in str(ei.value) and ei.value.exit_code == 4
    assert pack_names(tmp_path / "repo") == packs


# -- racing backups (two-phase deletion) -----------------------------------------------------------
def _garbage_repo(tmp_path: Path) -> tuple[Repository, Path, bytes]:
    """A repository whose only snapshot was forgotten: the data of ``src/x.bin`` is garbage."""
    repo = make_repo(tmp_path / "repo")
    src = tmp_path / "src"
    data = random.Random(4).randbytes(2 * MiB)
    write(src / "x.bin", data)
    snap = repo.backup([src]).snapshot.id
    repo.forget([snap])
    return repo, src, data


def test_backup_that_started_before_prune_keeps_what_it_reused(tmp_path: Path) -> None:
    """Backup B locks and loads the index, prune condemns x.bin's pack, B reuses x.bin's blobs and
    commits: the condemned pack is rescued by the next prune, and B's snapshot restores."""
    repo, src, _ = _garbage_repo(tmp_path)
    eng = engine(tmp_path / "repo")
    with eng.lock():  # backup B is running
        eng.load_index()
        first = repo.prune()
        assert first.condemned_packs >= 1 and first.deleted_packs == 0 and first.pending_packs >= 1
        assert first.waiting_on and "shared lock" in first.waiting_on[0]
        res = backup_op.backup(eng, [str(src)], backup_op.BackupOptions())
        assert res.snapshot.summary["stored_bytes_added"] < 100 * KiB  # x.bin reused, not uploaded again
    assert len(load_plans(eng.backend, eng.key)) == 1
    second = repo.prune()
    assert second.rescued_packs >= 1 and second.pending_packs == 0
    assert list((tmp_path / "repo" / "plans").iterdir()) == []
    assert restored(repo, res.snapshot.id, tmp_path / "out") == digest(src)
    assert_healthy(tmp_path / "repo")


def test_backup_that_starts_after_the_plan_never_reuses_condemned_blobs(tmp_path: Path) -> None:
    repo, src, _ = _garbage_repo(tmp_path)
    backend = LocalBackend(tmp_path / "repo")
    with hold_lock(backend, exclusive=False):  # some other client runs while prune condemns
        first = repo.prune()
        assert first.pending_packs >= 1
    condemned = {p for plan in load_plans(backend, engine(tmp_path / "repo").key) for p in plan.packs}
    res = Repository.open(tmp_path / "repo", PASSWORD).backup([src])  # takes its lock after the plan
    assert res.snapshot.summary["stored_bytes_added"] >= 2 * MiB  # x.bin stored again, not reused
    eng = engine(tmp_path / "repo")
    eng.apply_plans()  # prefer copies outside condemned packs, as a locked client does
    snap = eng.load_snapshot(res.snapshot.id)
    for node in iter_manifest(snap.tree, eng.load_blob):
        for b in node.blobs:
            assert eng.lookup(b).pack_id not in condemned
    second = repo.prune()
    assert second.rescued_packs == 0 and second.deleted_packs >= 1
    assert not (condemned & pack_names(tmp_path / "repo"))
    assert restored(repo, res.snapshot.id, tmp_path / "out") == digest(src)
    assert_healthy(tmp_path / "repo")


def test_restore_started_after_the_plan_reads_the_new_copies(tmp_path: Path) -> None:
    """A reader that locks after a repack prefers the repacked copies, so sweeping the old packs
    while it runs cannot pull data from under it."""
    repo = make_repo(tmp_path / "repo")
    src = tmp_path / "src"
    rng = random.Random(5)
    write(src / "keep.bin", rng.randbytes(MiB))
    write(src / "drop.bin", rng.randbytes(2 * MiB))
    first = repo.backup([src]).snapshot.id
    (src / "drop.bin").unlink()
    second = repo.backup([src]).snapshot.id
    repo.forget([first])
    backend = LocalBackend(tmp_path / "repo")
    with hold_lock(backend, exclusive=False):
        assert repo.prune().repacked_packs >= 1
    reader = engine(tmp_path / "repo")
    with reader.lock():
        condemned = reader.index.condemned
        assert condemned
        snap = reader.load_snapshot(second)
        live = [*snap.tree, *(b for node in iter_manifest(snap.tree, reader.load_blob) for b in node.blobs)]
        assert all(reader.lookup(b).pack_id not in condemned for b in live)  # the repacked copies
        repo.prune()  # sweeps beside the reader: it did not exist when the plan was made
        assert not (condemned & pack_names(tmp_path / "repo"))
        for b in live:
            reader.load_blob(b)  # still readable through the reader's index


WRITER = r"""
import hashlib, json, os, random, sys
from pathlib import Path
from typing import Any
from weightvault import api
repo_path, src, writer, rounds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
repo = api.Repository.open(repo_path, os.environ["WV_TEST_PASSWORD"])
src.mkdir(parents=True, exist_ok=True)
for i in range(rounds):
    # a.bin alternates between two versions, so data forgotten a round ago comes back
    (src / "a.bin").write_bytes(random.Random(f"{writer}-a-{i % 2}").randbytes(600_000))
    (src / "b.bin").write_bytes(random.Random(f"{writer}-b-{i}").randbytes(300_000))
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(src.iterdir())}
    while True:
        try:
            res = repo.backup([src], tags=[f"round={i}"], host=writer)
            break
        except api.WeightvaultError as exc:
            if exc.exit_code != 12:  # a repair-index lock would be 12; nothing else is expected
                raise
    print(json.dumps({"id": res.snapshot.id, "digest": digest}), flush=True)
"""


def test_prune_racing_concurrent_backup_processes(tmp_path: Path) -> None:
    """Two writer processes back up round after round while this process forgets and prunes in a
    loop; afterwards every snapshot left restores exactly and check --read-data is clean."""
    repo_path = tmp_path / "repo"
    make_repo(repo_path, pack_size=256 * KiB)
    env = dict(os.environ, WV_TEST_PASSWORD=PASSWORD)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(repo_path), str(tmp_path / f"src-{w}"), f"w{w}", "8"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        for w in range(2)
    ]
    stop = threading.Event()
    outputs: dict[int, tuple[bytes, bytes]] = {}

    def collect(i: int, p: subprocess.Popen[bytes]) -> None:
        outputs[i] = p.communicate(timeout=600)

    readers = [threading.Thread(target=collect, args=(i, p)) for i, p in enumerate(procs)]
    for t in readers:
        t.start()
    repo = Repository.open(repo_path, PASSWORD)
    prunes = deleted = 0
    while any(p.poll() is None for p in procs) and not stop.is_set():
        res = repo.forget(keep_last=1, group_by=("host",), prune=True, max_unused=0.0)
        prunes += 1
        deleted += res.prune.deleted_packs if res.prune else 0
    for t in readers:
        t.join()
    for i, p in enumerate(procs):
        assert p.returncode == 0, outputs[i][1].decode()
    final = repo.forget(keep_last=1, group_by=("host",), prune=True).prune
    assert final is not None and final.pending_packs == 0
    assert prunes >= 2 and deleted >= 1, (prunes, deleted)
    expected = {}
    for out, _ in outputs.values():
        for line in out.decode().splitlines():
            rec = json.loads(line)
            expected[rec["id"]] = rec["digest"]
    left = [s.id for s in repo.snapshots()]
    assert len(left) == 2  # keep-last 1 per writer
    for snap_id in left:
        assert restored(repo, snap_id, tmp_path / "out") == expected[snap_id]
    assert_healthy(repo_path)


# -- crashes ---------------------------------------------------------------------------------------
class Crash(BaseException):
    """The process dies here."""


class CrashingBackend:
    """Delegates to a backend until the ``at``-th save or remove, which (and everything after it)
    raises Crash, as if the process had been killed at that moment."""

    def __init__(self, inner: Backend, at: int) -> None:
        self.inner, self.at, self.count, self.dead = inner, at, 0, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _mutate(self) -> None:
        if self.dead:
            raise Crash
        self.count += 1
        if self.count == self.at:
            self.dead = True
            raise Crash

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        self._mutate()
        self.inner.save(ftype, name, data, create_only=create_only)

    def remove(self, ftype: FileType, name: str) -> None:
        self._mutate()
        self.inner.remove(ftype, name)


def _prune_through(backend: Backend) -> None:
    eng = Engine.open(backend, PASSWORD.encode())
    from weightvault.ops.prune import PruneOptions, prune

    with eng.lock(maintenance=True) as name:
        prune(eng, name, PruneOptions(max_unused=0.0))


def test_a_crash_at_any_step_of_prune_leaves_a_consistent_repository(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    repo = make_repo(pristine, pack_size=128 * KiB)
    src = tmp_path / "src"
    model = Model()
    rng = random.Random(6)
    ids, digests = [], []
    for i in range(4):
        model.step()
        model.save(src / "model.safetensors")
        write(src / f"log-{i}.bin", rng.randbytes(200 * KiB))
        ids.append(repo.backup([src]).snapshot.id)
        digests.append(digest(src))
    repo.forget(ids[:2])
    keep = dict(zip(ids[2:], digests[2:], strict=True))

    counter = CrashingBackend(LocalBackend(shutil.copytree(pristine, tmp_path / "count")), at=0)
    _prune_through(counter)
    steps = counter.count
    assert steps >= 8
    reference = repo_bytes(tmp_path / "count")

    for at in range(1, steps + 1):
        path = shutil.copytree(pristine, tmp_path / f"crash-{at}")
        with pytest.raises(Crash):
            _prune_through(CrashingBackend(LocalBackend(path), at))
        for lock in (path / "locks").iterdir():  # the dead process's lock, as `unlock` would remove it
            lock.unlink()
        repo_at = Repository.open(path, PASSWORD)
        for snap_id, d in keep.items():
            assert restored(repo_at, snap_id, tmp_path / "out") == d, f"crash at step {at}"
        res = repo_at.check()
        assert res.errors == [], (at, res.errors)
        repo_at.prune(max_unused=0.0)  # the next prune finishes the job
        assert list((path / "plans").iterdir()) == [], at
        assert repo_bytes(path) <= reference * 1.02, at
        for snap_id, d in keep.items():
            assert restored(repo_at, snap_id, tmp_path / "out") == d, f"crash at step {at}, after prune"
        assert_healthy(path)
        shutil.rmtree(path)


# -- locks and older formats -----------------------------------------------------------------------
def test_maintenance_locks_exclude_each_other_but_not_backups(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    make_repo(tmp_path / "repo")
    with hold_lock(backend, exclusive=False, maintenance=True):
        with hold_lock(backend, exclusive=False):
            pass  # a backup runs beside forget/prune
        with pytest.raises(RepositoryLockedError) as ei, hold_lock(backend, exclusive=False, maintenance=True):
            pass
        assert "maintenance lock" in str(ei.value)
        with pytest.raises(RepositoryLockedError), hold_lock(backend, exclusive=True):
            pass
    assert list_locks(backend) == []


def test_forget_runs_beside_a_backup(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    src = tmp_path / "src"
    write(src / "a.bin", b"x" * 1000)
    snap = repo.backup([src]).snapshot.id
    with hold_lock(LocalBackend(tmp_path / "repo"), exclusive=False):
        res = repo.forget([snap], prune=True)
    assert [s.id for s in res.removed] == [snap] and res.prune is not None


def _as_version_3(path: Path) -> None:
    doc = json.loads((path / "config").read_bytes())
    doc["version"] = 3
    (path / "config").write_text(json.dumps(doc))


def test_version_3_repositories_prune_under_an_exclusive_lock(tmp_path: Path) -> None:
    """A v3 repository gets no plans (an older weightvault would not honour them): prune waits for
    no one because it runs alone."""
    path = tmp_path / "repo"
    make_repo(path)
    _as_version_3(path)
    repo = Repository.open(path, PASSWORD)
    src = tmp_path / "src"
    ids = []
    for i in range(2):
        write(src / "w.bin", random.Random(i).randbytes(MiB))
        ids.append(repo.backup([src]).snapshot.id)
    expect = digest(src)
    repo.forget([ids[0]])
    with hold_lock(LocalBackend(path), exclusive=False), pytest.raises(RepositoryLockedError):
        repo.prune()
    res = repo.prune()
    assert res.deleted_packs >= 1 and res.pending_packs == 0
    assert not (path / "plans").exists() or list((path / "plans").iterdir()) == []
    assert json.loads((path / "config").read_bytes())["version"] == 3
    assert restored(repo, ids[1], tmp_path / "out") == expect
    assert_healthy(path)


def test_unindexed_packs_of_dead_backups_are_pruned_when_nobody_else_runs(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo")
    src = tmp_path / "src"
    write(src / "a.bin", random.Random(7).randbytes(MiB))
    eng = engine(tmp_path / "repo")
    backup_op.backup(eng, [str(src)], backup_op.BackupOptions())
    # a backup that died after writing its packs and before its index: remove the index files
    for f in (tmp_path / "repo" / "index").iterdir():
        f.unlink()
    for f in (tmp_path / "repo" / "snapshots").iterdir():
        f.unlink()
    assert repo_bytes(tmp_path / "repo") >= MiB
    res = Repository.open(tmp_path / "repo", PASSWORD).prune()
    assert res.adopted_blobs >= 1 and res.deleted_packs >= 1
    assert repo_bytes(tmp_path / "repo") == 0


def test_an_unreadable_plan_is_reported_skipped_and_removed_by_prune(tmp_path: Path) -> None:
    repo, src, _ = _garbage_repo(tmp_path)
    with hold_lock(LocalBackend(tmp_path / "repo"), exclusive=False):
        assert repo.prune().pending_packs >= 1
    (plan,) = (tmp_path / "repo" / "plans").iterdir()
    data = bytearray(plan.read_bytes())
    data[-1] ^= 1
    plan.write_bytes(bytes(data))
    fresh = Repository.open(tmp_path / "repo", PASSWORD)
    snap = fresh.backup([src]).snapshot.id  # not blocked by the damaged plan
    errors = fresh.check().errors
    assert any("prune plan" in e and plan.name in e for e in errors), errors
    res = fresh.prune()
    assert not plan.exists() and res.pending_packs == 0
    assert fresh.check().errors == []
    assert restored(fresh, snap, tmp_path / "out") == digest(src)


def test_cli_prune_and_forget_prune(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    repo = make_repo(repo_path)
    src = tmp_path / "src"
    for i in range(3):
        write(src / "w.bin", random.Random(i).randbytes(MiB))
        repo.backup([src])
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))

    def wv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), *args], env=env,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    forget = wv("forget", "--keep-last", "2", "--prune")
    assert forget.returncode == 0, forget.stderr
    assert "removed 1 snapshot(s)" in forget.stdout, forget.stdout
    assert "deleted 2 pack(s)" in forget.stdout, forget.stdout  # its data pack and its tree pack
    dry = wv("forget", "--keep-last", "1", "--prune", "--dry-run", "--json")
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] and doc["prune"]["dry_run"] and doc["prune"]["condemned_packs"] == 2
    assert len(repo.snapshots()) == 2
    out = wv("prune", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["deleted_packs"] == 0
    bad = wv("prune", "--max-unused", "lots")
    assert bad.returncode == 2 and "--max-unused" in bad.stderr
    with hold_lock(LocalBackend(repo_path), exclusive=False, maintenance=True):
        busy = wv("prune")
    assert busy.returncode == 12 and "maintenance lock" in busy.stderr
