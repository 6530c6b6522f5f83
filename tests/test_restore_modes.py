"""Restoring into a target that already has files: overwrite modes, includes, verification."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import tree_digest, write
from weightvault.api import Repository
from weightvault.errors import RestoreConflictError, UsageError

FILES = {
    "run/a.bin": b"A" * 5000,
    "run/b.bin": b"B" * 3000,
    "run/size.bin": b"12345678",
    "run/sub/c.bin": b"C" * 100,
    "run/sub/d.txt": b"ddd",
    "run/sub/deeper/e.bin": b"",
}


@pytest.fixture
def snap_src(repo: Repository, tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for rel, data in FILES.items():
        write(root / rel, data)
    repo.backup([root / "run"])
    return root / "run"


def _state(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """inode, mtime and content of every file: detects any write, even an identical one."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath, name)
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_mtime_ns, p.read_bytes())
    return out


@pytest.fixture
def dirty_target(repo: Repository, snap_src: Path, tmp_path: Path) -> Path:
    """A full restore, then: a.bin changed, size.bin changed (same size), sub/c.bin deleted,
    an extra file added, b.bin left identical."""
    target = tmp_path / "target"
    repo.restore("latest", target)
    write(target / "run" / "a.bin", b"local edit")
    write(target / "run" / "size.bin", b"87654321")
    (target / "run" / "sub" / "c.bin").unlink()
    write(target / "run" / "extra.txt", b"mine")
    return target


def test_error_mode_refuses_and_writes_nothing(repo: Repository, dirty_target: Path) -> None:
    before = _state(dirty_target)
    with pytest.raises(RestoreConflictError) as ei:
        repo.restore("latest", dirty_target)
    assert ei.value.exit_code == 18
    msg = str(ei.value)
    assert "2 file(s)" in msg and "run/a.bin" in msg and "run/size.bin" in msg
    assert "b.bin" not in msg and "c.bin" not in msg
    assert _state(dirty_target) == before  # not even the missing c.bin was restored
    assert not [p for p in (dirty_target / "run").rglob(".wvtmp-*")]


