"""Restore cannot be turned against the user: crafted snapshots never write outside the target.

Malicious manifests are built directly with the engine (ManifestWriter + Node + save_blob), the way
an attacker who can write to a repository (or a bug in another writer) could.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import write
from weightvault.api import Repository
from weightvault.errors import RestoreConflictError, UnsafePathError
from weightvault.repository.manifest import ManifestWriter, Node
from weightvault.repository.snapshots import Snapshot
from weightvault.types import BlobType

MakeSnap = Callable[[list[Node]], str]


@pytest.fixture
def make_snapshot(repo: Repository) -> MakeSnap:
    """Commit a snapshot whose manifest is exactly ``nodes``; returns its id."""
    engine = repo._repo

    def make(nodes: list[Node]) -> str:
        w = ManifestWriter()
        for n in nodes:
            w.add(n)
        tree = w.finish(lambda data: engine.save_blob(BlobType.TREE, data)[0])
        engine.flush()
        snap = Snapshot(time="2026-01-01T00:00:00+00:00", host="attacker", user="mallory",
                        paths=["/x"], tags=[], tree=tree)
        return engine.save_snapshot(snap)

    return make


@pytest.fixture
def file_node(repo: Repository) -> Callable[[bytes, bytes], Node]:
    engine = repo._repo

    def make(path: bytes, data: bytes) -> Node:
        bid, _ = engine.save_blob(BlobType.DATA, data)
        return Node(path=path, type="file", mode=0o644, size=len(data), blobs=[bid],
                    sha256=hashlib.sha256(data).hexdigest())

    return make


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside every restore target, with a sentinel file."""
    d = tmp_path / "outside"
    write(d / "victim", b"precious")
    return d


def _listing(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = (
                f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
            )
    return out


def _assert_untouched(outside: Path, work: Path) -> None:
    assert _listing(outside) == {"victim": b"precious"}
    assert sorted(os.listdir(work)) in ([], ["target"])


def _good(file_node: Callable[[bytes, bytes], Node]) -> list[Node]:
    return [Node(path=b"ok", type="dir", mode=0o755), file_node(b"ok/good", b"fine")]


@pytest.mark.parametrize(
    "bad",
    [b"../evil", b"a/../../evil", b"a/..", b"..", b"a//b", b".", b"./evil", b"a/./b", b"a/", b"", b"ev\0il",
     b"/ABS/evil"],
    ids=repr,
)
def test_unsafe_paths_refused_before_any_write(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], outside: Path,
    tmp_path: Path, bad: bytes,
) -> None:
    bad = bad.replace(b"/ABS", os.fsencode(outside))
    work = tmp_path / "work"
    work.mkdir()
    snap = make_snapshot([*_good(file_node), file_node(bad, b"evil")])
    with pytest.raises(UnsafePathError) as ei:
        repo.restore(snap, work / "target")
    assert ei.value.exit_code == 17
    # validated before writing anything: not even the target directory was created
    assert not (work / "target").exists()
    _assert_untouched(outside, work)


def test_unsafe_directory_and_symlink_entries_refused(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], outside: Path,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for bad in (Node(path=b"../d", type="dir", mode=0o755),
                Node(path=b"a/../../l", type="symlink", target=b"x"),
                Node(path=os.fsencode(outside) + b"/l", type="symlink", target=b"/etc/passwd")):
        snap = make_snapshot([*_good(file_node), bad])
        with pytest.raises(UnsafePathError):
            repo.restore(snap, work / "target")
        assert not (work / "target").exists()
        _assert_untouched(outside, work)


def test_unsafe_entry_refused_even_when_not_included(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], outside: Path,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    snap = make_snapshot([*_good(file_node), file_node(b"../evil", b"evil")])
    with pytest.raises(UnsafePathError):
        repo.restore(snap, work / "target", includes=["ok/good"])
    _assert_untouched(outside, work)


