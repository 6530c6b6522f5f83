from __future__ import annotations

from pathlib import Path

from conftest import tree_digest, write
from weightvault.api import Repository


def test_backup_restore_roundtrip(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "exp7"
    write(src / "model.safetensors", bytes(range(256)) * 5000)
    write(src / "cfg" / "train.yaml", b"lr: 0.001\n")
    res = repo.backup([src], tags=["run=exp7"])
    assert res.errors == []
    out = tmp_path / "out"
    repo.restore("latest:run=exp7", out, verify=True)
    assert tree_digest(out / "exp7") == tree_digest(src)
    assert repo.check(read_data=True).ok
