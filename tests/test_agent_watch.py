"""Watched run directories (``weightvault.agent.watch``) against real writer processes: a
checkpoint written slowly is never handed off half-written, a writer killed mid-file leaves no
snapshot, consecutive checkpoints become one snapshot each with their steps, and a restart hands
nothing off twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from test_delta import safetensors_bytes
from weightvault.agent.openfiles import open_for_writing
from weightvault.agent.watch import WatchedSource, Watcher, step_of, units
from weightvault.api import Repository, checkpoint_completeness
from weightvault.integrations.queue import UploadQueue
from weightvault.integrations.worker import run_worker


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repository:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("WEIGHTVAULT_PASSWORD", PASSWORD)
    return Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)


def _model(seed: int, n: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    return safetensors_bytes({"w": ("F32", rng.normal(size=(n, n)).astype(np.float32))})


def test_units_are_found_by_framework_layout(tmp_path: Path) -> None:
    root = tmp_path / "run"
    write(root / "checkpoint-500" / "trainer_state.json", b"{}")
    write(root / "dcp" / "step-1000" / ".metadata", b"")
    write(root / "lightning_logs" / "version_0" / "checkpoints" / "epoch=1-step=20.ckpt", b"")
    write(root / "lightning_logs" / "version_0" / "hparams.yaml", b"")
    write(root / "step_7" / "w.safetensors", b"")
    write(root / "model-300.pt", b"")
    write(root / "train.log", b"")
    write(root / ".tmp-checkpoint-600" / "x", b"")
    write(root / "tmp-checkpoint-700" / "trainer_state.json", b"{}")
    found = sorted(str(p.relative_to(root)) for p in units(root))
    assert found == ["checkpoint-500", "dcp/step-1000", "lightning_logs/version_0/checkpoints/epoch=1-step=20.ckpt",
                     "model-300.pt", "step_7"]
    assert [step_of(n) for n in ("checkpoint-500", "epoch=1-step=20.ckpt", "step_7", "model-300.pt", "last")] == \
        [500, 20, 7, 300, None]


def _slow_writer(target: Path, data: bytes) -> subprocess.Popen[bytes]:
    """A process that writes ``data`` to ``target`` in 8 pieces (fsynced), then closes it, then
    writes trainer_state.json, as a Trainer's save does; it prints "piece" after each piece and
    after closing, and waits for a line on stdin before going on, so the test decides when."""
    src = target.parent.parent / f"{target.name}.src"  # outside the checkpoint, no digits: no unit
    code = textwrap.dedent(f"""
        import os, sys
        data = open({str(src)!r}, 'rb').read()
        with open({str(target)!r}, 'wb') as f:
            step = len(data) // 8 + 1
            for i in range(0, len(data), step):
                f.write(data[i:i + step]); f.flush(); os.fsync(f.fileno())
                print('piece', flush=True); sys.stdin.readline()
        print('closed', flush=True); sys.stdin.readline()
        with open({str(target.parent / 'trainer_state.json')!r}, 'w') as f:
            f.write('{{"global_step": 1}}')
        print('done', flush=True)
    """)
    src.write_bytes(data)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.PIPE)


def _go(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def test_a_slowly_written_checkpoint_is_handed_off_once_complete(repo: Repository, tmp_path: Path) -> None:
    root = tmp_path / "run"
    ckpt = root / "checkpoint-1"
    ckpt.mkdir(parents=True)
    data = _model(1, 256)
    src = WatchedSource("exp", root, str(tmp_path / "repo"), quiet=0.3)
    w = Watcher([src], tmp_path / "watch.json", rescan=0.0)
    pieces = 0
    with _slow_writer(ckpt / "model.safetensors", data) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"done"):
                break
            assert w.poll() == [], f"handed off at {line!r}"
            if line.startswith(b"piece"):
                pieces += 1
                assert "open for writing" in w.pending()[str(ckpt)]
            elif line.startswith(b"closed"):
                time.sleep(0.5)  # past the quiet period, but trainer_state.json is not there yet
                assert w.poll() == [] and "no trainer_state.json yet" in w.pending()[str(ckpt)]
            _go(proc)
    assert proc.returncode == 0 and pieces == 8
    handed = w.poll()
    assert [(h.source, h.step) for h in handed] == [("exp", 1)]
    assert w.poll() == []  # once
    assert run_worker().done
    (snap,) = repo.snapshots(tags=["run=exp", "step=1"])
    repo.restore(snap.id, tmp_path / "back")
    assert tree_digest(tmp_path / "back" / "checkpoint-1") == tree_digest(ckpt)


def test_a_writer_killed_mid_file_leaves_no_snapshot(repo: Repository, tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "step_5").mkdir(parents=True)
    src = WatchedSource("exp", root, str(tmp_path / "repo"), quiet=0.2)
    w = Watcher([src], tmp_path / "watch.json", rescan=0.0)
    with _slow_writer(root / "step_5" / "w.safetensors", _model(2, 256)) as proc:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"piece")
        assert open_for_writing([str(root)]) == {str(root / "step_5" / "w.safetensors")}
        assert w.poll() == [] and "open for writing" in w.pending()[str(root / "step_5")]
        os.kill(proc.pid, signal.SIGKILL)
    time.sleep(0.5)  # longer than the quiet period: only the format can tell it is cut off
    assert w.poll() == []
    assert "not a whole safetensors file" in w.pending()[str(root / "step_5")]
    assert not checkpoint_completeness(root / "step_5").complete
    assert UploadQueue().jobs() == [] and repo.snapshots() == []


def test_three_checkpoints_become_three_snapshots_and_a_restart_repeats_none(repo: Repository,
                                                                            tmp_path: Path) -> None:
    root = tmp_path / "run"
    src = WatchedSource("exp", root, str(tmp_path / "repo"), tags=("team=ml",), quiet=0.0)
    w = Watcher([src], tmp_path / "watch.json", rescan=0.0)
    w.start()  # real inotify events; rescan=0 also rescans every poll
    try:
        for step in (10, 20, 30):
            d = root / f"checkpoint-{step}"
            write(d / "model.safetensors", _model(step))
            write(d / "trainer_state.json", json.dumps({"global_step": step}).encode())
            deadline = time.monotonic() + 10
            got: list[Any] = []
            while not got and time.monotonic() < deadline:
                got = w.poll()
                time.sleep(0.05)
            assert [h.step for h in got] == [step]
    finally:
        w.stop()
    run_worker()
    snaps = repo.snapshots(tags=["run=exp"])
    assert sorted(int(next(t for t in s.tags if t.startswith("step="))[5:]) for s in snaps) == [10, 20, 30]
    assert all("team=ml" in s.tags for s in snaps)
    again = Watcher([src], tmp_path / "watch.json", rescan=0.0)
    assert again.poll() == []  # the state file remembers what was handed off
    write(root / "checkpoint-30" / "trainer_state.json", b'{"global_step": 30, "rewritten": true}')
    assert [h.step for h in again.poll()] == [30]  # changed content is handed off again


def test_an_event_rescans_only_the_entry_it_touched(repo: Repository, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import weightvault.agent.watch as watch_mod

    root = tmp_path / "run"
    for step in range(5):
        write(root / f"checkpoint-{step}" / "model.safetensors", _model(step, 8))
        write(root / f"checkpoint-{step}" / "trainer_state.json", b"{}")
    w = Watcher([WatchedSource("exp", root, str(tmp_path / "repo"))], tmp_path / "watch.json", rescan=3600.0)
    assert len(w.poll()) == 5  # the first poll is a full scan
    looked: list[str] = []
    real = watch_mod._fingerprint
    def counting(unit: Path) -> tuple[str, float]:
        looked.append(unit.name)
        return real(unit)

    monkeypatch.setattr(watch_mod, "_fingerprint", counting)
    w.start()
    try:
        with open(root / "train.log", "a") as f:  # a log appended to beside the checkpoints
            f.write("step 1\n")
        write(root / "checkpoint-3" / "trainer_state.json", b'{"again": 1}')
        deadline = time.monotonic() + 10
        got: list[Any] = []
        while not got and time.monotonic() < deadline:
            got = w.poll()
            time.sleep(0.05)
    finally:
        w.stop()
    assert [Path(h.unit).name for h in got] == ["checkpoint-3"]
    assert set(looked) == {"checkpoint-3"}  # nothing else was looked at
