"""A restore removes the temporary files an interrupted restore left, and only those."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import write
from weightvault import api
from weightvault.ops import restore_temps
from weightvault.ops.restore_temps import TMP_PREFIX, is_stale, tmp_name


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _name_of(pid: int, host: bytes | None = None, boot: bytes | None = None) -> bytes:
    parts = tmp_name()[len(TMP_PREFIX):].split(b"-")
    parts[2] = str(pid).encode()
    if host is not None:
        parts[0] = host
    if boot is not None:
        parts[1] = boot
    return TMP_PREFIX + b"-".join(parts)


def test_which_temporary_names_are_stale() -> None:
    assert not is_stale(tmp_name())  # this process: alive
    assert is_stale(_name_of(_dead_pid()))
    assert not is_stale(_name_of(1))  # init: alive
    assert is_stale(_name_of(os.getpid(), boot=b"00000000"))  # an earlier boot
    assert not is_stale(_name_of(_dead_pid(), host=b"ffffffff"))  # another host's: left alone
    assert not is_stale(b".wvtmp-0123456789ab-7")  # an older form, or someone else's file
    assert not is_stale(b"model.safetensors")


def test_a_rerun_restore_removes_what_an_interrupted_one_left(repo: api.Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    write(src / "a" / "w.bin", b"w" * 5000)
    write(src / "log.txt", b"log")
    snap = repo.backup([src]).snapshot
    out = tmp_path / "out"
    repo.restore(snap.id, out)
    dead = _name_of(_dead_pid())
    stale = [out / "run" / os.fsdecode(dead), out / "run" / "a" / os.fsdecode(dead + b"1"), out / os.fsdecode(dead)]
    live = out / "run" / os.fsdecode(_name_of(1))
    foreign = out / "run" / "a" / os.fsdecode(_name_of(_dead_pid(), host=b"ffffffff"))
    for p in [*stale, live, foreign]:
        p.write_bytes(b"half a file")
    (out / "run" / "a" / "w.bin").unlink()
    repo.restore(snap.id, out, overwrite="if-changed")
    assert (out / "run" / "a" / "w.bin").read_bytes() == b"w" * 5000
    assert not any(p.exists() for p in stale)
    assert live.exists() and foreign.exists()


def test_sweep_never_fails_the_restore(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / os.fsdecode(_name_of(_dead_pid()))).mkdir()  # a directory of that name: not ours
        assert restore_temps.sweep(fd) == 0
    finally:
        os.close(fd)
