"""Full disks: ENOSPC on the repository or the restore target is a clean, recoverable NoSpaceError.

Two paths are tested. ``*_real_tmpfs`` tests mount a small tmpfs (needs root and mount permission;
skipped with the reason otherwise). ``*_injected`` tests always run: FaultyBackend raises what
LocalBackend raises for ``OSError(ENOSPC)`` (the real conversion code), from a chosen pack write.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault import api
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.errors import NoSpaceError
from weightvault.repository.repo import Repository as Engine
from weightvault.testing.faults import FaultyBackend, enospc

MiB = 1024 * 1024
Mount = Callable[[Path, int], Path]


@pytest.fixture
def small_fs() -> Iterator[Mount]:
    """``mount(dir, MiB)`` mounts a tmpfs of that size (remounting resizes it); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(where: Path, size_mib: int) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        opts = f"size={size_mib}m" if where not in mounted else f"remount,size={size_mib}m"
        if shutil.which("mount") is None:
            pytest.skip("real-filesystem path unavailable: no mount(8); the *_injected tests cover ENOSPC")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"real-filesystem path unavailable (mount tmpfs: {proc.stderr.decode().strip()});"
                        " the *_injected tests cover ENOSPC")
        if where not in mounted:
            mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


def _source(root: Path, mib: int) -> Path:
    rng = random.Random(mib)
    for i in range(mib // 4):
        write(root / f"shard-{i}.bin", rng.randbytes(4 * MiB))
    write(root / "meta.json", b'{"step": 1000}\n')
    return root


def _assert_clean_no_space(exc: NoSpaceError, what: str) -> None:
    assert exc.exit_code == 15
    assert re.search(what, exc.message), exc.message
    assert exc.hint is not None and "free space" in exc.hint


def _assert_consistent(repo: api.Repository, path: Path) -> None:
    """No snapshot, check() passes (unindexed packs are warnings), no temp files left behind."""
    assert repo.snapshots() == []
    res = repo.check()
    assert res.ok, res.errors
    assert all("not indexed" in w for w in res.warnings)
    assert LocalBackend(path).list_temp_files() == []
    assert repo.locks() == []


def test_backup_to_full_repository_real_tmpfs(tmp_path: Path, small_fs: Mount) -> None:
    path = small_fs(tmp_path / "fs", 20) / "repo"
    Engine.init(LocalBackend(path), PASSWORD.encode(), kdf=FAST_KDF, pack_size=4 * MiB)
    src = _source(tmp_path / "src", 32)
    repo = api.Repository.open(path, PASSWORD)
    with pytest.raises(NoSpaceError) as ei:
        repo.backup([src], min_free=0)  # the capacity check off: the disk really fills up
    _assert_clean_no_space(ei.value, r"no space left writing (data|index|snapshots)/[0-9a-f]{64}")
    _assert_consistent(repo, path)

    small_fs(tmp_path / "fs", 96)  # space freed
    res = api.Repository.open(path, PASSWORD).backup([src])
    assert res.errors == []
    assert res.snapshot.summary["stored_bytes_added"] < 32 * MiB, "packs written before ENOSPC are reused"
    repo = api.Repository.open(path, PASSWORD)
    final = repo.check(read_data=True)
    assert final.ok and final.warnings == []
    repo.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "src") == tree_digest(src)


def test_restore_to_full_target_real_tmpfs(repo: api.Repository, tmp_path: Path, small_fs: Mount) -> None:
    src = _source(tmp_path / "src", 12)
    repo.backup([src])
    target = small_fs(tmp_path / "target", 6)
    with pytest.raises(NoSpaceError) as ei:
        repo.restore("latest", target)
    _assert_clean_no_space(ei.value, re.escape(str(target)))
    leftovers = [p for p in target.rglob("*") if p.name.startswith(".wvtmp-")]
    assert leftovers == []
    for f in (target / "src").glob("*.bin"):  # whatever was renamed into place is complete
        assert f.read_bytes() == (src / f.name).read_bytes()

    small_fs(target, 32)
    repo.restore("latest", target, verify=True)  # complete files are recognised and skipped
    assert tree_digest(target / "src") == tree_digest(src)


