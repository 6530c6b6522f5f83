"""Backup then restore gives back exactly what was backed up: contents, names (any bytes), symlinks,
permission bits, ownership (as root), timestamps in ns, empty files and directories, sparse files."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightvault.api import Repository

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
IS_ROOT = os.geteuid() == 0

# -- strategies ------------------------------------------------------------------------------------

_raw_names = st.binary(min_size=1, max_size=16).filter(lambda b: b"/" not in b and b"\0" not in b)
_text_names = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/\0"), min_size=1, max_size=12
).map(os.fsencode)
_names = st.one_of(
    _text_names, _raw_names, st.sampled_from([b"with space", b" lead", b"trail ", b"-dash", b".hidden", b"\xff\xfe"])
).filter(lambda b: b not in (b".", b"..") and len(b) <= 255)

# (kind, size class, seed): the size is drawn uniformly from the class with the seed, so multi-MiB
# files are as common as tiny ones (Hypothesis alone favours small integers).
_contents = st.tuples(
    st.sampled_from(["random", "repeat", "zeros", "mixed"]),
    st.sampled_from([0, 4 * KiB, 300 * KiB, 3 * MiB]),
    st.integers(0, 2**32),
)
_mtimes = st.integers(0, 2**33 * 10**9)  # 1970 .. 2242, any nanosecond
_file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o444, 0o640, 0o777, 0o4755, 0o2755, 0o1644])
_dir_modes = st.sampled_from([0o755, 0o700, 0o750, 0o555, 0o1777, 0o2775])
_owners = st.sampled_from([(0, 0), (1000, 1000), (65534, 65534), (12345, 0)])
_link_targets = st.one_of(
    st.sampled_from([b"../up", b"sibling", b"/absolute/nowhere", b"/tmp", b".", b"a/b/c", b"dangling"]),
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b),
)

_files = st.builds(lambda c, m, t, o: ("file", c, m, t, o), _contents, _file_modes, _mtimes, _owners)
_links = st.builds(lambda tgt, t, o: ("link", tgt, t, o), _link_targets, _mtimes, _owners)
_trees = st.recursive(
    st.one_of(_files, _links),
    lambda kids: st.builds(
        lambda ch, m, t, o: ("dir", ch, m, t, o), st.dictionaries(_names, kids, max_size=5), _dir_modes, _mtimes,
        _owners,
    ),
    max_leaves=14,
)
_roots = st.builds(
    lambda ch, m, t, o: ("dir", ch, m, t, o), st.dictionaries(_names, _trees, max_size=6), _dir_modes, _mtimes,
    _owners,
)


def _content(kind: str, size_class: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    size = rnd.randint(0, size_class)
    if kind == "random":
        return rnd.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    if kind == "repeat":
        pattern = rnd.randbytes(rnd.randint(1, 4096))
        return (pattern * (size // len(pattern) + 1))[:size]
    parts, n = [], 0  # mixed: random runs, zero runs and repeats
    while n < size:
        k = rnd.randint(1, max(1, size // 4))
        parts.append(rnd.choice([rnd.randbytes(k), bytes(k), rnd.randbytes(1) * k]))
        n += k
    return b"".join(parts)[:size]


def _chown(path: bytes, owner: tuple[int, int]) -> None:
    if IS_ROOT:
        os.chown(path, *owner, follow_symlinks=False)


def _build(path: bytes, spec: tuple[Any, ...]) -> None:
    """Create ``spec`` at ``path``; metadata set bottom-up so directory mtimes stick."""
    kind = spec[0]
    if kind == "file":
        _, content, mode, mtime, owner = spec
        with open(path, "wb") as f:
            f.write(_content(*content))
        _chown(path, owner)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime, mtime))
    elif kind == "link":
        _, target, mtime, owner = spec
        os.symlink(target, path)
        _chown(path, owner)
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
    else:
        _, children, mode, mtime, owner = spec
        os.mkdir(path)
        for name, child in children.items():
            _build(os.path.join(path, name), child)
        _chown(path, owner)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime, mtime))


def describe(root: bytes) -> dict[bytes, tuple[Any, ...]]:
    """Everything restore must reproduce, per relative path (bytes): type, content hash or link
    target, permission bits, mtime in ns, and owner when running as root."""
    out: dict[bytes, tuple[Any, ...]] = {}

    def meta(p: bytes) -> tuple[Any, ...]:
        s = os.lstat(p)
        owner = (s.st_uid, s.st_gid) if IS_ROOT else None
        return s.st_mode & 0o7777, s.st_mtime_ns, owner

    out[b"."] = ("d", *meta(root))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p), os.lstat(p).st_mtime_ns, meta(p)[2])
            elif os.path.isdir(p):
                out[rel] = ("d", *meta(p))
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest(),
                                *meta(p))
    return out


# -- tests -----------------------------------------------------------------------------------------


@settings(max_examples=25, print_blob=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=_roots)
def test_random_trees_round_trip(repo: Repository, tree: tuple[Any, ...]) -> None:
    """One repository collects every example's snapshot, so dedupe across snapshots is exercised too."""
    with tempfile.TemporaryDirectory(prefix="wv-rt-") as tmp:
        src = os.path.join(os.fsencode(tmp), b"src", "tree ✓ σ".encode())  # source roots must be UTF-8
        os.mkdir(os.path.dirname(src))
        _build(src, tree)
        expected = describe(src)
        res = repo.backup([os.fsdecode(src)])
        assert res.errors == [] and res.warnings == []
        files = [v for v in expected.values() if v[0] == "f"]
        assert res.snapshot.summary["files"] == len(files)
        assert res.snapshot.summary["bytes"] == sum(v[1] for v in files)
        out = os.path.join(os.fsencode(tmp), b"out")
        rr = repo.restore(res.snapshot.id, os.fsdecode(out), verify=True)
        assert rr.verified == rr.files == len(files)
        restored = os.path.join(out, os.path.basename(src))
        assert describe(restored) == expected
        assert sorted(os.listdir(out)) == [os.path.basename(src)]  # no temporary files left behind


