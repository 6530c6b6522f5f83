"""The simulated power cut (weightvault.testing.powercut): what it drops, and that it catches a
missing fsync. The campaign's ``cut-*`` modes use it on real child processes (test_torture.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.testing.powercut import JOURNAL_DIR, PowerCutTracer, apply_power_cut

PACK = "ab" + "c" * 62
INDEX = "d" * 64


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[Path, LocalBackend, PowerCutTracer]]:
    backend = LocalBackend(str(tmp_path / "repo"))
    backend.create()
    tracer = PowerCutTracer(tmp_path)
    tracer.install()
    try:
        yield tmp_path, backend, tracer
    finally:
        if tracer._orig:
            tracer.uninstall()


def _cut(root: Path, tracer: PowerCutTracer) -> dict[str, int]:
    tracer.uninstall()  # in the campaign: tracer.crash() in the child, then this in the parent
    return apply_power_cut(root)


def test_a_returned_save_survives_and_the_journal_goes(repo: tuple[Path, LocalBackend, PowerCutTracer]) -> None:
    root, b, tracer = repo
    b.save(FileType.PACK, PACK, b"x" * 100_000)
    b.save(FileType.INDEX, INDEX, b"index")
    b.remove(FileType.INDEX, INDEX)
    dropped = _cut(root, tracer)
    assert dropped["records"] > 10 and dropped["entries_undone"] == 0 and dropped["files_cut"] == 0
    assert b.load(FileType.PACK, PACK) == b"x" * 100_000
    assert [n for n, _ in b.list(FileType.INDEX)] == []
    assert not (root / JOURNAL_DIR).exists()


def test_unsynced_data_and_entries_are_dropped(repo: tuple[Path, LocalBackend, PowerCutTracer]) -> None:
    root, b, tracer = repo
    b.save(FileType.INDEX, INDEX, b"kept")
    b.save(FileType.CONFIG, "config", b"original")
    (root / "repo" / "loose").write_bytes(b"never synced")  # new entry, directory never fsynced
    with open(root / "repo" / "config", "wb") as f:  # an existing file rewritten without fsync
        f.write(b"rewritten")
    os.replace(root / "repo" / "config", root / "repo" / "keys" / "moved")  # renamed, not synced
    os.unlink(root / "repo" / "index" / INDEX)  # unlinked, directory not fsynced
    (root / "repo" / "newdir").mkdir()
    dropped = _cut(root, tracer)
    assert dropped["entries_undone"] == 4 and dropped["files_cut"] == 1
    assert not (root / "repo" / "loose").exists() and not (root / "repo" / "newdir").exists()
    assert not (root / "repo" / "keys" / "moved").exists()
    assert (root / "repo" / "config").read_bytes() == b""  # rewritten with O_TRUNC, never synced: empty
    assert b.load(FileType.INDEX, INDEX) == b"kept"


def test_a_save_without_its_directory_fsync_is_lost(repo: tuple[Path, LocalBackend, PowerCutTracer],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The model has teeth: a backend that forgets one fsync loses the object it said it saved."""
    import weightvault.backends.local as local

    root, b, tracer = repo
    monkeypatch.setattr(local, "_fsync_dir", lambda path: None)
    b.save(FileType.PACK, PACK, b"x" * 1000)
    assert b.load(FileType.PACK, PACK) == b"x" * 1000  # still there after a SIGKILL...
    _cut(root, tracer)
    assert [n for n, _ in b.list(FileType.PACK)] == []  # ...gone after a power cut


def test_a_save_without_its_file_fsync_is_cut_back(repo: tuple[Path, LocalBackend, PowerCutTracer],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root, b, tracer = repo
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: None if not os.path.isdir(f"/proc/self/fd/{fd}") else real(fd))
    b.save(FileType.PACK, PACK, b"x" * 1000)
    monkeypatch.undo()
    _cut(root, tracer)
    assert b.stat(FileType.PACK, PACK) == 0  # the name survived, its data did not


def test_a_save_into_a_directory_it_had_to_make_survives(repo: tuple[Path, LocalBackend, PowerCutTracer]) -> None:
    """Found by this model: a pack directory missing (a sync tool that drops empty directories)
    was made by save without fsyncing its parent, so the pack went with it."""
    root, b, tracer = repo
    tracer.uninstall()
    shutil.rmtree(root / "repo" / "data" / "ab")
    tracer.install()
    b.save(FileType.PACK, PACK, b"x" * 1000)
    _cut(root, tracer)
    assert b.load(FileType.PACK, PACK) == b"x" * 1000


def test_init_is_durable(tmp_path: Path) -> None:
    tracer = PowerCutTracer(tmp_path)
    tracer.install()
    try:
        LocalBackend(str(tmp_path / "a" / "repo")).create()
    finally:
        tracer.uninstall()
    apply_power_cut(tmp_path)
    assert (tmp_path / "a" / "repo" / "data" / "ff").is_dir() and (tmp_path / "a" / "repo" / "keys").is_dir()
