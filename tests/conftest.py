"""Shared fixtures. Repositories made here use a cheap KDF so the suite stays fast; the
production defaults are tested separately (tests/test_crypto.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from weightvault.api import KdfParams, Repository
from weightvault.chunking.registry import Chunk

FAST_KDF = KdfParams(memory_kib=8192, time_cost=1, parallelism=1)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def repo(repo_path: Path) -> Repository:
    return Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """XDG dirs and HOME under tmp_path, so the embedded default repository is private to the test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("WEIGHTVAULT_REPO", raising=False)
    monkeypatch.delenv("WEIGHTVAULT_PASSWORD", raising=False)
    yield home


def direct_supported(directory: Path) -> bool:
    """Whether files in ``directory`` can be opened O_DIRECT (tmpfs, for one, refuses)."""
    from weightvault.backends import direct_io

    if not direct_io.O_DIRECT:
        return False
    probe = directory / ".direct-probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | direct_io.O_DIRECT, 0o600))
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree_digest(root: Path) -> dict[str, tuple[str, object]]:
    """Comparable description of a tree: type, content/target, mode (no mtimes)."""
    out: dict[str, tuple[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, os.fsencode(root))
            st = os.lstat(p)
            if os.path.islink(p):
                out[os.fsdecode(rel)] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[os.fsdecode(rel)] = ("d", st.st_mode & 0o7777)
            else:
                with open(p, "rb") as f:
                    out[os.fsdecode(rel)] = ("f", (f.read(), st.st_mode & 0o7777))
    return out


def assert_tiles(chunks: list[Chunk], data: bytes) -> None:
    """The splitter contract: chunks are non-empty, contiguous from 0 and concatenate to ``data``."""
    pos = 0
    for c in chunks:
        assert c.offset == pos and c.data, (c.offset, pos, len(c.data))
        pos += len(c.data)
    assert b"".join(c.data for c in chunks) == data
