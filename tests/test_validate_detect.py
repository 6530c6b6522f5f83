"""Validation recognises files by content, accepts the restore target or the source directory,
reads HDF5 through h5py when it is installed, and never reads through a symlink out of the tree."""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import FAST_KDF, PASSWORD, write
from test_delta import safetensors_bytes
from test_validate import _rewrite_header
from weightvault.api import Repository


def _model(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return safetensors_bytes({"emb.weight": ("F32", rng.normal(size=(16, 8)).astype(np.float32)),
                              "head.bias": ("F32", rng.normal(size=(8,)).astype(np.float32))})


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)


def test_the_restore_target_or_the_source_directory(repo: Repository, tmp_path: Path) -> None:
    run = write(tmp_path / "run" / "model.safetensors", _model()).parent
    snap = repo.backup([run]).snapshot.id
    repo.restore(snap, tmp_path / "out")
    for given, meant in ((tmp_path / "out", tmp_path / "out" / "run"), (tmp_path / "out" / "run",) * 2, (run, run)):
        report = repo.validate(snap, given, level=3)
        assert report.ok and report.root == str(meant), (given, report)
        assert [(f.format, f.passed) for f in report.files] == [("safetensors", 3)]


def test_a_hub_cache_is_validated_by_content(repo: Repository, tmp_path: Path) -> None:
    """Hugging Face's cache: blobs/<sha256> hold the data, snapshots/<rev>/<name> link to them."""
    cache = tmp_path / "models--org--tiny"
    data = _model(1)
    sha = hashlib.sha256(data).hexdigest()
    write(cache / "blobs" / sha, data)
    write(cache / "blobs" / "weights-file.weights", _model(2))
    (cache / "snapshots" / "abc123").mkdir(parents=True)
    os.symlink(f"../../blobs/{sha}", cache / "snapshots" / "abc123" / "model.safetensors")
    snap = repo.backup([cache]).snapshot.id
    repo.restore(snap, tmp_path / "out")
    report = repo.validate(snap, tmp_path / "out", level=3)
    assert report.ok
    assert sorted((f.path.split("/")[-1], f.format, f.passed) for f in report.files) == sorted(
        [(sha, "safetensors", 3), ("weights-file.weights", "safetensors", 3)])
    blob = tmp_path / "out" / cache.name / "blobs" / sha
    _rewrite_header(blob, {"emb.weight": "emb.w"})
    (bad,) = repo.validate(snap, tmp_path / "out", level=3).failed
    assert bad.path.endswith(sha) and "level 3: tensor 'emb.weight' is missing" in bad.problems


def test_model_named_files_of_unknown_content_warn_and_claimed_formats_fail(repo: Repository, tmp_path: Path) -> None:
    run = tmp_path / "run"
    write(run / "vocab.bin", b"hello world\n" * 10)
    write(run / "empty.pt", b"")
    write(run / "notes.txt", b"just text")
    snap = repo.backup([run]).snapshot.id
    report = repo.validate(snap, run, level=3)
    assert report.ok  # nothing is known to be wrong...
    warned = {f.path.split("/")[-1]: f.warnings for f in report.files}
    assert "only level 1 applies" in warned["vocab.bin"][0] and "empty" in warned["empty.pt"][0]
    assert warned["notes.txt"] == []  # ...and plain files are not model files
    write(run / "model.safetensors", b"not a safetensors file at all")  # a name that claims a format
    snap2 = repo.backup([run]).snapshot.id
    (bad,) = repo.validate(snap2, run, level=2).failed
    assert bad.path.endswith("model.safetensors") and bad.problems[0].startswith("level 2: safetensors:")


def test_a_symlink_out_of_the_tree_is_never_read(repo: Repository, tmp_path: Path) -> None:
    run = write(tmp_path / "run" / "sub" / "model.safetensors", _model()).parent.parent
    snap = repo.backup([run]).snapshot.id
    repo.restore(snap, tmp_path / "out")
    outside = write(tmp_path / "elsewhere" / "model.safetensors", _model())
    shutil.rmtree(tmp_path / "out" / "run" / "sub")
    os.symlink(outside.parent, tmp_path / "out" / "run" / "sub")
    (bad,) = repo.validate(snap, tmp_path / "out" / "run", level=1).failed
    assert "resolves outside" in bad.problems[0]


h5py = pytest.importorskip("h5py")


