"""Repository locks: shared/exclusive semantics, stale detection, unlock, release on error."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weightvault import api
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.errors import RepositoryLockedError
from weightvault.repository import locks
from weightvault.repository.locks import hold_lock, list_locks


@pytest.fixture
def backend(repo_path: Path, repo: api.Repository) -> LocalBackend:
    return LocalBackend(repo_path)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


def _plant(backend: LocalBackend, *, exclusive: bool, pid: int, host: str | None = None, age: float = 0.0) -> str:
    """Write a lock document as another process would have, ``age`` seconds since its last refresh."""
    now = time.time()
    name = f"{pid:08x}" + "ab" * 12
    doc = {"exclusive": exclusive, "host": host or socket.gethostname(), "pid": pid, "user": "someone",
           "created": now - age - 60, "refreshed": now - age}
    backend.save(FileType.LOCK, name, json.dumps(doc).encode(), create_only=True)
    return name


def test_shared_locks_coexist(backend: LocalBackend) -> None:
    with hold_lock(backend, False), hold_lock(backend, False):
        held = list_locks(backend)
        assert len(held) == 2 and not any(lk.exclusive or lk.stale() for lk in held)
    assert list_locks(backend) == []


@pytest.mark.parametrize(("first", "second"), [(True, False), (False, True), (True, True)])
def test_exclusive_excludes(backend: LocalBackend, first: bool, second: bool) -> None:
    with hold_lock(backend, first):
        with pytest.raises(RepositoryLockedError) as ei, hold_lock(backend, second):
            pass
        assert ei.value.exit_code == 12
        assert "locked" in str(ei.value) and "wait for the other operation" in str(ei.value)
        assert len(list_locks(backend)) == 1, "the refused attempt must not leave its lock behind"
    assert list_locks(backend) == []


def test_api_operations_respect_an_exclusive_lock(repo: api.Repository, backend: LocalBackend, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    with hold_lock(backend, True):
        with pytest.raises(RepositoryLockedError):
            repo.backup([src])
        with pytest.raises(RepositoryLockedError):
            repo.check()
    assert repo.snapshots() == []
    repo.backup([src])
    assert len(repo.snapshots()) == 1


def test_lock_of_dead_process_is_stale(repo: api.Repository, backend: LocalBackend) -> None:
    pid = _dead_pid()
    _plant(backend, exclusive=True, pid=pid)
    (info,) = repo.locks()
    assert info.pid == pid and info.stale()
    with pytest.raises(RepositoryLockedError) as ei:
        repo.check()  # a stale exclusive lock still blocks: a crashed prune may have left work half done
    msg = str(ei.value)
    assert "STALE" in msg and f"pid {pid}" in msg
    assert re.search(r"`weightvault .*unlock`", msg)
    assert [lk.pid for lk in repo.unlock()] == [pid]
    assert repo.check().ok


def test_lock_not_refreshed_is_stale(repo: api.Repository, backend: LocalBackend) -> None:
    alive = _plant(backend, exclusive=False, pid=1, host="elsewhere.example", age=locks.STALE_AFTER - 120)
    old = _plant(backend, exclusive=False, pid=2, host="elsewhere.example", age=locks.STALE_AFTER + 60)
    state = {lk.name: lk.stale() for lk in repo.locks()}
    assert state == {alive: False, old: True}
    removed = repo.unlock()
    assert [lk.name for lk in removed] == [old]
    assert [lk.name for lk in repo.locks()] == [alive]
    assert [lk.name for lk in repo.unlock(remove_all=True)] == [alive]
    assert repo.locks() == []


def test_unreadable_lock_is_reported_and_removable(repo: api.Repository, backend: LocalBackend) -> None:
    backend.save(FileType.LOCK, "cd" * 16, b"{not json", create_only=True)
    with pytest.raises(RepositoryLockedError):
        repo.check()
    assert [lk.name for lk in repo.unlock()] == ["cd" * 16]


def test_lock_released_on_exception(repo: api.Repository, backend: LocalBackend) -> None:
    with pytest.raises(ZeroDivisionError), hold_lock(backend, True):
        assert len(list_locks(backend)) == 1
        _ = 1 / 0
    assert list_locks(backend) == []
    with pytest.raises(RepositoryLockedError), hold_lock(backend, True):
        _plant(backend, exclusive=False, pid=_dead_pid())  # a stale lock appears meanwhile
        with hold_lock(backend, False):
            pass
    assert len(list_locks(backend)) == 1  # only the planted one; ours was released


def test_lock_is_refreshed_while_held(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "REFRESH_EVERY", 0.05)
    with hold_lock(backend, False):
        (first,) = list_locks(backend)
        deadline = time.time() + 10
        while time.time() < deadline:
            (now,) = list_locks(backend)
            if now.refreshed > first.refreshed:
                break
            time.sleep(0.02)
        assert now.refreshed > first.refreshed and now.created == first.created
    assert list_locks(backend) == []
