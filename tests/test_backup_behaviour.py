"""Backup behaviour users rely on: dedupe, incremental reads, files changing while read, unreadable
and special files, excludes, CACHEDIR.TAG, and source validation."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Node, Repository
from weightvault.chunking.cdc import CdcSplitter
from weightvault.chunking.registry import Chunk, ChunkerParams, SplitterRegistry
from weightvault.errors import UsageError
from weightvault.ops import backup as backup_op
from weightvault.types import BlobType

MiB = 1024 * 1024


def _data_blobs(repo: Repository) -> set[bytes]:
    return {e.blob.blob_id for e in repo._repo.index.entries() if e.blob.type == BlobType.DATA}


def _files(repo: Repository, spec: str = "latest") -> dict[str, Node]:
    return {os.fsdecode(n.path): n for n in repo.ls(spec) if n.type == "file"}


# -- dedupe and incremental ----------------------------------------------------------------------


def test_identical_content_is_stored_once(repo: Repository, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    src = tmp_path / "run"
    write(src / "a.bin", data)
    write(src / "copy" / "b.bin", data)
    res = repo.backup([src])
    s = res.snapshot.summary
    assert s["files"] == 2 and s["bytes"] == 2 * len(data)
    assert len(data) <= s["stored_bytes_added"] < 1.1 * len(data)
    nodes = {n.path: n for n in repo.ls("latest") if n.type == "file"}
    assert nodes[b"run/a.bin"].blobs == nodes[b"run/copy/b.bin"].blobs
    assert len(_data_blobs(repo)) == len(set(nodes[b"run/a.bin"].blobs))


@pytest.fixture
def three_files(tmp_path: Path) -> Path:
    src = tmp_path / "run"
    for name in ("w1.bin", "w2.bin", "w3.bin"):
        write(src / name, os.urandom(8 * MiB))
    return src


def test_incremental_stores_only_changed_chunks(repo: Repository, three_files: Path) -> None:
    first = repo.backup([three_files]).snapshot.summary
    assert first["files_new"] == 3 and first["bytes_read"] == 24 * MiB
    assert first["stored_bytes_added"] >= 24 * MiB
    before = {p: n.blobs for p, n in _files(repo).items()}

    with open(three_files / "w2.bin", "r+b") as f:
        f.seek(4 * MiB)
        f.write(os.urandom(100))
    second = repo.backup([three_files])
    s = second.snapshot.summary
    assert (s["files_new"], s["files_changed"], s["files_unmodified"]) == (0, 1, 2)
    assert s["bytes_read"] == 8 * MiB  # only the changed file was read
    # one 100-byte edit touches one or two chunks (avg 1 MiB, max 8 MiB) plus the manifest
    assert 0 < s["stored_bytes_added"] < 4 * MiB
    assert second.snapshot.parent == repo.snapshots()[0].id
    after = {p: n.blobs for p, n in _files(repo).items()}
    assert after["run/w1.bin"] == before["run/w1.bin"] and after["run/w3.bin"] == before["run/w3.bin"]
    kept = set(after["run/w2.bin"]) & set(before["run/w2.bin"])
    assert kept and len(kept) >= len(before["run/w2.bin"]) - 3  # the other chunks were deduplicated


def test_unchanged_files_not_reread_unless_forced(repo: Repository, three_files: Path, tmp_path: Path) -> None:
    repo.backup([three_files])
    blobs = _data_blobs(repo)
    s = repo.backup([three_files]).snapshot.summary
    assert s["files_unmodified"] == 3 and s["bytes_read"] == 0
    assert s["blobs_added"] == 0 and s["stored_bytes_added"] == 0  # even the manifest is identical

    forced = repo.backup([three_files], force=True).snapshot
    f = forced.summary
    assert f["files_unmodified"] == 3 and f["bytes_read"] == 24 * MiB  # re-read, found identical
    assert f["files_new"] == 0 and forced.parent is not None
    assert f["blobs_added"] == 0 and _data_blobs(repo) == blobs
    out = tmp_path / "out"
    repo.restore(forced.id, out, verify=True)
    for name in ("w1.bin", "w2.bin", "w3.bin"):
        assert (out / "run" / name).read_bytes() == (three_files / name).read_bytes()


def test_touched_file_is_reread_but_adds_no_data(repo: Repository, three_files: Path) -> None:
    repo.backup([three_files])
    blobs = _data_blobs(repo)
    st = os.stat(three_files / "w1.bin")
    os.utime(three_files / "w1.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    res = repo.backup([three_files])
    s = res.snapshot.summary
    assert s["files_changed"] == 1 and s["files_unmodified"] == 2
    assert s["bytes_read"] == 8 * MiB
    assert _data_blobs(repo) == blobs  # only the manifest is new
    assert s["blobs_added"] <= 1
    node = _files(repo)["run/w1.bin"]
    assert node.mtime_ns == st.st_mtime_ns + 5 * 10**9


def test_file_replaced_with_same_size_and_mtime_is_reread(repo: Repository, tmp_path: Path) -> None:
    """A new inode (e.g. an atomic rename by the trainer) is never taken for the old file."""
    src = tmp_path / "run"
    write(src / "ckpt.bin", b"A" * 4096)
    repo.backup([src])
    st = os.stat(src / "ckpt.bin")
    write(src / "ckpt.tmp", b"B" * 4096)
    os.utime(src / "ckpt.tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(src / "ckpt.tmp", src / "ckpt.bin")
    s = repo.backup([src]).snapshot.summary
    assert s["files_changed"] == 1 and s["bytes_read"] == 4096
    out = tmp_path / "out"
    repo.restore("latest", out)
    assert (out / "run" / "ckpt.bin").read_bytes() == b"B" * 4096


# -- files that change while being read ------------------------------------------------------------


class AppendingSplitter:
    """Real CDC splitting, but appends to the file after the first chunk, ``times`` times."""

    name = "appending"

    def __init__(self, path: Path, times: int) -> None:
        self.path, self.times, self.calls = path, times, 0
        self.inner = CdcSplitter()

    def accepts(self, name: bytes, head: bytes) -> bool:
        return name == os.fsencode(self.path.name)

    def split(self, stream: BinaryIO, params: ChunkerParams) -> Iterator[Chunk]:
        self.calls += 1
        for i, chunk in enumerate(self.inner.split(stream, params)):
            if i == 0 and self.calls <= self.times:
                with open(self.path, "ab") as f:
                    f.write(os.urandom(64 * 1024))
            yield chunk


def _engine_backup(repo: Repository, src: Path, splitter: AppendingSplitter) -> backup_op.BackupResult:
    reg = SplitterRegistry(CdcSplitter())
    reg.register(splitter)
    engine = repo._repo
    with engine.lock():
        engine.load_index()
        return backup_op.backup(engine, [str(src)], backup_op.BackupOptions(registry=reg))


def _restored_sha(repo: Repository, out: Path, rel: str) -> str:
    repo.restore("latest", out, verify=True)
    return hashlib.sha256((out / rel).read_bytes()).hexdigest()


def test_file_changing_once_is_reread(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    grow = write(src / "growing.bin", os.urandom(2 * MiB))
    write(src / "steady.bin", b"steady")
    splitter = AppendingSplitter(grow, times=1)
    res = _engine_backup(repo, src, splitter)
    assert splitter.calls == 2  # read, noticed the change, read again
    assert res.warnings == [] and res.errors == []
    final = grow.read_bytes()
    node = _files(repo)["run/growing.bin"]
    assert node.size == len(final) == 2 * MiB + 64 * 1024
    assert node.sha256 == hashlib.sha256(final).hexdigest()
    s = res.snapshot.summary
    assert s["bytes_read"] > len(final) + 2 * MiB - 1  # both reads counted
    assert _restored_sha(repo, tmp_path / "out", "run/growing.bin") == node.sha256


def test_file_that_keeps_changing_is_stored_consistently_with_a_warning(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    grow = write(src / "growing.bin", os.urandom(1 * MiB))
    splitter = AppendingSplitter(grow, times=1000)
    res = _engine_backup(repo, src, splitter)
    assert splitter.calls == backup_op.MAX_REREADS + 1
    assert [p for p, _ in res.warnings] == ["run/growing.bin"]
    assert "changed while being read" in res.warnings[0][1]
    assert res.errors == []
    node = _files(repo)["run/growing.bin"]
    restored_sha = _restored_sha(repo, tmp_path / "out", "run/growing.bin")
    assert restored_sha == node.sha256
    restored = (tmp_path / "out" / "run" / "growing.bin").read_bytes()
    assert len(restored) == node.size
    assert grow.read_bytes().startswith(restored)  # the bytes of one real read, not a mixture
    assert repo.check(read_data=True).ok


# -- unreadable and special files ------------------------------------------------------------------

# Imports happen as root (the interpreter may live where nobody can read it), then the child drops
# to nobody before opening the repository.
_CHILD = """
import json, os, sys
from weightvault.api import Repository
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
r = Repository.open(sys.argv[1], os.environ["WV_TEST_PASSWORD"])
res = r.backup([sys.argv[2]])
print(json.dumps({"id": res.snapshot.id, "errors": res.errors, "uid": os.getuid()}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="wv-unpriv-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def test_unreadable_files_are_reported_and_skipped(shared_dir: Path) -> None:
    repo_path = shared_dir / "repo"
    Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    src = shared_dir / "run"
    write(src / "ok.bin", b"readable")
    write(src / "secret.bin", b"top secret")
    write(src / "locked" / "inner.bin", b"hidden")
    write(src / "zz_after.bin", b"after")
    for d in (src, src / "locked"):
        d.chmod(0o755)
    for f in (src / "ok.bin", src / "zz_after.bin", src / "locked" / "inner.bin"):
        f.chmod(0o644)
    (src / "secret.bin").chmod(0o600)
    (src / "locked").chmod(0o700)

    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(repo_path):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.chown(name, 65534, 65534)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(shared_dir), "USER": "nobody",
               "WV_TEST_PASSWORD": PASSWORD}
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(repo_path), str(src)], capture_output=True,
                              text=True, env=env, cwd=shared_dir, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["uid"] == 65534
        errors = {p: reason for p, reason in out["errors"]}
        snap_id = out["id"]
    else:  # pragma: no cover - CI runs as root; chmod 000 works for ordinary users
        (src / "secret.bin").chmod(0)
        (src / "locked").chmod(0)
        res = Repository.open(repo_path, PASSWORD).backup([src])
        errors = dict(res.errors)
        snap_id = res.snapshot.id
        (src / "locked").chmod(0o700)

    assert set(errors) == {"run/secret.bin", "run/locked"}
    assert "ermission" in errors["run/secret.bin"]
    assert "cannot list directory" in errors["run/locked"]
    repo = Repository.open(repo_path, PASSWORD)
    assert [s.id for s in repo.snapshots()] == [snap_id]  # committed despite the errors
    snap = repo.find_snapshot(snap_id)
    assert snap.summary["errors"] == 2
    paths = {os.fsdecode(n.path) for n in repo.ls(snap_id)}
    assert paths == {"run", "run/ok.bin", "run/locked", "run/zz_after.bin"}
    out_dir = shared_dir / "out"
    repo.restore(snap_id, out_dir, verify=True)
    assert (out_dir / "run" / "ok.bin").read_bytes() == b"readable"
    assert (out_dir / "run" / "zz_after.bin").read_bytes() == b"after"
    assert not (out_dir / "run" / "secret.bin").exists()
    assert repo.check(read_data=True).ok