@pytest.mark.parametrize("child_first", [False, True])
@pytest.mark.parametrize("link_target", ["outside", ".."])
def test_file_below_symlink_of_same_snapshot_refused(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], outside: Path,
    tmp_path: Path, child_first: bool, link_target: str,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    target = os.fsencode(outside) if link_target == "outside" else b".."
    link = Node(path=b"link", type="symlink", target=target)
    nodes = [link, file_node(b"link/pwned", b"pwned"), file_node(b"link/victim", b"overwritten")]
    if child_first:
        nodes = nodes[1:] + nodes[:1]
    snap = make_snapshot(nodes)
    for mode in ("error", "always"):
        with pytest.raises(UnsafePathError):
            repo.restore(snap, work / "target", overwrite=mode)
        assert not (work / "target").exists()
        _assert_untouched(outside, work)


def test_entries_below_a_file_refused(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], outside: Path,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    snap = make_snapshot([file_node(b"f", b"x"), Node(path=b"f/sub", type="dir", mode=0o755)])
    with pytest.raises(UnsafePathError):
        repo.restore(snap, work / "target")
    assert not (work / "target").exists()


@pytest.mark.parametrize("mode", ["error", "never", "if-changed", "always"])
@pytest.mark.parametrize("where", ["root", "nested"])
def test_existing_symlink_in_target_is_never_followed(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], outside: Path,
    tmp_path: Path, mode: str, where: str,
) -> None:
    work = tmp_path / "work"
    target = work / "target"
    snap = make_snapshot([
        Node(path=b"run", type="dir", mode=0o755),
        Node(path=b"run/sub", type="dir", mode=0o755),
        file_node(b"run/sub/victim", b"overwritten"),
        file_node(b"run/sub/new", b"planted"),
    ])
    if where == "root":
        (target).mkdir(parents=True)
        (target / "run").symlink_to(outside)
        (outside / "sub").mkdir()
    else:
        (target / "run").mkdir(parents=True)
        (target / "run" / "sub").symlink_to(outside)
    before = _listing(outside)
    with pytest.raises(UnsafePathError):
        repo.restore(snap, target, overwrite=mode)
    assert _listing(outside) == before
    assert (outside / "victim").read_bytes() == b"precious"


def test_existing_symlink_at_file_position_is_replaced_not_written_through(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], outside: Path,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    target = work / "target"
    target.mkdir(parents=True)
    (target / "victim").symlink_to(outside / "victim")
    snap = make_snapshot([file_node(b"victim", b"from snapshot")])
    with pytest.raises(RestoreConflictError):
        repo.restore(snap, target)
    assert (target / "victim").is_symlink()
    repo.restore(snap, target, overwrite="always")
    assert not (target / "victim").is_symlink()
    assert (target / "victim").read_bytes() == b"from snapshot"
    _assert_untouched(outside, work)


def test_symlinks_pointing_outside_are_restored_as_links_only(
    repo: Repository, outside: Path, tmp_path: Path,
) -> None:
    """A real backup with links to the outside world: the links come back, nothing is written through."""
    src = tmp_path / "src" / "run"
    write(src / "data.bin", b"weights")
    (src / "abs").symlink_to(outside)
    (src / "victim").symlink_to(outside / "victim")
    (src / "up").symlink_to("../../outside")
    repo.backup([src])
    work = tmp_path / "work"
    work.mkdir()
    res = repo.restore("latest", work / "target", verify=True)
    assert res.symlinks == 3
    out = work / "target" / "run"
    assert os.readlink(out / "abs") == str(outside)
    assert os.readlink(out / "victim") == str(outside / "victim")
    assert os.readlink(out / "up") == "../../outside"
    _assert_untouched(outside, work)


@pytest.mark.parametrize("case", ["long-name", "long-dir-name", "nul-target", "empty-target", "duplicate-file",
                                  "file-and-dir"])