def test_round_trip_is_repeatable_and_checks(repo: Repository, tmp_path: Path) -> None:
    """A fixed tree with every kind of entry, restored twice from two snapshots, then a full check."""
    src = os.fsencode(tmp_path / "run")
    tree = ("dir", {
        b"empty": ("file", ("random", 0, 0), 0o644, 10**18 + 7, (0, 0)),
        b"big \xff.bin": ("file", ("mixed", 5 * MiB, 1), 0o600, 1, (0, 0)),
        b"empty dir": ("dir", {}, 0o700, 123456789, (0, 0)),
        b"nested": ("dir", {b"d": ("dir", {b"f": ("file", ("repeat", 10_000, 2), 0o755, 5, (0, 0))},
                                   0o755, 6, (0, 0))}, 0o755, 7, (0, 0)),
        b"setuid": ("file", ("random", 100, 3), 0o4755, 11, (1000, 1000)),  # chown must precede chmod
        b"shared": ("dir", {b"x": ("file", ("zeros", 50, 4), 0o2644, 12, (1000, 65534))}, 0o2775, 13, (1000, 1000)),
        b"abs": ("link", b"/etc/hostname", 8, (65534, 65534)),
        b"dangling": ("link", b"no/such/file", 9, (0, 0)),
    }, 0o755, 10, (0, 0))
    _build(src, tree)
    expected = describe(src)
    first = repo.backup([tmp_path / "run"]).snapshot
    second = repo.backup([tmp_path / "run"]).snapshot
    assert second.summary["files_unmodified"] == 5 and second.summary["stored_bytes_added"] == 0
    for snap in (first, second):
        out = tmp_path / f"out-{snap.short_id}"
        repo.restore(snap.id, out)
        assert describe(os.fsencode(out / "run")) == expected
    assert repo.check(read_data=True).ok


@pytest.mark.slow
def test_multi_gb_sparse_file(repo: Repository, tmp_path: Path) -> None:
    size = 3 * GiB
    src = tmp_path / "run"
    src.mkdir()
    big = src / "sparse.bin"
    offsets = [0, 1 * GiB + 12345, 2 * GiB + 7 * MiB, size - MiB]
    with open(big, "wb") as f:
        f.truncate(size)
        for off in offsets:
            f.seek(off)
            f.write(os.urandom(MiB))
    with open(big, "rb") as f:
        expected_digest = hashlib.file_digest(f, "sha256").hexdigest()

    res = repo.backup([src])
    s = res.snapshot.summary
    assert s["bytes"] == size
    assert s["stored_bytes_added"] < 16 * MiB  # 4 MiB of random data; the zeros dedupe to one blob
    stats = repo.stats("latest")
    assert stats.raw_bytes == size and stats.stored_bytes < 16 * MiB
    assert stats.unique_bytes < 128 * MiB  # chunks holding the data, plus one all-zero chunk
    assert stats.dedup_ratio == stats.raw_bytes / stats.unique_bytes > 20
    (node,) = [n for n in repo.ls("latest") if n.type == "file"]
    assert node.sha256 == expected_digest

    out = tmp_path / "out"
    rr = repo.restore("latest", out)
    assert rr.bytes == size
    restored = out / "run" / "sparse.bin"
    st_ = os.stat(restored)
    assert st_.st_size == size
    assert st_.st_blocks * 512 < 128 * MiB  # zero chunks became holes
    with open(restored, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == expected_digest
