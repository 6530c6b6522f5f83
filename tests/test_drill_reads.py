"""A drill through the public API, counted: one listing, each snapshot document read once, at most
1.1 x the file's stored bytes read from packs, the restored copy hashed from disk once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import FAST_KDF, PASSWORD, write
from test_delta import safetensors_bytes
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.ops import restore_file as restore_mod
from weightvault.ops import validate as validate_mod
from weightvault.repository.manifest import iter_manifest
from weightvault.repository.repo import Repository as Engine
from weightvault.testing.counting import CountingBackend


def test_a_level_3_drill_reads_the_file_once_and_hashes_the_restored_copy_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    model = safetensors_bytes({f"layer.{i}.weight": ("F32", rng.normal(size=(256, 1024)).astype(np.float32))
                               for i in range(4)})
    src = write(tmp_path / "run" / "model.safetensors", model).parent
    repo_path = tmp_path / "repo"
    Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    for step in range(3):  # three snapshots, as in the report: the drill picks the newest
        write(src / "step.txt", str(step).encode())
        Repository.open(repo_path, PASSWORD).backup([src])
    counting = CountingBackend(LocalBackend(repo_path))
    engine = Engine.open(counting, PASSWORD.encode())
    repo = Repository(engine)
    latest = repo.find_snapshot("latest")
    node = next(n for n in iter_manifest(latest.tree, engine.load_blob) if n.path.endswith(b"model.safetensors"))
    stored = sum(engine.lookup(b).blob.length for b in node.blobs)
    hashed: list[str] = []

    def counted(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            hashed.append(name)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(restore_mod, "file_digest", counted("restore", restore_mod.file_digest))
    monkeypatch.setattr(validate_mod, "_sha256", counted("validate", validate_mod._sha256))
    engine = Engine.open(counting, PASSWORD.encode())  # a fresh object: nothing cached yet
    repo = Repository(engine)
    counting.reset()
    res = repo.drill(level=3, record=False)
    assert res.ok, res.error
    assert counting.lists[FileType.SNAPSHOT] == 1
    assert counting.loads[FileType.SNAPSHOT] == 3
    tree_bytes = sum(engine.lookup(b).blob.length for b in latest.tree)
    assert counting.load_bytes[FileType.PACK] <= 1.1 * stored + 2 * tree_bytes + 1024, (
        counting.load_bytes[FileType.PACK], stored)
    assert sorted(hashed) == ["restore", "restore"]  # model.safetensors and step.txt, once each
