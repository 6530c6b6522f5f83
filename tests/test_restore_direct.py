"""Large restored files written past the page cache (ops.restore_direct): every byte lands where
it belongs whatever the chunk sizes and holes, refusals fall back to buffered writes, and a restore
onto a file system without O_DIRECT still works."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import direct_supported, tree_digest, write
from weightvault.api import Repository
from weightvault.backends import direct_io
from weightvault.backends.direct_io import open_for_write
from weightvault.ops import restore_direct, restore_durable
from weightvault.ops.restore_direct import DirectWriter

PAGE = direct_io.ALIGN


def _write_with(path: Path, pieces: list[bytes]) -> int:
    fd, direct = open_for_write(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, direct_io.DIRECT_MIN)
    try:
        assert direct
        w = DirectWriter(fd)
        for p in pieces:
            w.add(p)
        size = w.finish()
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _piece(kind: int, size: int, seed: int) -> bytes:
    return bytes(size) if kind == 0 else (seed.to_bytes(4, "little") * (size // 4 + 1))[:size] or b"\x01"


@pytest.fixture
def small_block(monkeypatch: pytest.MonkeyPatch) -> int:
    """A staging buffer of four pages, so a short test crosses many block boundaries."""
    monkeypatch.setattr(restore_direct, "BLOCK", 4 * PAGE)
    return 4 * PAGE


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 5 * PAGE + 7), st.integers(1, 2**31)), max_size=12))
def test_any_sequence_of_pieces_and_holes_round_trips(tmp_path: Path, small_block: int,
                                                      spec: list[tuple[int, int, int]]) -> None:
    if not direct_supported(tmp_path):
        pytest.skip("this file system has no O_DIRECT")
    pieces = [_piece(kind, size, seed) for kind, size, seed in spec]
    path = tmp_path / f"f{os.urandom(4).hex()}"
    size = _write_with(path, pieces)
    expected = b"".join(pieces)
    assert size == len(expected)
    assert path.read_bytes() == expected
    path.unlink()


def test_a_large_zero_run_stays_a_hole(tmp_path: Path) -> None:
    if not direct_supported(tmp_path):
        pytest.skip("this file system has no O_DIRECT")
    head, hole, tail = os.urandom(3 * 1024 * 1024 + 5), bytes(16 * 1024 * 1024), os.urandom(1024 * 1024 + 3)
    path = tmp_path / "sparse"
    _write_with(path, [head, hole, tail, bytes(5000)])
    assert path.read_bytes() == head + hole + tail + bytes(5000)
    assert path.stat().st_blocks * 512 < len(head) + len(tail) + 2 * 1024 * 1024


def test_an_alignment_refusal_turns_the_rest_buffered(tmp_path: Path, small_block: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A direct write refused with EINVAL writes nothing; it and every later write go buffered."""
    if not direct_supported(tmp_path):
        pytest.skip("this file system has no O_DIRECT")
    real = os.pwrite
    calls = {"direct": 0}

    def refuse_second_direct(fd: int, data: memoryview, offset: int) -> int:
        import fcntl
        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct_io.O_DIRECT:
            calls["direct"] += 1
            if calls["direct"] == 2:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refuse_second_direct)
    data = os.urandom(11 * small_block + 123)
    _write_with(tmp_path / "f", [data[:5000], data[5000:]])
    assert (tmp_path / "f").read_bytes() == data
    assert calls["direct"] == 2  # after the refusal, nothing more was tried direct


def test_a_short_unaligned_write_continues_buffered(tmp_path: Path, small_block: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if not direct_supported(tmp_path):
        pytest.skip("this file system has no O_DIRECT")
    real = os.pwrite
    calls = {"n": 0}

    def short_first(fd: int, data: memoryview, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real(fd, data[:PAGE], offset) if len(data) > PAGE else real(fd, data, offset)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", short_first)
    data = os.urandom(3 * small_block + 99)
    _write_with(tmp_path / "f", [data])
    assert (tmp_path / "f").read_bytes() == data


def test_an_open_refused_after_creating_the_file_reopens_that_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Some kernels create the file, then refuse O_DIRECT: the file just created is opened
    buffered; a file that was there before (not empty) is never taken over."""
    real = os.open

    def create_then_refuse(path: object, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & direct_io.O_DIRECT:
            os.close(real(path, flags & ~direct_io.O_DIRECT, mode, dir_fd=dir_fd))  # type: ignore[arg-type]
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, mode, dir_fd=dir_fd)  # type: ignore[arg-type]

    if not direct_io.O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    monkeypatch.setattr(os, "open", create_then_refuse)
    dir_fd = real(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd, direct = open_for_write(b"new", flags, direct_io.DIRECT_MIN, dir_fd=dir_fd)
        os.write(fd, b"abc")
        os.close(fd)
        assert not direct and (tmp_path / "new").read_bytes() == b"abc"
        (tmp_path / "old").write_bytes(b"precious")
        with pytest.raises(FileExistsError):
            open_for_write(b"old", flags, direct_io.DIRECT_MIN, dir_fd=dir_fd)
        assert (tmp_path / "old").read_bytes() == b"precious"
    finally:
        os.close(dir_fd)


def _big_tree(src: Path) -> None:
    big = restore_durable.SMALL_FILE
    write(src / "model.bin", os.urandom(3 * big + 4097) + bytes(9 * 1024 * 1024) + os.urandom(big // 3))
    write(src / "tail-hole.bin", os.urandom(big + 11) + bytes(2 * big))
    write(src / "small.txt", b"hello")


def test_restore_writes_large_files_direct_and_identical(repo: Repository, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "run"
    _big_tree(src)
    repo.backup([src])
    out = tmp_path / "out"
    out.mkdir()
    used: list[int] = []
    real_init = DirectWriter.__init__

    def spy(self: DirectWriter, fd: int) -> None:
        used.append(fd)
        real_init(self, fd)

    monkeypatch.setattr(DirectWriter, "__init__", spy)
    repo.restore("latest", out)
    assert tree_digest(out / "run") == tree_digest(src)
    assert len(used) == (2 if direct_supported(out) else 0)
    assert not any(p.name.startswith(".wvtmp-") for p in out.rglob("*"))


def test_restore_onto_a_file_system_without_direct_io(repo: Repository, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm (tmpfs) here")
    src = tmp_path / "run"
    _big_tree(src)
    repo.backup([src])
    out = shm / f"wv-restore-{os.getpid()}"
    try:
        repo.restore("latest", out)
        assert tree_digest(out / "run") == tree_digest(src)
    finally:
        import shutil
        shutil.rmtree(out, ignore_errors=True)
