"""Large objects written past the page cache (backends.direct_io) and the CLI's allocator settings."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightvault.backends import direct_io
from weightvault.backends.base import FileType
from weightvault.backends.direct_io import DIRECT_MIN, open_for_write, write_all
from weightvault.backends.local import LocalBackend
from weightvault.errors import ObjectExistsError

SIZES = [0, 1, 4095, DIRECT_MIN - 1, DIRECT_MIN, DIRECT_MIN + 1, 4 * DIRECT_MIN + 4095, 9 * DIRECT_MIN + 17]


def _write(path: Path, data: bytes) -> bool:
    fd, direct = open_for_write(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, len(data))
    try:
        write_all(fd, data, direct)
        os.fsync(fd)
    finally:
        os.close(fd)
    return direct


def _direct_supported(directory: Path) -> bool:
    if not direct_io.O_DIRECT:
        return False
    try:
        os.close(os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | direct_io.O_DIRECT, 0o600))
    except OSError:
        return False
    finally:
        (directory / "probe").unlink(missing_ok=True)
    return True


@pytest.mark.parametrize("size", SIZES)
def test_every_size_round_trips_and_large_ones_go_direct(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    direct = _write(tmp_path / "obj", data)
    assert (tmp_path / "obj").read_bytes() == data
    assert direct == (size >= DIRECT_MIN and _direct_supported(tmp_path))


def test_a_file_system_without_direct_io_gets_buffered_writes() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm (tmpfs) here")
    path = shm / f"wv-direct-{os.getpid()}"
    data = os.urandom(3 * DIRECT_MIN + 5)
    try:
        direct = _write(path, data)
        assert path.read_bytes() == data
        assert direct is _direct_supported(shm)  # tmpfs refuses O_DIRECT on older kernels only
    finally:
        path.unlink(missing_ok=True)


def test_an_alignment_refusal_mid_file_falls_back_to_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses a direct write (EINVAL) after accepting some gets the rest
    buffered on the same descriptor, from exactly where the direct writes stopped."""
    if not _direct_supported(tmp_path):
        pytest.skip("this file system has no O_DIRECT")
    real_write = os.write
    calls = {"n": 0}

    def refusing_second(fd: int, buf: object) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, buf)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", refusing_second)
    data = os.urandom(9 * DIRECT_MIN + 123)
    assert _write(tmp_path / "obj", data)
    monkeypatch.undo()
    assert (tmp_path / "obj").read_bytes() == data
    assert calls["n"] >= 3


def test_other_write_errors_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int, buf: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", failing)
    with pytest.raises(OSError) as info:
        _write(tmp_path / "obj", os.urandom(2 * DIRECT_MIN))
    assert info.value.errno == errno.EIO


def test_local_backend_saves_large_objects_intact(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    backend.create()
    data = os.urandom(5 * DIRECT_MIN + 1000)
    backend.save(FileType.PACK, "ab" * 32, data)
    assert backend.load(FileType.PACK, "ab" * 32) == data
    assert backend.load(FileType.PACK, "ab" * 32, DIRECT_MIN - 7, 4096 + 13) == data[DIRECT_MIN - 7 : DIRECT_MIN + 4102]
    backend.save(FileType.LOCK, "cd" * 32, data, create_only=True)
    with pytest.raises(ObjectExistsError):
        backend.save(FileType.LOCK, "cd" * 32, b"other", create_only=True)
    assert backend.load(FileType.LOCK, "cd" * 32) == data
    assert not [p for p in (tmp_path / "repo").rglob(".tmp-*")]


def test_the_cli_tunes_glibc_malloc_and_the_library_does_not() -> None:
    code = (
        "import weightvault.api, sys\n"
        "assert 'weightvault.cli.allocator' not in sys.modules\n"
        "from weightvault.cli.allocator import tune_allocator\n"
        "print(tune_allocator())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import platform

    assert out == str(platform.libc_ver()[0] == "glibc")
