"""copy: between repositories with other keys and chunking, incremental, verified, crash-safe."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, write
from test_delta import Model
from test_prune import Crash, CrashingBackend, digest, restored
from weightvault.api import Repository
from weightvault.backends.base import Backend, FileType
from weightvault.backends.local import LocalBackend
from weightvault.errors import IntegrityError, UsageError, WeightvaultError
from weightvault.ops.copy import copy_snapshots
from weightvault.repository.repo import Repository as Engine
from weightvault.testing.faults import FaultyBackend

OTHER = "another password entirely"
KiB = 1024


def source_repo(tmp_path: Path, versions: int = 3) -> tuple[Repository, Path, dict[str, dict[str, str]]]:
    """A repository with ``versions`` snapshots of a training run (checkpoint deltas included),
    and the digest of the run at each snapshot."""
    repo = Repository.init(tmp_path / "a", PASSWORD, kdf=FAST_KDF)
    src = tmp_path / "run"
    model = Model(layers=3)
    rng = random.Random(1)
    expect = {}
    for i in range(versions):
        model.step()
        model.save(src / "model.safetensors")
        write(src / "config.json", json.dumps({"step": i}).encode())
        write(src / f"logs/part-{i}.bin", rng.randbytes(300 * KiB))
        expect[repo.backup([src], tags=[f"step={i}"]).snapshot.id] = digest(src)
    return repo, src, expect


def other_repo(path: Path) -> Repository:
    """Another password, hence another master key, and smaller chunk sizes."""
    Engine.init(LocalBackend(path), OTHER.encode(), kdf=FAST_KDF, chunk_min=64 * KiB, chunk_avg=256 * KiB,
                chunk_max=1024 * KiB, pack_size=512 * KiB)
    return Repository.open(path, OTHER)


def test_copy_between_repositories_with_different_keys_and_chunking(tmp_path: Path) -> None:
    a, _, expect = source_repo(tmp_path)
    b = other_repo(tmp_path / "b")
    res = a.copy_to(b)
    assert [s for s, _ in res.copied] == list(expect)  # oldest first
    assert res.blobs_copied > 0 and res.packs_verified >= 1 and res.bytes_verified > 0
    for src_id, dst_id in res.copied:
        copied = b.find_snapshot(dst_id)
        assert copied.copied_from == {"repo": a.id, "snapshot": src_id}
        assert copied.tags == a.find_snapshot(src_id).tags and copied.time == a.find_snapshot(src_id).time
        assert restored(b, dst_id, tmp_path / "out") == expect[src_id]
    # parents point at the copies, and the copy is as small as the source (deltas re-encoded there)
    ids = [d for _, d in res.copied]
    assert b.find_snapshot(ids[1]).parent == ids[0]
    sa, sb = a.stats(), b.stats()
    assert sb.delta_blobs > 0 and sb.repository_bytes < 1.1 * sa.repository_bytes
    assert b.check(read_data=True).errors == []
    # nothing of the source's key material or blob ids reached the destination
    a_ids = {bytes.fromhex(p.name) for p in (tmp_path / "a" / "index").iterdir()}
    assert not a_ids & {bytes.fromhex(p.name) for p in (tmp_path / "b" / "index").iterdir()}


def test_repeated_copies_are_incremental(tmp_path: Path) -> None:
    a, src, expect = source_repo(tmp_path)
    b = other_repo(tmp_path / "b")
    first = a.copy_to(b)
    again = a.copy_to(b)
    assert again.copied == [] and sorted(again.skipped) == sorted(expect)
    assert again.bytes_read == 0 and again.blobs_copied == 0
    write(src / "config.json", b'{"step": 99}')  # only a small change
    new = a.backup([src]).snapshot.id
    third = a.copy_to(b)
    assert [s for s, _ in third.copied] == [new]
    assert third.blobs_mapped > 0  # the unchanged model and logs are known from the earlier copies
    assert third.bytes_read < 64 * KiB  # read only what changed
    assert third.bytes_read < first.bytes_read / 50
    assert restored(b, third.copied[0][1], tmp_path / "out") == digest(src)


def test_copy_of_chosen_snapshots_and_refusals(tmp_path: Path) -> None:
    a, _, expect = source_repo(tmp_path)
    b = other_repo(tmp_path / "b")
    last = list(expect)[-1]
    res = a.copy_to(b, ["latest"])
    assert [s for s, _ in res.copied] == [last]
    assert restored(b, "latest", tmp_path / "out") == expect[last]
    with pytest.raises(UsageError, match="same repository"):
        a.copy_to(Repository.open(tmp_path / "a", PASSWORD))


def _copy_through(src_path: Path, dst_backend: Backend) -> None:
    src = Engine.open(LocalBackend(src_path), PASSWORD.encode())
    dst = Engine.open(dst_backend, OTHER.encode())
    with src.lock(), dst.lock():
        copy_snapshots(src, dst, src.snapshots())


def test_a_crash_during_copy_leaves_the_destination_consistent_and_the_next_copy_reuses_uploads(
    tmp_path: Path,
) -> None:
    a, _, expect = source_repo(tmp_path)
    other_repo(tmp_path / "pristine")
    counter = CrashingBackend(LocalBackend(shutil.copytree(tmp_path / "pristine", tmp_path / "count")), at=0)
    _copy_through(tmp_path / "a", counter)
    steps = counter.count
    assert steps >= 6
    full = Repository.open(tmp_path / "count", OTHER).stats().repository_bytes
    for at in sorted({1, 2, steps // 3, steps // 2, 2 * steps // 3, steps - 2, steps - 1}):
        path = shutil.copytree(tmp_path / "pristine", tmp_path / f"crash-{at}")
        with pytest.raises(Crash):
            _copy_through(tmp_path / "a", CrashingBackend(LocalBackend(path), at))
        for lock in (path / "locks").iterdir():
            lock.unlink()
        b = Repository.open(path, OTHER)
        assert b.check().errors == []
        committed = [s.copied_from["snapshot"] for s in b.snapshots() if s.copied_from]
        for src_id in committed:  # whatever was committed before the crash is complete
            assert restored(b, b.find_snapshot(next(s.id for s in b.snapshots()
                                                    if s.copied_from and s.copied_from["snapshot"] == src_id)).id,
                            tmp_path / "out") == expect[src_id]
        res = a.copy_to(b)
        assert sorted([s for s, _ in res.copied] + res.skipped) == sorted(expect)
        for src_id, dst_id in res.copied:
            assert restored(b, dst_id, tmp_path / "out") == expect[src_id]
        assert b.check(read_data=True).errors == []
        assert b.stats().repository_bytes <= full * 1.05  # uploads before the crash were reused
        shutil.rmtree(path)


def test_a_write_that_does_not_read_back_is_never_committed(tmp_path: Path) -> None:
    _a, _, _ = source_repo(tmp_path, versions=1)
    other_repo(tmp_path / "b")
    faulty = FaultyBackend(LocalBackend(tmp_path / "b"))
    faulty.drop_write(nth=1, ftype=FileType.PACK)  # reports success, stores nothing
    with pytest.raises(WeightvaultError):
        _copy_through(tmp_path / "a", faulty)
    assert Repository.open(tmp_path / "b", OTHER).snapshots() == []


def test_corrupt_source_data_stops_the_copy(tmp_path: Path) -> None:
    a, _, _ = source_repo(tmp_path, versions=1)
    b = other_repo(tmp_path / "b")
    pack = max((p for p in (tmp_path / "a" / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        a.copy_to(b)
    assert b.snapshots() == []


def test_cli_copy(tmp_path: Path) -> None:
    _a, _, expect = source_repo(tmp_path, versions=2)
    other_repo(tmp_path / "b")
    pwfile = tmp_path / "from.pw"
    pwfile.write_text(PASSWORD + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=OTHER, HOME=str(tmp_path / "home"))

    def wv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", *args], env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    out = wv("-r", str(tmp_path / "b"), "copy", "--from", str(tmp_path / "a"), "--from-password-file", str(pwfile),
             "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [c["source"] for c in doc["copied"]] == list(expect) and doc["packs_verified"] >= 1
    again = wv("copy", "--from", str(tmp_path / "a"), "--to", str(tmp_path / "b"), "--from-password-file", str(pwfile))
    assert again.returncode == 0 and "0 snapshot(s) copied, 2 already there" in again.stdout, again.stdout
    wrong = wv("copy", "--from", str(tmp_path / "a"), "--to", str(tmp_path / "b"))  # source password is not OTHER
    assert wrong.returncode == 11, wrong.stderr
    missing = wv("copy", "--from", str(tmp_path / "nope"), "--to", str(tmp_path / "b"))
    assert missing.returncode == 10 and "--from" in missing.stderr
