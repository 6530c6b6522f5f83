"""Small files restored in groups (``ops.restore_file.write_group``): one task per group, blobs
coalesced into range reads across files. They must restore exactly what the per-file path does:
every byte, holes, sizes, metadata, shared blobs, and on a failure nothing under a real name that
is not complete and no temporary file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conftest import write
from weightvault.api import Repository
from weightvault.errors import VerificationError
from weightvault.ops import restore_file
from weightvault.repository.repo import Repository as Engine
from weightvault.types import BlobType


def _tree(src: Path) -> dict[str, bytes]:
    g = restore_file.GROUP_FILE
    datas: dict[str, bytes] = {
        "empty": b"",
        "zeros-small": bytes(5000),  # one all-zero chunk: a hole, the size still right
        "zeros-below-group": bytes(g - 1),
        "at-group-size": os.urandom(g),  # the per-file path
        "below-group-size": os.urandom(g - 1),
        "same-a": b"shared content " * 100,
        "sub/same-b": b"shared content " * 100,  # a blob used twice: through the cache
    }
    for i in range(3 * restore_file.GROUP_FILES + 5):  # more than one group, across directories
        datas[f"d{i % 11}/e{i % 3}/f{i}.py"] = os.urandom(i * 53 % 9000) + b"#"
    for rel, data in datas.items():
        write(src / rel, data)
    os.chmod(src / "same-a", 0o640)
    os.utime(src / "same-a", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return datas


def test_a_tree_of_small_files_restores_exactly(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    datas = _tree(src)
    repo.backup([src])
    out = tmp_path / "out"
    res = repo.restore("latest", out, verify=True)
    assert res.files == len(datas) and res.verified == len(datas)
    assert res.bytes == sum(len(d) for d in datas.values())
    for rel, data in datas.items():
        assert (out / "src" / rel).read_bytes() == data, rel
    st = os.stat(out / "src" / "same-a")
    assert st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == 1_600_000_000_123_456_789
    assert os.stat(out / "src" / "zeros-below-group").st_blocks == 0  # left as a hole
    leftovers = [p for p in out.rglob(".wvtmp-*")]
    assert leftovers == []


def test_groups_read_packs_in_few_range_reads(repo: Repository, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    n = 4 * restore_file.GROUP_FILES
    for i in range(n):
        write(src / f"f{i:04d}.txt", os.urandom(700) + b"%d" % i)
    repo.backup([src])
    loads: list[int] = []
    backend = type(repo._repo.backend)
    real = backend.load

    def counting(self: object, ftype: object, name: str, offset: int = 0, length: int | None = None) -> bytes:
        loads.append(length or 0)
        return real(self, ftype, name, offset, length)  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "load", counting)
    out = tmp_path / "out"
    repo.restore("latest", out)
    for i in range(n):
        assert (out / "src" / f"f{i:04d}.txt").read_bytes().endswith(b"%d" % i)
    # the per-file path made one read per file; a group reads its packs' spans at once
    assert len(loads) < n / 8, len(loads)


def test_a_bad_blob_in_a_group_fails_the_restore_and_leaves_no_partial_file(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    for i in range(40):
        write(src / f"f{i:02d}.txt", b"good file %d " % i * 30)
    bad = b"bad file content " * 40
    write(src / "f20-bad.txt", bad)
    real = Engine.encode_blob
    bad_id = repo._repo.key.blob_id(bad)

    def lying(self: Engine, btype: BlobType, bid: bytes, data: bytes, dtype: str | None,
              base: tuple[bytes, bytes] | None = None) -> tuple[int, bytes | bytearray]:
        if bid == bad_id:  # sealed under its true id, but other bytes: only the file hash can tell
            data = b"X" + data[1:]
        return real(self, btype, bid, data, dtype, None)

    with monkeypatch.context() as m:
        m.setattr(Engine, "encode_blob", lying)
        repo.backup([src])
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match=r"f20-bad\.txt: restored content does not match"):
        repo.restore("latest", out)
    names = sorted(p.name for p in (out / "src").iterdir())
    assert "f20-bad.txt" not in names
    assert not [n for n in names if n.startswith(".wvtmp-")]
    for name in names:  # whatever got its name is complete
        i = int(name[1:3])
        assert (out / "src" / name).read_bytes() == b"good file %d " % i * 30


def test_temporary_names_are_unique() -> None:
    names = {restore_file.tmp_name() for _ in range(10_000)}
    assert len(names) == 10_000
    assert all(n.startswith(restore_file.TMP_PREFIX) for n in names)


def test_restored_small_files_hash_like_the_source(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    datas = {f"x{i}": os.urandom(i * 997 % 70_000) for i in range(150)}
    for rel, data in datas.items():
        write(src / rel, data)
    repo.backup([src])
    nodes = {os.fsdecode(n.path): n for n in repo.ls("latest") if n.type == "file"}
    out = tmp_path / "out"
    repo.restore("latest", out)
    for rel, data in datas.items():
        got = (out / "src" / rel).read_bytes()
        assert hashlib.sha256(got).hexdigest() == nodes[f"src/{rel}"].sha256 == hashlib.sha256(data).hexdigest()
