"""Repository parameters are validated when a repository is created and when it is opened, and
bad sources are refused before anything is uploaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.errors import IntegrityError, UnsupportedFormatError, UsageError
from weightvault.repository.repo import Repository as Engine


@pytest.mark.parametrize(
    ("chunk_min", "chunk_avg", "chunk_max"),
    [(256 * 1024, 300 * 1024, 8 << 20), (2 << 20, 8 << 20, 16 << 20), (1024, 512, 4096)],
)
def test_unusable_chunk_sizes_are_refused_at_init(
    tmp_path: Path, chunk_min: int, chunk_avg: int, chunk_max: int
) -> None:
    with pytest.raises(UsageError, match="chunk sizes"):
        Engine.init(LocalBackend(tmp_path / "r"), b"pw", kdf=FAST_KDF,
                    chunk_min=chunk_min, chunk_avg=chunk_avg, chunk_max=chunk_max)
    assert not (tmp_path / "r").exists()  # validated before anything was created


def _edit_config(repo_path: Path, **changes: object) -> None:
    cfg = json.loads((repo_path / "config").read_text())
    for k, v in changes.items():
        if k.startswith("chunker_"):
            cfg["chunker"][k.removeprefix("chunker_")] = v
        else:
            cfg[k] = v
    (repo_path / "config").write_text(json.dumps(cfg))


def test_tampered_chunk_sizes_are_refused_at_open(repo: Repository, repo_path: Path) -> None:
    _edit_config(repo_path, chunker_min=2 << 20, chunker_avg=8 << 20)
    with pytest.raises(IntegrityError, match="chunk sizes"):
        Repository.open(repo_path, PASSWORD)


def test_boolean_version_is_refused(repo: Repository, repo_path: Path) -> None:
    _edit_config(repo_path, version=True)
    with pytest.raises(UnsupportedFormatError):
        Repository.open(repo_path, PASSWORD)


def test_non_utf8_source_root_is_refused_before_upload(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    src = os.path.join(os.fsencode(tmp_path), b"run\xff")
    os.mkdir(src)
    with open(os.path.join(src, b"w.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    with pytest.raises(UsageError, match="UTF-8"):
        repo.backup([os.fsdecode(src)])
    assert list(LocalBackend(repo_path).list(FileType.PACK)) == []
    # the parent directory works, and the odd name survives inside the snapshot
    res = repo.backup([tmp_path], excludes=["repo"])
    names = [n.path for n in repo.ls(res.snapshot.id)]
    assert any(p.endswith(b"run\xff/w.bin") for p in names)


def test_fresh_repository_opens_with_defaults(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a", b"x")
    r = Repository.init(tmp_path / "r", PASSWORD, kdf=FAST_KDF)
    assert Repository.open(tmp_path / "r", PASSWORD).id == r.id
