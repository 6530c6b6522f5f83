"""What validation reads: level 3 reads the backed-up file through its blobs (only those holding the
bytes a parser asks for), and ``hashed=True`` skips level 1's second SHA-256 pass after a verified
restore."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_KDF, PASSWORD, write
from test_delta import safetensors_bytes
from test_validate import _rewrite_header
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.ops import validate as validate_mod
from weightvault.ops.backup import backup
from weightvault.ops.restore import RestoreOptions, restore
from weightvault.ops.validate import StoredFile, validate_tree
from weightvault.repository.manifest import Node, iter_manifest
from weightvault.repository.repo import Repository as Engine
from weightvault.repository.snapshots import Snapshot
from weightvault.testing.counting import CountingBackend

MiB = 1024 * 1024


def _model() -> bytes:
    """A ~4 MiB safetensors file: four 1 MiB tensors."""
    rng = np.random.default_rng(7)
    return safetensors_bytes({f"layer.{i}.weight": ("F32", rng.normal(size=(256, 1024)).astype(np.float32))
                              for i in range(4)})


@pytest.fixture
def counted(repo_path: Path, tmp_path: Path) -> tuple[Engine, CountingBackend, Snapshot, Path]:
    """A repository on a counting backend holding one snapshot of ``run/model.safetensors``."""
    src = write(tmp_path / "run" / "model.safetensors", _model()).parent
    Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    cb = CountingBackend(LocalBackend(repo_path))
    eng = Engine.open(cb, PASSWORD.encode())
    with eng.lock():
        snap = backup(eng, [str(src)]).snapshot
    return eng, cb, snap, src


def _file_node(eng: Engine, snap: Snapshot) -> Node:
    (node,) = [n for n in iter_manifest(snap.tree, eng.load_blob) if n.type == "file"]
    return node


def _stored_bytes(eng: Engine, node: Node) -> int:
    return sum(eng.lookup(b).blob.length for b in node.blobs)


def test_a_drill_reads_the_file_once_and_level_3_reads_only_its_header(
    counted: tuple[Engine, CountingBackend, Snapshot, Path], tmp_path: Path
) -> None:
    eng, cb, snap, _src = counted
    node = _file_node(eng, snap)
    stored = _stored_bytes(eng, node)
    assert node.size > 4 * MiB and len(node.blobs) >= 5  # header chunk + tensor chunks
    cb.reset()
    res = restore(eng, snap, str(tmp_path / "out"), RestoreOptions(verify=True))
    assert res.verified == 1
    restored = cb.load_bytes[FileType.PACK]
    cb.reset()
    report = validate_tree(eng, snap, tmp_path / "out" / "run", 3, hashed=True)
    validated = cb.load_bytes[FileType.PACK]
    assert report.ok and [(f.format, f.passed) for f in report.files] == [("safetensors", 3)]
    assert validated < 0.1 * stored, (validated, stored)  # the header chunk (and the manifest), not the file
    assert cb.loads[FileType.PACK] <= 3
    assert restored + validated <= 1.1 * stored, (restored, validated, stored)


def test_level_3_still_catches_renamed_and_reshaped_tensors(
    counted: tuple[Engine, CountingBackend, Snapshot, Path], tmp_path: Path
) -> None:
    eng, cb, snap, src = counted
    stored = _stored_bytes(eng, _file_node(eng, snap))
    edits: list[tuple[dict[str, object], str]] = [
        ({"layer.1.weight": "layer.1.w"}, "level 3: tensor 'layer.1.weight' is missing"),
        ({"layer.2.weight": [1024, 256]}, "level 3: tensor 'layer.2.weight' is F32 [1024, 256], was F32 [256, 1024]"),
    ]
    for edit, want in edits:
        root = tmp_path / "edited"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(src, root)
        _rewrite_header(root / "model.safetensors", edit)
        cb.reset()
        (bad,) = validate_tree(eng, snap, root, 3).failed
        assert want in bad.problems and not any(p.startswith("level 2") for p in bad.problems)
        assert cb.load_bytes[FileType.PACK] < 0.1 * stored


def test_stored_file_reads_any_range_loading_only_the_blobs_it_touches(
    counted: tuple[Engine, CountingBackend, Snapshot, Path]
) -> None:
    eng, _cb, snap, src = counted
    node = _file_node(eng, snap)
    data = (src / "model.safetensors").read_bytes()
    loaded: list[bytes] = []

    def load(blob_id: bytes) -> bytes:  # no cache: every blob load reaches the repository
        loaded.append(blob_id)
        return eng.load_blob(blob_id)

    rnd = random.Random(1)
    with StoredFile(eng, node, load) as f:
        assert f.seek(0, 2) == len(data) and f.read(10) == b""
        for _ in range(50):
            start = rnd.randrange(len(data))
            n = rnd.choice([1, 7, 4096, MiB + 3, 3 * MiB])
            f.seek(start)
            assert f.read(n) == data[start:start + n] and f.tell() == min(len(data), start + n)
        loaded.clear()
        f.seek(0)
        assert f.read(8) == data[:8] and f.read(8) == data[8:16]
        assert loaded == [node.blobs[0]]  # the last blob is kept: two reads, one load
        f.seek(-5, 1)
        with pytest.raises(ValueError):
            f.seek(-1)
        assert f.read(4) == data[11:15]


def test_hashed_skips_the_sha256_pass_but_still_compares_sizes(
    counted: tuple[Engine, CountingBackend, Snapshot, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng, _cb, snap, src = counted

    def no_hashing(path: Path) -> tuple[str, int]:
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(validate_mod, "_sha256", no_hashing)
    report = validate_tree(eng, snap, src, 3, hashed=True)
    assert report.ok and report.files[0].passed == 3
    with (src / "model.safetensors").open("ab") as f:
        f.write(b"\0" * 8)  # grew since the caller's check: a size change is still seen
    (bad,) = validate_tree(eng, snap, src, 1, hashed=True).failed
    assert bad.passed == 0 and bad.problems[0].startswith("level 1: size")