def _h5(path: Path, shape: tuple[int, ...] = (4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("model/dense/kernel", data=np.arange(12, dtype="<f4").reshape(shape))
        f.create_dataset("model/dense/bias", data=np.zeros(3, dtype="<f4"), compression="gzip")
    return path


def test_hdf5_files_are_checked_through_h5py(repo: Repository, tmp_path: Path) -> None:
    run = _h5(tmp_path / "run" / "weights.h5").parent
    snap = repo.backup([run]).snapshot.id
    report = repo.validate(snap, run, level=3)
    assert report.ok and [(f.format, f.passed) for f in report.files] == [("hdf5", 3)]
    _h5(run / "weights.h5", shape=(3, 4))  # transposed kernel
    (bad,) = repo.validate(snap, run, level=3).failed
    assert any("model/dense/kernel" in p and "[3, 4]" in p and "[4, 3]" in p for p in bad.problems), bad.problems


def test_a_keras_3_zip_is_not_taken_for_hdf5(repo: Repository, tmp_path: Path) -> None:
    """Keras 3 writes ``.keras`` as a zip (config, metadata, an HDF5 of the weights); Keras 2 as
    HDF5. Neither name may claim HDF5 for content that is a zip."""
    import zipfile
    run = tmp_path / "run"
    run.mkdir()
    h5 = _h5(tmp_path / "model.weights.h5").read_bytes()
    with zipfile.ZipFile(run / "model.keras", "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3.8.0"}')
        z.writestr("config.json", '{"class_name": "Sequential"}')
        z.writestr("model.weights.h5", h5)
    _h5(run / "legacy.keras")
    snap = repo.backup([run]).snapshot.id
    report = repo.validate(snap, run, level=3)
    got = {f.path.split("/")[-1]: (f.format, f.passed) for f in report.files}
    assert report.ok and got == {"model.keras": (None, 1), "legacy.keras": ("hdf5", 3)}, got


def test_without_h5py_hdf5_levels_are_skipped_with_a_warning(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _h5(tmp_path / "run" / "weights.h5").parent
    snap = repo.backup([run]).snapshot.id
    real_import = builtins.__import__

    def no_h5py(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    (f,) = repo.validate(snap, run, level=3).files
    assert f.ok and f.format == "hdf5" and "h5py is not installed" in f.warnings[0]
    assert f.passed == 1  # integrity only: no level is claimed that was not checked


def test_ls_and_stats_show_how_files_are_stored(repo: Repository, tmp_path: Path) -> None:
    run = tmp_path / "run"
    write(run / "model.safetensors", _model())
    write(run / "notes.txt", b"plain text " * 100)
    snap = repo.backup([run]).snapshot.id
    layouts = {p.decode().split("/")[-1]: lay for p, lay in repo.layouts(snap).items()}
    assert layouts["model.safetensors"].chunking == "tensor-aware"
    assert layouts["notes.txt"].chunking == "cdc"
    for lay in layouts.values():
        assert lay.stored_bytes == sum(lay.stored_by_codec.values()) > 0 and lay.missing_blobs == 0
    st = repo.stats(snap)
    assert sum(st.stored_by_codec.values()) == st.stored_bytes
    assert st.raw_by_chunking == {"tensor-aware": len(_model()), "cdc": 1100}


def test_cli_ls_long_and_json_show_chunking_and_codecs(repo: Repository, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    run = write(tmp_path / "run" / "model.safetensors", _model()).parent
    repo.backup([run])
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")} | {"WEIGHTVAULT_PASSWORD": PASSWORD}

    def wv(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(tmp_path / "repo"), *args], env=env,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    (entry,) = [e for e in json.loads(wv("ls", "latest", "--json")) if e["type"] == "file"]
    assert entry["chunking"] == "tensor-aware" and entry["stored_bytes"] == sum(entry["stored_by_codec"].values())
    assert "tensor-aware" in wv("ls", "latest", "-l")
    assert "stored as " in wv("stats")


def test_a_backup_warns_when_a_model_file_falls_back_to_generic_chunking(repo: Repository, tmp_path: Path) -> None:
    run = tmp_path / "run"
    big = _model_big()
    write(run / "good.safetensors", big)
    write(run / "cut.safetensors", big[: len(big) // 2])  # a half-written checkpoint
    write(run / "weights.pt", os.urandom(400_000))  # a name only model data has, unknown content
    write(run / "blob.bin", os.urandom(400_000))  # .bin holds other data too: content decides, no warning
    write(run / "data.txt", os.urandom(400_000))
    res = repo.backup([run])
    warned = {p.split("/")[-1]: why for p, why in res.warnings}
    assert set(warned) == {"cut.safetensors", "weights.pt"}, warned
    assert "safetensors parser refused it" in warned["cut.safetensors"]
    assert "no tensor-aware splitter" in warned["weights.pt"]
    again = repo.backup([run])  # unchanged files are not read again, so not warned about again
    assert again.warnings == []


def _model_big() -> bytes:
    rng = np.random.default_rng(5)
    return safetensors_bytes({f"l{i}": ("F32", rng.normal(size=(256, 256)).astype(np.float32)) for i in range(4)})


def test_a_shard_index_is_checked_against_its_shards_without_torch(repo: Repository, tmp_path: Path) -> None:
    """An index naming a tensor its shard lacks, or a path out of the directory, fails level 2
    (and, changed since the backup, level 1)."""
    import json

    run = tmp_path / "ckpt"
    write(run / "model-00001-of-00002.safetensors", _model(1))
    write(run / "model-00002-of-00002.safetensors", safetensors_bytes(
        {"lm.weight": ("F32", np.ones((4, 4), dtype=np.float32))}))
    wm = {"emb.weight": "model-00001-of-00002.safetensors", "head.bias": "model-00001-of-00002.safetensors",
          "lm.weight": "model-00002-of-00002.safetensors"}
    index = {"metadata": {"total_size": 616}, "weight_map": wm}
    write(run / "model.safetensors.index.json", json.dumps(index).encode())
    snap = repo.backup([run]).snapshot.id
    report = repo.validate(snap, run, level=3)
    assert report.ok, [f.problems for f in report.failed]
    assert next(f for f in report.files if f.path.endswith("index.json")).format == "shard-index"

    def index_problems(weight_map: dict[str, str]) -> list[str]:
        write(run / "model.safetensors.index.json", json.dumps({"weight_map": weight_map}).encode())
        got = repo.validate(snap, run, level=3)
        return next(f for f in got.files if f.path.endswith("index.json")).problems

    moved = {**wm, "lm.weight": "model-00001-of-00002.safetensors"}
    problems = index_problems(moved)
    assert any("1 tensors the index maps to 'model-00001-of-00002.safetensors' are not in it, e.g. 'lm.weight'" in p
               for p in problems)
    assert any(p.startswith("level 1:") for p in problems)
    assert any("not a file inside the checkpoint directory" in p for p in index_problems({"x": "../../etc/passwd"}))