def test_error_mode_lists_many_conflicts_briefly(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src" / "many"
    for i in range(8):
        write(src / f"f{i}", b"x")
    repo.backup([src])
    target = tmp_path / "t"
    for i in range(8):
        write(target / "many" / f"f{i}", b"y")
    with pytest.raises(RestoreConflictError, match=r"8 file\(s\).* and 3 more"):
        repo.restore("latest", target)


def test_error_mode_accepts_identical_files(repo: Repository, snap_src: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    repo.restore("latest", target)
    before = _state(target)
    res = repo.restore("latest", target)  # identical: nothing to do, nothing rewritten
    assert res.files == 0 and res.skipped == len(FILES)
    assert _state(target) == before


def test_never_keeps_existing_files(repo: Repository, dirty_target: Path) -> None:
    before = _state(dirty_target)
    res = repo.restore("latest", dirty_target, overwrite="never")
    after = _state(dirty_target)
    assert res.files == 1  # only the missing c.bin
    assert res.skipped == len(FILES) - 1
    assert after["run/sub/c.bin"][2] == FILES["run/sub/c.bin"]
    del after["run/sub/c.bin"]
    assert after == before


def test_if_changed_replaces_only_differing_files(repo: Repository, dirty_target: Path) -> None:
    before = _state(dirty_target)
    res = repo.restore("latest", dirty_target, overwrite="if-changed")
    after = _state(dirty_target)
    assert res.files == 3 and res.skipped == len(FILES) - 3  # a.bin, size.bin, c.bin
    for rel, data in FILES.items():
        assert after[rel][2] == data
    assert after["run/b.bin"] == before["run/b.bin"]  # same inode, untouched
    assert after["run/sub/d.txt"] == before["run/sub/d.txt"]
    assert after["run/a.bin"][0] != before["run/a.bin"][0]
    assert after["run/extra.txt"] == before["run/extra.txt"]  # restore never deletes


def test_always_replaces_everything(repo: Repository, dirty_target: Path, snap_src: Path) -> None:
    before = _state(dirty_target)
    res = repo.restore("latest", dirty_target, overwrite="always")
    after = _state(dirty_target)
    assert res.files == len(FILES) and res.skipped == 0
    for rel, data in FILES.items():
        assert after[rel][2] == data
    assert after["run/b.bin"][0] != before["run/b.bin"][0]  # rewritten even though identical
    assert after["run/extra.txt"] == before["run/extra.txt"]
    (dirty_target / "run" / "extra.txt").unlink()
    assert tree_digest(dirty_target / "run") == tree_digest(snap_src)


def test_directory_in_the_way_of_a_file(repo: Repository, snap_src: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    (target / "run" / "a.bin").mkdir(parents=True)
    with pytest.raises(RestoreConflictError, match=r"run/a\.bin"):
        repo.restore("latest", target)
    repo.restore("latest", target, overwrite="always")  # an empty directory may be replaced
    assert (target / "run" / "a.bin").read_bytes() == FILES["run/a.bin"]


def test_unknown_overwrite_mode(repo: Repository, snap_src: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="overwrite mode"):
        repo.restore("latest", tmp_path / "t", overwrite="sometimes")
    assert not (tmp_path / "t").exists()


def test_includes_one_file(repo: Repository, snap_src: Path, tmp_path: Path) -> None:
    target = tmp_path / "t"
    res = repo.restore("latest", target, includes=["run/sub/c.bin"])
    assert res.files == 1
    assert _state(target).keys() == {"run/sub/c.bin"}
    assert (target / "run" / "sub" / "c.bin").read_bytes() == FILES["run/sub/c.bin"]


def test_includes_sub_directory(repo: Repository, snap_src: Path, tmp_path: Path) -> None:
    target = tmp_path / "t"
    res = repo.restore("latest", target, includes=["run/sub"])
    assert _state(target).keys() == {"run/sub/c.bin", "run/sub/d.txt", "run/sub/deeper/e.bin"}
    assert res.files == 3 and res.dirs == 3  # run/sub, run/sub/deeper and the parent run (for its metadata)
    assert tree_digest(target / "run" / "sub") == tree_digest(snap_src / "sub")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (["run/sub/c.*"], {"run/sub/c.bin"}),
        (["d.txt"], {"run/sub/d.txt"}),  # a basename matches at any depth
        (["run/*.bin"], {"run/a.bin", "run/b.bin", "run/size.bin"}),  # "*" does not cross "/"
        (["run/**/*.bin"], {"run/a.bin", "run/b.bin", "run/size.bin", "run/sub/c.bin", "run/sub/deeper/e.bin"}),
        (["run/s?b/*"], {"run/sub/c.bin", "run/sub/d.txt", "run/sub/deeper/e.bin"}),
        (["deeper"], {"run/sub/deeper/e.bin"}),  # a directory name selects its contents
        (["*.txt", "e.bin"], {"run/sub/d.txt", "run/sub/deeper/e.bin"}),
    ],
)
def test_includes_by_glob(
    repo: Repository, snap_src: Path, tmp_path: Path, pattern: list[str], expected: set[str]
) -> None:
    target = tmp_path / "t"
    repo.restore("latest", target, includes=pattern)
    got = _state(target)
    assert got.keys() == expected
    for rel in expected:
        assert got[rel][2] == FILES[rel]


def test_includes_matching_nothing(repo: Repository, snap_src: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="matches"):
        repo.restore("latest", tmp_path / "t", includes=["nope/*"])
    assert not (tmp_path / "t").exists()


def test_includes_into_dirty_target_only_considers_selected(repo: Repository, dirty_target: Path) -> None:
    """a.bin differs, but only sub/ is restored: no conflict."""
    res = repo.restore("latest", dirty_target, includes=["run/sub"])
    assert res.files == 1  # the missing c.bin
    assert (dirty_target / "run" / "a.bin").read_bytes() == b"local edit"


def test_verify_counts_files(repo: Repository, snap_src: Path, tmp_path: Path) -> None:
    res = repo.restore("latest", tmp_path / "t", verify=True)
    assert res.verified == res.files == len(FILES)
    assert res.bytes == sum(len(d) for d in FILES.values())
    res2 = repo.restore("latest", tmp_path / "t2")
    assert res2.verified == 0
    res3 = repo.restore("latest", tmp_path / "t", verify=True, overwrite="if-changed")
    assert res3.verified == res3.files == 0  # nothing differed, nothing written


def test_include_restores_parent_directories_with_their_metadata(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "run"
    write(src / "ckpt" / "step-10" / "model.bin", b"w" * 1000)
    write(src / "ckpt" / "step-20" / "model.bin", b"v" * 1000)
    os.chmod(src / "ckpt", 0o751)
    os.chmod(src / "ckpt" / "step-10", 0o750)
    repo.backup([src])
    out = tmp_path / "out"
    repo.restore("latest", out, includes=["run/ckpt/step-10/*"])
    assert (out / "run" / "ckpt" / "step-10" / "model.bin").read_bytes() == b"w" * 1000
    assert not (out / "run" / "ckpt" / "step-20").exists()
    assert (out / "run" / "ckpt").stat().st_mode & 0o7777 == 0o751
    assert (out / "run" / "ckpt" / "step-10").stat().st_mode & 0o7777 == 0o750
    assert (out / "run" / "ckpt").stat().st_mtime_ns == (src / "ckpt").stat().st_mtime_ns
