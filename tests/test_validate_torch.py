"""Validation of torch.save files (zip and legacy), Lightning checkpoints and DCP shards, end to end
through the API: healthy copies pass level 3; a renamed or transposed tensor, a missing storage,
fail naming the file, the tensor and the reason. Fixtures were written by real torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD
from test_torch_structure import fixture, pkl_name, rebuild, storage_member
from weightvault.api import Repository

FILES = ["f32_state.pt", "bf16_state.pt", "mixed_dtypes.pt", "checkpoint_adamw.pt", "legacy_format.pt",
         "lightning.ckpt", "views.pt", "dcp_shard.distcp"]


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Repository, str, Path]:
    run = tmp_path / "run"
    run.mkdir()
    for name in FILES:
        (run / name).write_bytes(fixture(name))
    shutil.copy(run / "f32_state.pt", run / "training_args.bin")  # a torch zip under another name
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    return repo, repo.backup([run]).snapshot.id, run


def test_healthy_torch_files_pass_level_3(backed_up: tuple[Repository, str, Path]) -> None:
    repo, _snap, _run = backed_up
    res = repo.drill(level=3, record=False)
    assert res.ok, res.error
    assert res.report is not None
    formats = {f.path.split("/")[-1]: (f.format, f.passed) for f in res.report.files}
    assert formats["legacy_format.pt"] == ("torch-legacy", 3)
    assert formats["dcp_shard.distcp"] == ("dcp", 3)
    assert formats["training_args.bin"] == ("torch-zip", 3)
    assert all(fmt and passed == 3 for fmt, passed in formats.values()), formats


def _fails(repo: Repository, snap: str, run: Path, name: str) -> list[str]:
    (bad,) = repo.validate(snap, run, level=3).failed
    assert bad.path.endswith(name)
    return bad.problems


def test_a_renamed_or_transposed_tensor_fails_level_3(backed_up: tuple[Repository, str, Path]) -> None:
    repo, snap, run = backed_up
    data = fixture("f32_state.pt")
    (run / "f32_state.pt").write_bytes(
        rebuild(data, change={pkl_name(data): lambda p: p.replace(b"0.weight", b"0.weighX")}))
    problems = _fails(repo, snap, run, "f32_state.pt")
    assert "level 3: tensor '0.weight' is missing" in problems
    size, stride = b"K\x30K\x18\x86", b"K\x18K\x01\x86"
    (run / "f32_state.pt").write_bytes(rebuild(data, change={pkl_name(data): lambda p: p.replace(
        size, b"K\x18K\x30\x86").replace(stride, b"K\x01K\x18\x86")}))
    problems = _fails(repo, snap, run, "f32_state.pt")
    assert "level 3: tensor '0.weight' is F32 [24, 48], was F32 [48, 24]" in problems


def test_a_missing_storage_fails_level_2_naming_the_tensor(backed_up: tuple[Repository, str, Path]) -> None:
    repo, snap, run = backed_up
    data = fixture("f32_state.pt")
    (run / "f32_state.pt").write_bytes(rebuild(data, drop=(storage_member(data, "0.weight"),)))
    (problem,) = _fails(repo, snap, run, "f32_state.pt")[1:]  # after level 1's checksum difference
    assert problem.startswith("level 2: torch-zip:") and "0.weight" in problem
