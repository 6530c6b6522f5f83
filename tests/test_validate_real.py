"""Drills never cry wolf: a repository holding files the real libraries wrote (every safetensors
dtype, GGUF in both byte orders with quantised tensors, a 600-field .npy, HDF5, torch files) passes
a level-3 drill, and an unknown dtype is a warning, not a failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_KDF, PASSWORD
from test_formats_real import FIELDS, _f6_file, _gguf_file, _library_file, _numpy_file, gguf
from test_torch_structure import fixture
from weightvault.api import Repository


def _corpus(run: Path) -> None:
    run.mkdir(parents=True)
    for make in (_library_file, _f6_file, _numpy_file):
        make(run)
    _gguf_file(run / "le.gguf", gguf.GGUFEndian.LITTLE)
    _gguf_file(run / "be.gguf", gguf.GGUFEndian.BIG)
    arr = np.zeros(3, dtype=FIELDS)
    np.save(run / "fields.npy", arr)
    for name in ("f32_state.pt", "legacy_format.pt", "lightning.ckpt", "dcp_shard.distcp"):
        (run / name).write_bytes(fixture(name))
    h5py = pytest.importorskip("h5py")
    with h5py.File(run / "model.h5", "w") as f:
        f.create_dataset("dense/kernel", data=np.ones((4, 4), dtype="<f4"))


def test_a_drill_of_real_library_files_passes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _corpus(run)
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    repo.backup([run])
    res = repo.drill(level=3, record=False)
    assert res.ok, res.error
    assert res.report is not None
    files = {f.path.split("/")[-1]: f for f in res.report.files}
    assert all(f.passed == 3 and f.format for f in files.values()), {n: (f.format, f.passed) for n, f in
                                                                     files.items()}
    assert {files[n].format for n in ("le.gguf", "be.gguf")} == {"gguf"}
    assert files["fields.npy"].format == "npy" and files["model.h5"].format == "hdf5"


def test_an_unknown_dtype_warns_and_still_passes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    path, _ = _numpy_file(run)
    data = path.read_bytes().replace(b'"dtype":"I16"', b'"dtype":"Z16"', 1)  # a dtype a later library adds
    path.write_bytes(data)
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    snap = repo.backup([run]).snapshot.id
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    repo.restore(snap, tmp_path / "out")
    (f,) = repo.validate(snap, tmp_path / "out", level=3).files
    assert f.ok and f.passed == 3 and any("Z16" in w for w in f.warnings)
