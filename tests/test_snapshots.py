"""Naming and listing snapshots: id prefixes, latest, latest:tag, @TIME, filters, diff, stats, ls."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import write
from weightvault.api import Repository
from weightvault.errors import SnapshotNotFoundError, UsageError

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def _src(tmp_path: Path, name: str = "run") -> Path:
    src = tmp_path / "src" / name
    write(src / "a.txt", name.encode())
    return src


def test_id_prefix_full_short_and_case(repo: Repository, tmp_path: Path) -> None:
    snap = repo.backup([_src(tmp_path)]).snapshot
    assert len(snap.id) == 64
    assert repo.find_snapshot(snap.id).id == snap.id
    assert repo.find_snapshot(snap.short_id).id == snap.id
    assert repo.find_snapshot(snap.short_id.upper()).id == snap.id


def test_ambiguous_and_unknown_prefix(repo: Repository, tmp_path: Path) -> None:
    src = _src(tmp_path)
    by_first: dict[str, list[str]] = {}
    for i in range(17):  # 16 hex digits: a shared first digit is guaranteed by the 17th
        sid = repo.backup([src], tags=[f"i={i}"], time=T0 + timedelta(minutes=i)).snapshot.id
        by_first.setdefault(sid[0], []).append(sid)
        if len(by_first[sid[0]]) > 1:
            break
    shared = next(c for c, ids in by_first.items() if len(ids) > 1)
    with pytest.raises(UsageError, match="ambiguous") as ei:
        repo.find_snapshot(shared)
    assert ei.value.exit_code == 2
    a, b = by_first[shared][:2]
    common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert repo.find_snapshot(a[: common + 1]).id == a
    unused = next(c for c in "0123456789abcdef" if c not in by_first)
    with pytest.raises(SnapshotNotFoundError) as nf:
        repo.find_snapshot(unused)
    assert nf.value.exit_code == 14
    with pytest.raises(UsageError):
        repo.find_snapshot("not-hex")
    with pytest.raises(UsageError):
        repo.find_snapshot("")


def test_latest_is_by_time_not_by_creation_order(repo: Repository, tmp_path: Path) -> None:
    src = _src(tmp_path)
    newest = repo.backup([src], tags=["run=exp7"], time=T0 + timedelta(hours=2)).snapshot
    older = repo.backup([src], tags=["run=exp7", "step=100"], time=T0 + timedelta(hours=1)).snapshot
    other = repo.backup([src], tags=["run=exp8"], time=T0).snapshot
    assert repo.find_snapshot("latest").id == newest.id
    assert repo.find_snapshot("latest:run=exp7").id == newest.id
    assert repo.find_snapshot("latest:step=100").id == older.id
    assert repo.find_snapshot("latest:run=exp8").id == other.id
    assert [s.id for s in repo.snapshots()] == [other.id, older.id, newest.id]
    with pytest.raises(SnapshotNotFoundError):
        repo.find_snapshot("latest:run=nope")


def test_latest_in_empty_repository(repo: Repository) -> None:
    with pytest.raises(SnapshotNotFoundError):
        repo.find_snapshot("latest")


def test_at_time(repo: Repository, tmp_path: Path) -> None:
    src = _src(tmp_path)
    ids = [repo.backup([src], time=T0 + timedelta(hours=h)).snapshot.id for h in range(3)]  # 10:00 11:00 12:00
    assert repo.find_snapshot("@2026-01-01T11:30").id == ids[1]
    assert repo.find_snapshot("@2026-01-01T11:00").id == ids[1]  # at or before
    assert repo.find_snapshot("@2026-01-01T10:59:59").id == ids[0]
    assert repo.find_snapshot("@2026-01-02").id == ids[2]
    assert repo.find_snapshot("@2026-01-01T13:30+02:00").id == ids[1]  # 11:30 UTC
    assert repo.find_snapshot("@2026-01-01T11:30:00Z").id == ids[1]
    with pytest.raises(SnapshotNotFoundError):
        repo.find_snapshot("@2026-01-01T09:59")
    with pytest.raises(UsageError):
        repo.find_snapshot("@yesterday-ish")


def test_times_with_and_without_offset_mix(repo: Repository, tmp_path: Path) -> None:
    """A naive backup time is UTC; offsets are converted; listing and @TIME keep working."""
    src = _src(tmp_path)
    naive = repo.backup([src], time=datetime(2026, 1, 1, 10, 0)).snapshot
    shifted = repo.backup([src], time=datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=2)))).snapshot
    assert naive.datetime == T0
    assert shifted.datetime == T0 + timedelta(hours=1)
    assert [s.id for s in repo.snapshots()] == [naive.id, shifted.id]
    assert repo.find_snapshot("@2026-01-01T10:30").id == naive.id
    assert repo.find_snapshot("latest").id == shifted.id


def test_snapshot_filters(repo: Repository, tmp_path: Path) -> None:
    a, b = _src(tmp_path, "a"), _src(tmp_path, "b")
    s1 = repo.backup([a], tags=["run=exp7", "best"], host="gpu1", time=T0).snapshot
    s2 = repo.backup([b], tags=["run=exp7"], host="gpu2", time=T0 + timedelta(minutes=1)).snapshot
    s3 = repo.backup([a, b], tags=["run=exp8"], host="gpu1", time=T0 + timedelta(minutes=2)).snapshot

    def ids(**kw: object) -> list[str]:
        return [s.id for s in repo.snapshots(**kw)]  # type: ignore[arg-type]

    assert ids() == [s1.id, s2.id, s3.id]
    assert ids(tags=["run=exp7"]) == [s1.id, s2.id]
    assert ids(tags=["run=exp7", "best"]) == [s1.id]  # every tag must be present
    assert ids(tags=["best", "run=exp8"]) == []
    assert ids(paths=[str(a)]) == [s1.id, s3.id]
    assert ids(paths=[str(b), "/nowhere"]) == [s2.id, s3.id]  # any path may match
    assert ids(host="gpu1") == [s1.id, s3.id]
    assert ids(host="gpu1", tags=["run=exp8"], paths=[str(b)]) == [s3.id]
    assert s1.tag_dict() == {"run": "exp7"}
    assert sorted(s3.paths) == sorted([str(a), str(b)])


def test_diff_reports_each_kind_of_change(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src" / "run"
    write(src / "keep.bin", b"k" * 1000)
    write(src / "mod.bin", b"old content")
    write(src / "same_size.bin", b"aaaa")
    write(src / "gone.bin", b"g" * 300)
    write(src / "meta.bin", b"m")
    write(src / "touched.bin", b"t")
    write(src / "becomes_link", b"was a file")
    write(src / "sub" / "deep.bin", b"d")
    (src / "link").symlink_to("keep.bin")
    os.utime(src / "sub", ns=(1, 1))
    snap_a = repo.backup([src], time=T0).snapshot

    write(src / "mod.bin", b"new, longer content")
    write(src / "same_size.bin", b"bbbb")
    (src / "gone.bin").unlink()
    (src / "meta.bin").chmod(0o600)
    st = os.stat(src / "touched.bin")
    os.utime(src / "touched.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (src / "becomes_link").unlink()
    (src / "becomes_link").symlink_to("keep.bin")
    (src / "link").unlink()
    (src / "link").symlink_to("mod.bin")
    write(src / "new.bin", b"n" * 500)
    os.utime(src / "sub", ns=(1, 1))  # sub/ itself is unchanged
    snap_b = repo.backup([src], time=T0 + timedelta(hours=1)).snapshot

    d = repo.diff(snap_a.id, snap_b.id)
    got = {e.path: e.change for e in d.entries}
    assert got == {
        "run": "U",  # directory mtime changed (entries added/removed)
        "run/mod.bin": "M",
        "run/same_size.bin": "M",
        "run/gone.bin": "-",
        "run/meta.bin": "U",
        "run/touched.bin": "U",
        "run/becomes_link": "T",
        "run/link": "M",
        "run/new.bin": "+",
    }
    by_path = {e.path: e for e in d.entries}
    assert (by_path["run/mod.bin"].size_before, by_path["run/mod.bin"].size_after) == (11, 19)
    assert by_path["run/new.bin"].type == "file" and by_path["run/new.bin"].size_after == 500
    assert by_path["run/gone.bin"].size_before == 300
    assert by_path["run/becomes_link"].type == "symlink"
    assert d.counts() == {"+": 1, "-": 1, "M": 3, "T": 1, "U": 3}
    assert d.added_bytes == 500 + 8
    assert d.removed_bytes == 300
    assert repo.diff(snap_b.id, snap_b.id).entries == []
    reverse = {e.path: e.change for e in repo.diff(snap_b.id, snap_a.id).entries}
    assert reverse["run/new.bin"] == "-" and reverse["run/gone.bin"] == "+"


def test_stats_numbers_are_consistent(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src" / "run"
    rng = random.Random(20261203)  # fixed bytes: random ones leave a 3 MiB file in one chunk about 1 run in 16
    shared = rng.randbytes(3 * 1024 * 1024)
    unique = rng.randbytes(700 * 1024)
    write(src / "w1.bin", shared)
    write(src / "w2.bin", shared)
    write(src / "u.bin", unique)
    write(src / "empty.bin", b"")
    s1 = repo.backup([src], time=T0).snapshot

    st = repo.stats(s1.id)
    nodes = [n for n in repo.ls(s1.id) if n.type == "file"]
    blobs = {b for n in nodes for b in n.blobs}
    assert (st.snapshots, st.files) == (1, 4)
    assert st.raw_bytes == 2 * len(shared) + len(unique)
    assert st.unique_bytes == len(shared) + len(unique)
    assert st.blobs == len(blobs) >= 3  # the 3 MiB file is cut in several chunks
    assert st.dedup_ratio == pytest.approx(st.raw_bytes / st.unique_bytes)
    assert st.compression_ratio == pytest.approx(st.unique_bytes / st.stored_bytes)
    assert st.stored_fraction == pytest.approx(st.stored_bytes / st.raw_bytes)
    # random data does not compress: stored is unique plus per-blob envelope overhead
    assert st.unique_bytes <= st.stored_bytes <= st.unique_bytes + 100 * st.blobs
    assert st.repository_bytes >= st.stored_bytes and st.packs >= 1
    js = st.to_json()
    assert js["dedup_ratio"] == round(st.dedup_ratio, 4) and js["raw_bytes"] == st.raw_bytes

    s2 = repo.backup([src], time=T0 + timedelta(hours=1)).snapshot  # identical: nothing new
    assert s2.summary["stored_bytes_added"] < 4096
    total = repo.stats()
    assert (total.snapshots, total.files) == (2, 8)
    assert total.raw_bytes == 2 * st.raw_bytes
    assert (total.unique_bytes, total.stored_bytes, total.blobs) == (st.unique_bytes, st.stored_bytes, st.blobs)
    assert total.dedup_ratio == pytest.approx(2 * st.dedup_ratio)


def test_ls_with_sub_path(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src" / "run"
    write(src / "sub" / "a.bin", b"a")
    write(src / "sub" / "inner" / "b.bin", b"b")
    write(src / "subway" / "c.bin", b"c")
    write(src / "top.bin", b"t")
    repo.backup([src])
    all_paths = [n.path for n in repo.ls("latest")]
    assert all_paths == [b"run", b"run/sub", b"run/sub/a.bin", b"run/sub/inner", b"run/sub/inner/b.bin",
                         b"run/subway", b"run/subway/c.bin", b"run/top.bin"]  # depth-first, sorted
    assert [n.path for n in repo.ls("latest", "run/sub")] == [
        b"run/sub", b"run/sub/a.bin", b"run/sub/inner", b"run/sub/inner/b.bin"]
    assert [n.path for n in repo.ls("latest", "/run/sub/")] == [
        b"run/sub", b"run/sub/a.bin", b"run/sub/inner", b"run/sub/inner/b.bin"]
    only = repo.ls("latest", "run/top.bin")
    assert [(n.path, n.type, n.size) for n in only] == [(b"run/top.bin", "file", 1)]
    assert repo.ls("latest", "run/missing") == []