def test_backup_enospc_injected(repo_path: Path, tmp_path: Path) -> None:
    Engine.init(LocalBackend(repo_path), PASSWORD.encode(), kdf=FAST_KDF, pack_size=2 * MiB)
    src = _source(tmp_path / "src", 12)
    faulty = FaultyBackend(LocalBackend(repo_path))
    faulty.fail("save", ftype=FileType.PACK, nth=3, error=enospc, times=100)
    repo = api.Repository(Engine.open(faulty, PASSWORD.encode()))
    with pytest.raises(NoSpaceError) as ei:
        repo.backup([src])
    _assert_clean_no_space(ei.value, r"no space left writing data/[0-9a-f]{64}: No space left on device")
    assert faulty.fired and all(op == "save" and t is FileType.PACK for op, t, _ in faulty.fired)
    _assert_consistent(api.Repository.open(repo_path, PASSWORD), repo_path)

    faulty.clear()  # space freed
    res = repo.backup([src])
    assert res.errors == []
    after = api.Repository.open(repo_path, PASSWORD)
    assert after.check(read_data=True).ok
    after.restore("latest", tmp_path / "out")
    assert tree_digest(tmp_path / "out" / "src") == tree_digest(src)


def test_snapshot_write_enospc_injected(repo: api.Repository, repo_path: Path, tmp_path: Path) -> None:
    """ENOSPC on the very last write (the snapshot itself): nothing is listed, data is reused."""
    src = _source(tmp_path / "src", 4)
    faulty = FaultyBackend(LocalBackend(repo_path))
    faulty.fail("save", ftype=FileType.SNAPSHOT, error=enospc)
    with pytest.raises(NoSpaceError) as ei:
        api.Repository(Engine.open(faulty, PASSWORD.encode())).backup([src])
    _assert_clean_no_space(ei.value, r"no space left writing snapshots/")
    _assert_consistent(repo, repo_path)
    res = repo.backup([src])
    assert res.snapshot.summary["stored_bytes_added"] == 0


def test_index_write_enospc_then_retry_in_same_process(repo_path: Path, tmp_path: Path) -> None:
    """A long-lived Repository object retries after ENOSPC on an index write: the retry must index
    every pack it relies on (nothing may stay 'indexed' only in memory)."""
    Engine.init(LocalBackend(repo_path), PASSWORD.encode(), kdf=FAST_KDF, pack_size=2 * MiB)
    src = _source(tmp_path / "src", 8)
    faulty = FaultyBackend(LocalBackend(repo_path))
    faulty.fail("save", ftype=FileType.INDEX, error=enospc)
    repo = api.Repository(Engine.open(faulty, PASSWORD.encode()))
    with pytest.raises(NoSpaceError) as ei:
        repo.backup([src])
    _assert_clean_no_space(ei.value, r"no space left writing index/")
    repo.backup([src])
    res = api.Repository.open(repo_path, PASSWORD).check(read_data=True)
    assert res.ok and res.warnings == [], (res.errors, res.warnings)


def test_capacity_check_refuses_before_writing_real_tmpfs(tmp_path: Path, small_fs: Mount) -> None:
    path = small_fs(tmp_path / "fs", 20) / "repo"
    Engine.init(LocalBackend(path), PASSWORD.encode(), kdf=FAST_KDF)
    src = _source(tmp_path / "src", 32)
    repo = api.Repository.open(path, PASSWORD)
    with pytest.raises(NoSpaceError) as ei:
        repo.backup([src])
    assert ei.value.exit_code == 15 and "at least 10% must stay free" in str(ei.value)
    assert "up to 32.0 MiB" in str(ei.value) and ei.value.hint and "--min-free" in ei.value.hint
    assert list((path / "data").rglob("*.*")) == [] and not any(p.is_file() for p in (path / "data").rglob("*"))
    assert repo.snapshots() == [] and repo.locks() == []


def test_capacity_warning_then_unchanged_files_need_no_space_real_tmpfs(tmp_path: Path, small_fs: Mount) -> None:
    path = small_fs(tmp_path / "fs", 48) / "repo"
    Engine.init(LocalBackend(path), PASSWORD.encode(), kdf=FAST_KDF)
    src = _source(tmp_path / "src", 40)
    repo = api.Repository.open(path, PASSWORD)
    res = repo.backup([src])  # leaves 10-20 % free: allowed, with a warning
    assert any("past 80% full" in reason for _, reason in res.warnings)
    again = repo.backup([src])  # nothing changed: nothing to add, no refusal even though the disk is full
    assert again.snapshot.summary["files_unmodified"] == 11


def test_check_space_rules() -> None:
    from weightvault.ops.backup import check_space

    crossing = check_space("r", free=300 * MiB, total=1000 * MiB, estimate=150 * MiB, min_free=0.1)
    assert crossing == [("r", "this backup may take the repository's storage past 80% full"
                              " (150.0 MiB of 1,000.0 MiB free)")]
    assert check_space("r", free=150 * MiB, total=1000 * MiB, estimate=10 * MiB, min_free=0.1) == []  # already past
    assert check_space("r", free=900 * MiB, total=1000 * MiB, estimate=100 * MiB, min_free=0.1) == []
    with pytest.raises(NoSpaceError):
        check_space("r", free=150 * MiB, total=1000 * MiB, estimate=60 * MiB, min_free=0.1)