def test_fifo_is_skipped_with_a_warning(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    write(src / "a.bin", b"a")
    os.mkfifo(src / "pipe")  # opening it for reading would block forever
    res = repo.backup([src])
    assert res.errors == []
    assert [p for p, _ in res.warnings] == ["run/pipe"]
    assert "special file" in res.warnings[0][1]
    assert {os.fsdecode(n.path) for n in repo.ls("latest")} == {"run", "run/a.bin"}


# -- selection -------------------------------------------------------------------------------------


def test_excludes(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    for rel in ("model.bin", "scratch.tmp", "logs/train.log", "logs/deep/x.log", "data/a.bak", "data/keep.bin",
                "data/sub/b.bak", "data/sub/c.bin", "nested/logs/kept.txt"):
        write(src / rel, rel.encode())
    repo.backup([src], excludes=["*.tmp", "run/logs", "run/data/*.bak"])
    got = {os.fsdecode(n.path) for n in repo.ls("latest")}
    assert got == {"run", "run/model.bin", "run/data", "run/data/keep.bin", "run/data/sub", "run/data/sub/b.bak",
                   "run/data/sub/c.bin", "run/nested", "run/nested/logs", "run/nested/logs/kept.txt"}
    repo.backup([src], excludes=["run/**/*.bak", "logs/"])  # a name without "/" matches at any depth
    got = {os.fsdecode(n.path) for n in repo.ls("latest")}
    assert got == {"run", "run/model.bin", "run/scratch.tmp", "run/data", "run/data/keep.bin", "run/data/sub",
                   "run/data/sub/c.bin", "run/nested"}


def test_exclude_caches(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    write(src / "model.bin", b"m")
    write(src / "cache" / "CACHEDIR.TAG", b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n")
    write(src / "cache" / "blob.bin", b"cached")
    write(src / "cache" / "sub" / "x.bin", b"cached")
    write(src / "notcache" / "CACHEDIR.TAG", b"Signature: not the right one\n")
    write(src / "notcache" / "keep.bin", b"keep")
    repo.backup([src], exclude_caches=True)
    got = {os.fsdecode(n.path) for n in repo.ls("latest")}
    assert got == {"run", "run/model.bin", "run/cache", "run/cache/CACHEDIR.TAG", "run/notcache",
                   "run/notcache/CACHEDIR.TAG", "run/notcache/keep.bin"}
    repo.backup([src])  # without the option the cache is backed up
    assert "run/cache/sub/x.bin" in {os.fsdecode(n.path) for n in repo.ls("latest")}


def test_sources_with_the_same_name_are_refused(repo: Repository, tmp_path: Path) -> None:
    write(tmp_path / "a" / "run" / "x", b"1")
    write(tmp_path / "b" / "run" / "y", b"2")
    with pytest.raises(UsageError, match="share the name") as ei:
        repo.backup([tmp_path / "a" / "run", tmp_path / "b" / "run"])
    assert ei.value.exit_code == 2
    assert repo.snapshots() == []
    res = repo.backup([tmp_path / "a" / "run", tmp_path / "a" / "run" / ".." / "run"])  # same path twice is fine
    assert res.snapshot.paths == [str(tmp_path / "a" / "run")]


def test_missing_sources_are_listed_and_all_missing_is_refused(repo: Repository, tmp_path: Path) -> None:
    write(tmp_path / "run" / "x", b"1")
    with pytest.raises(UsageError, match=r"nope, .*gone do not exist"):
        repo.backup([tmp_path / "nope", tmp_path / "gone"])
    with pytest.raises(UsageError):
        repo.backup([])
    assert repo.snapshots() == []
    res = repo.backup([tmp_path / "run", tmp_path / "nope"])
    assert res.errors == [(str(tmp_path / "nope"), "does not exist")]
    assert res.snapshot.paths == [str(tmp_path / "run")]


def test_single_file_and_several_sources(repo: Repository, tmp_path: Path) -> None:
    write(tmp_path / "ckpt.pt", b"weights")
    write(tmp_path / "cfg" / "train.yaml", b"lr: 1")
    snap = repo.backup([tmp_path / "ckpt.pt", tmp_path / "cfg"]).snapshot
    assert sorted(snap.paths) == sorted([str(tmp_path / "ckpt.pt"), str(tmp_path / "cfg")])
    assert {os.fsdecode(n.path) for n in repo.ls("latest")} == {"ckpt.pt", "cfg", "cfg/train.yaml"}
    out = tmp_path / "out"
    repo.restore("latest", out)
    assert (out / "ckpt.pt").read_bytes() == b"weights"
    assert (out / "cfg" / "train.yaml").read_bytes() == b"lr: 1"
