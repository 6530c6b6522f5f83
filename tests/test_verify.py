"""verify: re-read a snapshot, check SHA-256 per file, compare with a live tree, rotating samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PASSWORD, write
from weightvault.api import Repository


@pytest.fixture
def run(tmp_path: Path) -> Path:
    src = tmp_path / "run"
    for i in range(12):
        write(src / f"ckpt-{i:02d}" / "model.bin", os.urandom(40_000 + i))
    write(src / "config.json", b'{"layers": 6}')
    os.symlink("config.json", src / "latest.json")
    return src


def test_healthy_snapshot_verifies(repo: Repository, run: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    res = repo.verify(snap)
    assert res.ok and res.files == 13 and res.bytes == sum(40_000 + i for i in range(12)) + 13
    assert repo.verify(snap, against=run).ok


def test_a_flipped_byte_in_the_repository_is_reported(repo: Repository, repo_path: Path, run: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    pack = max((p for p in (repo_path / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x01
    pack.write_bytes(bytes(data))
    res = Repository.open(repo_path, PASSWORD).verify(snap)
    assert not res.ok and res.damaged
    assert all(p.startswith("run/ckpt-") for p, _ in res.damaged)


def test_against_a_live_tree_lists_missing_changed_and_extra(repo: Repository, run: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    (run / "ckpt-03" / "model.bin").write_bytes(os.urandom(40_003))  # same size, other bytes
    (run / "ckpt-05" / "model.bin").unlink()
    write(run / "ckpt-12" / "model.bin", b"new")
    os.unlink(run / "latest.json")
    os.symlink("ckpt-00", run / "latest.json")
    res = repo.verify(snap, against=run)
    assert not res.damaged
    assert res.changed == ["run/ckpt-03/model.bin", "run/latest.json"]
    assert res.missing == ["run/ckpt-05/model.bin"]
    assert res.extra == ["run/ckpt-12", "run/ckpt-12/model.bin"]


def test_sampled_runs_rotate_and_cover_every_file(repo: Repository, run: Path, isolated_home: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    seen: list[int] = []
    coverage = []
    for _ in range(4):
        res = repo.verify(snap, sample=0.25)
        assert res.ok and res.sample is not None and res.sample[1] == 4
        seen.append(res.sample[0])
        coverage.append(res.coverage)
    assert sorted(seen) == [0, 1, 2, 3] and coverage == [0.25, 0.5, 0.75, 1.0]
    assert repo.verify(snap, sample=1.0).files == 13
    again = repo.verify(snap, sample=0.25)
    assert again.coverage == 0.25  # a new round


def test_sample_buckets_partition_the_files(repo: Repository, run: Path, isolated_home: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    assert sum(repo.verify(snap, sample=1 / 3).files for _ in range(3)) == 13


def test_cli_verify_exit_codes(tmp_path: Path, repo: Repository, repo_path: Path, run: Path) -> None:
    snap = repo.backup([run]).snapshot.id
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"))

    def wv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo_path), *args], env=env,
                              capture_output=True, text=True, timeout=120)

    ok = wv("verify", snap, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["files"] == 13
    sampled = wv("verify", "latest", "--sample", "50%")
    assert sampled.returncode == 0 and "50% covered" in sampled.stdout, sampled.stdout
    (run / "config.json").write_bytes(b"{}")
    diff = wv("verify", snap, "--against", str(run))
    assert diff.returncode == 8 and "changed  run/config.json" in diff.stdout
    pack = max((p for p in (repo_path / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    bad = wv("verify", snap)
    assert bad.returncode == 4 and "DAMAGED" in bad.stdout
    assert wv("verify", snap, "--sample", "0%").returncode == 2
