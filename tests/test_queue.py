"""The durable upload queue and its worker process: checkpoints handed off by a training process
are backed up exactly once, as they were when handed off, whatever crashes in between; driven
through ``weightvault queue`` and real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from test_cli import cli_env, ok, wv
from weightvault.api import Repository
from weightvault.integrations.queue import UploadQueue
from weightvault.integrations.worker import enqueue, run_worker, wait_for


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    e = {**cli_env(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state")}
    for k in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "WEIGHTVAULT_PASSWORD"):
        monkeypatch.setenv(k, e[k])
    return e


def _checkpoint(d: Path, step: int, size: int = 200_000) -> Path:
    write(d / "model.safetensors", os.urandom(size))
    write(d / "trainer_state.json", json.dumps({"global_step": step}).encode())
    return d


def test_a_rotated_checkpoint_is_still_backed_up_as_it_was(env: dict[str, str], tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "out" / "checkpoint-10", 10)
    before = tree_digest(ckpt)
    job = enqueue(tmp_path / "repo", ckpt, ["run=exp", "step=10"], spawn=False)
    assert job.state == "queued" and Path(job.staged).name == "checkpoint-10"
    assert os.stat(Path(job.staged) / "model.safetensors").st_ino == os.stat(ckpt / "model.safetensors").st_ino
    new = ckpt / ".tmp"
    new.write_bytes(b"replaced by the next atomic save")
    os.replace(new, ckpt / "model.safetensors")  # a new inode, as torch.save-then-rename or HF leave it
    (ckpt / "trainer_state.json").unlink()  # save_total_limit rotates it away
    out = json.loads(ok(wv(env, "queue", "run", "--json")).stdout)
    assert list(out["done"]) == [str(job.id)] and not out["errors"]
    (snap,) = Repository.open(tmp_path / "repo", PASSWORD).snapshots()
    assert snap.paths == [str(ckpt)] and {"run=exp", "step=10", f"wv-job={job.key}"} <= set(snap.tags)
    ok(wv(env, "-r", tmp_path / "repo", "restore", "latest", "--target", tmp_path / "back"))
    assert tree_digest(tmp_path / "back" / "checkpoint-10") == before
    listed = json.loads(ok(wv(env, "queue", "list", "--json")).stdout)
    assert [(j["state"], j["snapshot"]) for j in listed] == [("done", snap.id)]
    assert not Path(job.staged).exists()  # unpinned once backed up
    again = enqueue(tmp_path / "repo", _checkpoint(tmp_path / "out" / "checkpoint-20", 20), [], spawn=False)
    with open(tmp_path / "out" / "checkpoint-20" / "model.safetensors", "r+b") as f:
        f.write(b"rewritten in place")  # the same inode: a link cannot keep the old bytes, but it is reported
    ok(wv(env, "queue", "run"))
    assert "rewritten in place after the hand-off" in (UploadQueue().get(again.id).error or "")


def test_a_job_committed_before_a_crash_is_not_backed_up_twice(env: dict[str, str], tmp_path: Path) -> None:
    q = UploadQueue()
    job = enqueue(tmp_path / "repo", _checkpoint(tmp_path / "checkpoint-20", 20), ["step=20"], spawn=False)
    claimed = q.claim()  # a worker took it, committed the snapshot, and died before marking it done
    assert claimed is not None and claimed.id == job.id
    repo = Repository.open(tmp_path / "repo", PASSWORD)
    first = repo.backup([job.staged], tags=claimed.all_tags, record_as=[job.record_as]).snapshot
    res = run_worker()  # the next worker: the lock is free, the job is "running" with no live worker
    assert res.done == {job.id: first.id}
    assert [s.id for s in repo.snapshots(tags=[f"wv-job={job.key}"])] == [first.id]


def test_kill_9_of_the_trainer_and_of_the_worker_lose_nothing_and_duplicate_nothing(
        env: dict[str, str], tmp_path: Path) -> None:
    ckpts = [_checkpoint(tmp_path / "run" / f"checkpoint-{s}", s, 24 << 20) for s in (1, 2, 3)]
    digests = {c.name: tree_digest(c) for c in ckpts}
    trainer = textwrap.dedent(f"""
        import os, signal
        from weightvault.integrations.worker import enqueue
        for c in {[str(c) for c in ckpts]!r}:
            enqueue({str(tmp_path / "repo")!r}, c, ["run=r"], spawn=False)
        os.kill(os.getpid(), signal.SIGKILL)  # the training process dies right after its last save
    """)
    proc = subprocess.run([sys.executable, "-c", trainer], env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert [j.state for j in UploadQueue().jobs()] == ["queued"] * 3
    for c in ckpts:  # the run's directory goes away: only the pinned copies remain
        for f in c.iterdir():
            f.unlink()
    locks = tmp_path / "repo" / "locks"
    worker = subprocess.Popen([sys.executable, "-m", "weightvault", "--limit-upload", "8M", "queue", "run"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not [p for p in locks.iterdir() if not p.name.startswith(".")]:  # mid-upload of the first job
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    worker.kill()
    worker.wait()
    assert [j.state for j in UploadQueue().jobs()] == ["running", "queued", "queued"]  # killed mid-upload
    ok(wv(env, "-r", tmp_path / "repo", "unlock", "--remove-all"))  # the dead worker's lock
    ok(wv(env, "queue", "run"))
    repo = Repository.open(tmp_path / "repo", PASSWORD)
    jobs = UploadQueue().jobs()
    assert [j.state for j in jobs] == ["done"] * 3
    for j in jobs:
        assert len(repo.snapshots(tags=[f"wv-job={j.key}"])) == 1  # exactly once each
    for c in ckpts:
        snap = next(s for s in repo.snapshots() if s.paths == [str(c)])
        target = tmp_path / "back" / c.name
        repo.restore(snap.id, target, verify=True)
        assert tree_digest(target / c.name) == digests[c.name]
    assert repo.check(read_data=True).ok


def test_failures_are_retried_or_kept_for_the_user(env: dict[str, str], tmp_path: Path) -> None:
    bad_pw = write(tmp_path / "wrong.pw", b"not the password\n")
    job = enqueue(tmp_path / "repo", _checkpoint(tmp_path / "checkpoint-5", 5), [], password_file=str(bad_pw),
                  spawn=False)
    failed = wv(env, "queue", "run")
    assert failed.returncode == 1 and "failed this time" in failed.stderr
    (j,) = json.loads(ok(wv(env, "queue", "list", "--json")).stdout)
    assert j["state"] == "failed" and "password" in j["error"]  # permanent: not retried on its own
    q = UploadQueue()
    q._set(job.id, password_file=None)  # the user fixes the password source ...
    ok(wv(env, "queue", "retry", str(job.id)))  # ... and queues it again
    ok(wv(env, "queue", "run"))
    assert q.get(job.id).state == "done"
    other = enqueue(tmp_path / "repo", _checkpoint(tmp_path / "checkpoint-6", 6), [], spawn=False)
    ok(wv(env, "queue", "drop", str(other.id)))
    assert not Path(other.staged).exists() and [j.id for j in q.jobs()] == [job.id]


def test_torch_save_hands_off_and_a_spawned_worker_backs_it_up(env: dict[str, str], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from weightvault.integrations import torch as wv_torch

    state = {"w": torch.randn(64, 32), "step": 3}
    path = tmp_path / "ckpt" / "step-3.pt"
    path.parent.mkdir()
    job = wv_torch.save(state, path, repo=tmp_path / "repo", tags=["step=3"])
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    (done,) = wait_for([job], timeout=120)
    assert done.state == "done", done
    repo = Repository.open(tmp_path / "repo", PASSWORD)
    repo.restore(done.snapshot or "", tmp_path / "back", verify=True)
    back = torch.load(tmp_path / "back" / "step-3.pt", weights_only=True)
    assert torch.equal(back["w"], state["w"]) and back["step"] == 3


def test_no_second_worker_while_one_runs_and_the_running_one_takes_the_new_job(
        env: dict[str, str], tmp_path: Path) -> None:
    import fcntl

    from weightvault.integrations.worker import lock_path, spawn_worker, worker_running

    assert not worker_running()
    lock_path().parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a worker is busy with an earlier job
    try:
        assert worker_running() and spawn_worker() is False
        job = enqueue(tmp_path / "repo", _checkpoint(tmp_path / "checkpoint-7", 7), [])  # spawn=True: none started
        time.sleep(0.5)
        assert UploadQueue().get(job.id).state == "queued"
        assert run_worker().busy  # and a second worker run by hand steps aside
    finally:
        os.close(fd)  # the busy worker lets go ...
    res = run_worker()  # ... and, looking once more, runs what was queued meanwhile
    assert res.done and UploadQueue().get(job.id).state == "done"


def test_a_runs_next_checkpoint_is_stored_as_deltas_against_the_previous_one(
        env: dict[str, str], tmp_path: Path) -> None:
    import numpy as np

    from test_delta import safetensors_bytes

    rng = np.random.default_rng(1)
    w = {f"layer.{i}.weight": ("F32", rng.normal(size=(256, 256)).astype(np.float32)) for i in range(4)}
    added = []
    for step in (100, 200):
        d = tmp_path / "out" / f"checkpoint-{step}"
        write(d / "model.safetensors", safetensors_bytes(w))
        job = enqueue(tmp_path / "repo", d, ["run=exp", f"step={step}"], spawn=False)
        run_worker()
        snap = Repository.open(tmp_path / "repo", PASSWORD).find_snapshot(UploadQueue().get(job.id).snapshot or "")
        added.append(snap.summary["stored_bytes_added"])
        w = {k: (dt, a + rng.normal(scale=1e-4, size=a.shape).astype(np.float32)) for k, (dt, a) in w.items()}
    assert snap.parent is not None  # checkpoint-200's parent is checkpoint-100's snapshot
    assert added[1] < 0.8 * added[0], added  # a training step's small changes cost less than a new model


def test_a_job_whose_worker_dies_every_time_is_given_up_not_retried_forever(env: dict[str, str],
                                                                           tmp_path: Path) -> None:
    """Each claim of a job left ``running`` is a worker that died on it (five here, as if each
    were killed for memory); the sixth worker gives it up with an error the user can act on, and
    ``queue retry`` runs it again."""
    job = enqueue(tmp_path / "repo", _checkpoint(tmp_path / "checkpoint-9", 9), [], spawn=False)
    q = UploadQueue()
    for _ in range(5):
        assert q.claim() is not None  # claimed, then its worker died: the job stays "running"
    assert q.get(job.id).state == "running"
    res = run_worker()
    now = q.get(job.id)
    assert now.state == "failed" and "gave up after 5 attempts" in (now.error or "") and res.done == {}
    assert Repository.open(tmp_path / "repo", PASSWORD).snapshots() == []
    ok(wv(env, "queue", "retry", str(job.id)))
    ok(wv(env, "queue", "run"))
    assert q.get(job.id).state == "done"
