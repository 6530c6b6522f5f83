"""Small restored files, and large ones written past the page cache, are made durable many at a
time (one syncfs per batch), and never get their names before that: a failed flush leaves neither
names nor temporary files, and is not retried."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from conftest import direct_supported, tree_digest, write
from weightvault.api import Repository
from weightvault.errors import LocalPathError
from weightvault.ops import restore_durable


def _tree(src: Path, n: int) -> None:
    for i in range(n):
        write(src / f"d{i % 3}" / f"f{i}.txt", os.urandom(100 + i))
    write(src / "big.bin", os.urandom(restore_durable.SMALL_FILE + 1))  # batched only if written O_DIRECT


def _names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_small_files_are_named_only_after_their_batch_is_durable(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "run"
    _tree(src, 10)
    repo.backup([src])
    out = tmp_path / "out"
    monkeypatch.setattr(restore_durable, "MAX_FILES", 4)
    seen: list[set[str]] = []
    real = restore_durable.DurableBatch._make_durable

    def spy(self: restore_durable.DurableBatch, dirs: dict[tuple[int, int], int],
            files: list[restore_durable._Pending]) -> None:
        seen.append({f.name.decode() for f in files})
        present = {p.name for p in out.rglob("*")}
        assert not seen[-1] & present, "a file had its name before it was durable"
        assert all(f.tmp.decode() in present for f in files)
        real(self, dirs, files)

    monkeypatch.setattr(restore_durable.DurableBatch, "_make_durable", spy)
    result = repo.restore("latest", out)
    assert tree_digest(out / "run") == tree_digest(src)
    assert result.files == 11
    if direct_supported(tmp_path):  # big.bin's data went past the page cache: it joins a batch too
        assert [len(s) for s in seen] == [4, 4, 3] and "big.bin" in set().union(*seen)
    else:  # written through the page cache, big.bin had its own fsync
        assert [len(s) for s in seen] == [4, 4, 2]  # the 10 small files in batches of at most 4
    assert not any(p.name.startswith(".wvtmp-") for p in out.rglob("*"))


def test_a_failed_flush_leaves_no_names_and_no_temporary_files(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "run"
    _tree(src, 6)
    repo.backup([src])
    calls: list[int] = []

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "syncfs failed: Input/output error")

    monkeypatch.setattr(restore_durable, "_SYNCFS", lambda fd: 0)  # so the syncfs path is taken
    monkeypatch.setattr(restore_durable, "_syncfs", failing)
    out = tmp_path / "out"
    with pytest.raises(LocalPathError, match="Input/output error"):
        repo.restore("latest", out)
    assert len(calls) == 1, "a failed flush must not be retried"
    left = _names(out)
    assert not any(name.startswith("run/d") for name in left), left  # no small file got its name
    assert not any(".wvtmp-" in name for name in left), left


def test_without_syncfs_each_small_file_is_fsynced(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "run"
    _tree(src, 5)
    repo.backup([src])
    monkeypatch.setattr(restore_durable, "_SYNCFS", None)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode) and os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):
            synced.append(fd)
        real_fsync(fd)

    out = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", counting)
    repo.restore("latest", out)
    assert tree_digest(out / "run") == tree_digest(src)
    assert len(synced) == 5 + 1  # each small file in the batch, big.bin in restore


def test_directory_entries_are_made_durable_once_per_file_system(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "run"
    _tree(src, 9)
    repo.backup([src])
    flushed: list[int] = []
    real_syncfs = restore_durable._syncfs
    dir_fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting_syncfs(fd: int) -> None:
        flushed.append(os.fstat(fd).st_dev)
        real_syncfs(fd)

    def counting_fsync(fd: int) -> None:  # the restore target's directories only, not the repository's
        if stat.S_ISDIR(os.fstat(fd).st_mode) and os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path / "out")):
            dir_fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(restore_durable, "_syncfs", counting_syncfs)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    if restore_durable.syncfs_available():
        restore_durable.make_dirs_durable([os.open(p, os.O_RDONLY) for p in (src, src / "d0", src / "d1")])
        assert flushed == [os.stat(src).st_dev] and dir_fsyncs == []
        flushed.clear()
        repo.restore("latest", tmp_path / "out")
        assert dir_fsyncs == []  # no fsync per directory: the syncfs calls covered them
        assert flushed and flushed[-1] == os.stat(tmp_path / "out").st_dev
    monkeypatch.setattr(restore_durable, "_SYNCFS", None)
    repo.restore("latest", tmp_path / "out2")
    assert len(dir_fsyncs) == 5  # run, d0, d1, d2 and the target itself
    assert tree_digest(tmp_path / "out2" / "run") == tree_digest(src)
