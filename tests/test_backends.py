"""Backends against the conformance suite, plus LocalBackend specifics and the fault injector."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from weightvault.backends.base import Backend, FileType
from weightvault.backends.local import LocalBackend
from weightvault.backends.memory import MemoryBackend
from weightvault.errors import BackendError, NoSpaceError, RepositoryExistsError
from weightvault.testing.backend_conformance import BackendConformance, LocalConformance
from weightvault.testing.faults import FaultyBackend, enospc, os_error


class TestMemoryBackend(BackendConformance):
    def make_backend(self, tmp_path: Path) -> Backend:
        return MemoryBackend()


class TestLocalBackend(LocalConformance):
    """LocalBackend itself (LocalConformance's default ``make_backend``)."""


class TestFaultyBackendWithoutFaults(LocalConformance):
    """The wrapper with no faults configured is a conforming backend itself."""

    def make_backend(self, tmp_path: Path) -> Backend:
        return FaultyBackend(LocalBackend(tmp_path / "repo"))


# -- LocalBackend specifics ----------------------------------------------------------------------
def _no_temp_files(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert LocalBackend(root).list_temp_files() == []


def test_local_layout(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "r")
    b.create()
    name = "ab" + "0" * 62
    b.save(FileType.PACK, name, b"pack")
    b.save(FileType.CONFIG, "config", b"{}")
    assert (tmp_path / "r" / "data" / "ab" / name).read_bytes() == b"pack"
    assert (tmp_path / "r" / "config").read_bytes() == b"{}"
    with pytest.raises(RepositoryExistsError):
        b.create()


def test_local_list_ignores_temp_files(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "r")
    b.create()
    b.save(FileType.INDEX, "aa" * 32, b"index")
    b.save(FileType.PACK, "bb" * 32, b"pack")
    (tmp_path / "r" / "index" / ".tmp-0123456789abcdef").write_bytes(b"partial")
    (tmp_path / "r" / "data" / "bb" / ".tmp-fedcba9876543210").write_bytes(b"partial")
    assert list(b.list(FileType.INDEX)) == [("aa" * 32, 5)]
    assert list(b.list(FileType.PACK)) == [("bb" * 32, 4)]
    assert len(b.list_temp_files()) == 2


def test_local_list_skips_objects_removed_while_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock released between the directory read and the stat is skipped, not an I/O error (CI race)."""
    b = LocalBackend(tmp_path / "r")
    b.create()
    b.save(FileType.LOCK, "aa" * 16, b"one")
    b.save(FileType.LOCK, "bb" * 16, b"two")
    real_scandir = os.scandir

    def scandir_then_remove(path: str) -> list[os.DirEntry[str]]:
        entries = list(real_scandir(path))
        b.remove(FileType.LOCK, "aa" * 16)  # another process releases its lock right now
        return entries

    monkeypatch.setattr("weightvault.backends.local.os.scandir", scandir_then_remove)
    assert list(b.list(FileType.LOCK)) == [("bb" * 16, 3)]


def test_local_rejects_unsafe_names(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "r")
    b.create()
    for bad in ("", "../escape", "a/b", ".hidden", ".tmp-x"):
        with pytest.raises(BackendError):
            b.save(FileType.SNAPSHOT, bad, b"x")
    assert not (tmp_path / "escape").exists()


def test_local_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """A write that fails after the temp file exists (here: its directory vanished) cleans up."""
    root = tmp_path / "r"
    b = LocalBackend(root)
    b.create()
    b.save(FileType.SNAPSHOT, "cc" * 32, b"old")
    # Make the final rename fail: a directory occupies the target name.
    (root / "snapshots" / ("dd" * 32)).mkdir()
    with pytest.raises(BackendError) as ei:
        b.save(FileType.SNAPSHOT, "dd" * 32, os.urandom(100_000))
    assert "dd" * 32 in str(ei.value)
    _no_temp_files(root)
    # create-only on an existing name also removes its temp file
    with pytest.raises(BackendError):
        b.save(FileType.SNAPSHOT, "cc" * 32, b"new", create_only=True)
    assert b.load(FileType.SNAPSHOT, "cc" * 32) == b"old"
    _no_temp_files(root)


def test_local_io_error_is_backend_error(tmp_path: Path) -> None:
    root = tmp_path / "r"
    b = LocalBackend(root)
    b.create()
    (root / "index").rmdir()
    (root / "index").write_bytes(b"a file where the index directory should be")
    with pytest.raises(BackendError) as ei:
        b.save(FileType.INDEX, "ee" * 32, b"x")
    assert ei.value.exit_code == 20 and "index/" + "ee" * 32 in str(ei.value)
    _no_temp_files(root)


# -- the fault injector itself -------------------------------------------------------------------
def test_faulty_fails_nth_matching_call(tmp_path: Path) -> None:
    fb = FaultyBackend(LocalBackend(tmp_path / "r"))
    fb.create()
    fb.fail("save", ftype=FileType.PACK, nth=2, error=enospc)
    fb.save(FileType.INDEX, "aa" * 32, b"not counted: other type")
    fb.save(FileType.PACK, "01" * 32, b"first")
    with pytest.raises(NoSpaceError) as ei:
        fb.save(FileType.PACK, "02" * 32, b"second")
    assert ei.value.exit_code == 15
    assert "data/" + "02" * 32 in str(ei.value)
    assert isinstance(ei.value.__cause__, OSError) and ei.value.__cause__.errno == errno.ENOSPC
    fb.save(FileType.PACK, "03" * 32, b"third")  # spent after one firing
    assert sorted(n for n, _ in fb.list(FileType.PACK)) == ["01" * 32, "03" * 32]
    assert fb.calls["save"] == 4 and fb.calls_of("save", FileType.PACK) == 3
    assert fb.fired == [("save", FileType.PACK, "02" * 32)]


def test_faulty_os_error_conversion(tmp_path: Path) -> None:
    fb = FaultyBackend(MemoryBackend())
    fb.fail("load", error=os_error(errno.EIO), times=2)
    fb.save(FileType.KEY, "k", b"key")
    for _ in range(2):
        with pytest.raises(BackendError, match="I/O error on keys/k"):
            fb.load(FileType.KEY, "k")
    assert fb.load(FileType.KEY, "k") == b"key"


def test_faulty_drop_and_corrupt() -> None:
    fb = FaultyBackend(MemoryBackend())
    fb.drop_write(ftype=FileType.SNAPSHOT)
    fb.save(FileType.SNAPSHOT, "s1", b"dropped")
    fb.save(FileType.SNAPSHOT, "s2", b"kept")
    assert dict(fb.list(FileType.SNAPSHOT)) == {"s2": 4}
    fb.corrupt_read(position=1)
    assert fb.load(FileType.SNAPSHOT, "s2") == b"k\x9apt"
    assert fb.load(FileType.SNAPSHOT, "s2") == b"kept"