def test_entries_no_file_system_can_hold_are_refused_up_front_naming_them(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], outside: Path,
    tmp_path: Path, case: str,
) -> None:
    long = b"n" * 256
    bad = {"long-name": [file_node(b"ok/" + long, b"x")],
           "long-dir-name": [file_node(b"ok/" + long + b"/f", b"x")],
           "nul-target": [Node(path=b"ok/link", type="symlink", target=b"a\0b")],
           "empty-target": [Node(path=b"ok/link", type="symlink", target=b"")],
           "duplicate-file": [file_node(b"ok/good", b"other")],
           "file-and-dir": [Node(path=b"ok/good", type="dir", mode=0o755), file_node(b"ok/good/x", b"x")]}[case]
    words = {"long-name": "name of 256 bytes", "long-dir-name": "name of 256 bytes", "nul-target": "NUL in its target",
             "empty-target": "empty target", "duplicate-file": "appears twice", "file-and-dir": "appears twice"}[case]
    work = tmp_path / "work"
    work.mkdir()
    snap = make_snapshot([*_good(file_node), *bad])
    with pytest.raises(UnsafePathError) as ei:
        repo.restore(snap, work / "target")
    assert ei.value.exit_code == 17 and words in ei.value.message and "ok/" in ei.value.message, ei.value.message
    assert not (work / "target").exists()  # refused before anything was written
    _assert_untouched(outside, work)


def test_a_deep_tree_restores_with_every_level_in_place(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], tmp_path: Path,
) -> None:
    """600 nested directories (far past the 128 directory fds kept open, so the metadata pass,
    deepest first, reaches parents through their children's ``..``): every level has its recorded
    mode and time, and the leaf file is whole. (Deeper trees and their time: bench/deep_tree.py;
    600 stays within what pytest's own clean-up, a recursive rmtree, can remove.)"""
    depth = 600
    nodes = [Node(path=b"/".join([b"d"] * i), type="dir", mode=0o750 if i % 2 else 0o755, mtime_ns=i * 10**9)
             for i in range(1, depth + 1)]
    leaf = b"/".join([b"d"] * depth) + b"/leaf"
    snap = make_snapshot([*nodes, file_node(leaf, b"deep data")])
    res = repo.restore(snap, tmp_path / "target")
    assert res.dirs == depth and res.files == 1
    fd = os.open(tmp_path / "target", os.O_RDONLY)
    try:
        for i in range(1, depth + 1):
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o750 if i % 2 else 0o755, i * 10**9), i
        with open(os.open("leaf", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep data"
    finally:
        os.close(fd)


def test_no_setuid_drops_setuid_and_setgid_bits(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node], tmp_path: Path,
) -> None:
    tool = file_node(b"bin/tool", b"#!/bin/sh\n")
    tool.mode = 0o6755  # setuid + setgid
    snap = make_snapshot([Node(path=b"bin", type="dir", mode=0o2775), tool])
    kept = repo.restore(snap, tmp_path / "as-recorded")
    assert kept.files == 1 and (tmp_path / "as-recorded" / "bin" / "tool").stat().st_mode & 0o7777 == 0o6755
    repo.restore(snap, tmp_path / "safe", no_setuid=True)
    assert (tmp_path / "safe" / "bin" / "tool").stat().st_mode & 0o7777 == 0o0755
    assert (tmp_path / "safe" / "bin").stat().st_mode & 0o7777 == 0o0775  # a directory's setgid too


def test_check_reports_a_manifest_with_an_entry_twice(
    repo: Repository, make_snapshot: MakeSnap, file_node: Callable[[bytes, bytes], Node],
) -> None:
    assert repo.check().ok
    snap = make_snapshot([*_good(file_node), file_node(b"ok/good", b"other")])
    res = repo.check()
    want = f"snapshot {snap[:8]}: entry 'ok/good' appears twice"
    assert not res.ok and any(want in e for e in res.errors), res.errors
