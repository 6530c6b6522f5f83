"""Snapshots of files that exist only in memory (``Repository.backup_data``): stored as the same
files from disk would be (splitters, deltas against the parent, groups), restored identical, and
bad paths refused; nothing is written locally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from test_delta import safetensors_bytes
from weightvault.api import Repository
from weightvault.errors import UsageError


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)


def _model(seed: int, noise: float = 0.0) -> bytes:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(256, 256)).astype(np.float32)
    if noise:
        w += np.random.default_rng(seed + 1).normal(scale=noise, size=w.shape).astype(np.float32)
    return safetensors_bytes({"layer.weight": ("F32", w), "layer.bias": ("F32", np.ones(256, dtype=np.float32))})


def test_in_memory_files_store_and_restore_like_files_on_disk(repo: Repository, tmp_path: Path) -> None:
    files = {"model.safetensors": _model(0), "sub/config.json": b'{"lr": 0.1}', "sub/deeper/notes.txt": b"x" * 10}
    res = repo.backup_data(tmp_path / "ckpt" / "step-1", files, tags=["step=1"])
    assert res.snapshot.paths == [str(tmp_path / "ckpt" / "step-1")] and not (tmp_path / "ckpt").exists()
    repo.restore(res.snapshot.id, tmp_path / "out", verify=True)
    for p, data in files.items():
        write(tmp_path / "disk" / "step-1" / p, data)
    assert tree_digest(tmp_path / "out" / "step-1") == tree_digest(tmp_path / "disk" / "step-1")
    layouts = repo.layouts(res.snapshot.id)
    assert layouts[b"step-1/model.safetensors"].chunking == "tensor-aware"
    assert res.snapshot.summary["files"] == 3 and res.snapshot.summary["dirs"] == 3


def test_the_next_step_is_stored_as_deltas_against_its_parent(repo: Repository, tmp_path: Path) -> None:
    first = repo.backup_data(tmp_path / "run", {"model.safetensors": _model(0)})
    second = repo.backup_data(tmp_path / "run", {"model.safetensors": _model(0, noise=1e-4)})
    assert second.snapshot.parent == first.snapshot.id
    assert second.snapshot.summary["stored_bytes_added"] < 0.8 * first.snapshot.summary["stored_bytes_added"]


def test_ranks_of_a_group_commit_one_snapshot(repo: Repository, tmp_path: Path) -> None:
    for rank in (0, 1):
        res = repo.backup_data(tmp_path / "dcp" / "step-5", {f"__{rank}_0.distcp": bytes([rank]) * 1000},
                               group="run:5", rank=rank, world_size=2)
        assert res.group is not None and res.group.complete == (rank == 1)
    (snap,) = repo.snapshots()
    repo.restore(snap.id, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "step-5").iterdir()) == ["__0_0.distcp", "__1_0.distcp"]


@pytest.mark.parametrize("bad", ["/abs", "a/../b", "a//b", "", "./a", "a/b\0"])
def test_bad_paths_are_refused(repo: Repository, tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError):
        repo.backup_data(tmp_path / "x", {bad: b"1"})
    with pytest.raises(UsageError):
        repo.backup_data(tmp_path / "x", {"a": b"1", "a/b": b"2"})
    assert repo.snapshots() == []
