"""`repair index` rebuilds the index from pack headers alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import PASSWORD, tree_digest, write
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.format.layout import TRAILER_SIZE


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "run"
    write(src / "a.bin", os.urandom(3 << 20))
    write(src / "b" / "c.txt", b"hello\n" * 1000)
    return src


def _index_files(repo_path: Path) -> list[str]:
    return sorted(n for n, _ in LocalBackend(repo_path).list(FileType.INDEX))


def test_damaged_index_file_is_replaced(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    src = _source(tmp_path)
    repo.backup([src])
    (name,) = _index_files(repo_path)
    p = repo_path / "index" / name
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    assert not Repository.open(repo_path, PASSWORD).check().ok

    res = Repository.open(repo_path, PASSWORD).repair_index()
    assert res.skipped_index_files == [name] and res.index_files_removed == 1 and not res.unreadable
    assert name not in _index_files(repo_path)
    fresh = Repository.open(repo_path, PASSWORD)
    assert fresh.check(read_data=True).ok
    fresh.restore("latest", tmp_path / "out")
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)


def test_all_index_files_lost(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    src = _source(tmp_path)
    repo.backup([src])
    write(src / "d.bin", os.urandom(1 << 20))
    repo.backup([src])
    for name in _index_files(repo_path):
        (repo_path / "index" / name).unlink()
    res = Repository.open(repo_path, PASSWORD).repair_index()
    assert res.packs == len(list(LocalBackend(repo_path).list(FileType.PACK))) and res.index_files_written == 1
    fresh = Repository.open(repo_path, PASSWORD)
    assert fresh.check(read_data=True).ok
    fresh.restore("latest", tmp_path / "out")
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)


def test_pack_with_damaged_header_keeps_old_entries(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    src = _source(tmp_path)
    repo.backup([src])
    packs = sorted(LocalBackend(repo_path).list(FileType.PACK), key=lambda p: -p[1])
    pack_id, size = packs[0]  # the data pack
    path = repo_path / "data" / pack_id[:2] / pack_id
    raw = bytearray(path.read_bytes())
    raw[size - TRAILER_SIZE - 5] ^= 0x01  # inside the encrypted header
    path.write_bytes(bytes(raw))
    res = Repository.open(repo_path, PASSWORD).repair_index()
    assert res.carried_over == [pack_id] and not res.unreadable
    # the blobs themselves are intact, so the data still restores
    Repository.open(repo_path, PASSWORD).restore("latest", tmp_path / "out")
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)


def test_cli_repair_index(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    repo.backup([_source(tmp_path)])
    for name in _index_files(repo_path):
        (repo_path / "index" / name).unlink()
    env = {**os.environ, "WEIGHTVAULT_PASSWORD": PASSWORD}
    proc = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "repair", "index", "--json"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["packs"] >= 2 and out["index_files_written"] == 1
    check = subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), "check", "--read-data"],
                           capture_output=True, text=True, env=env, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
