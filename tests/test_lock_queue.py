"""Waiting for a lock (`--retry-lock`, `lock_wait`), and the fair queue of maintenance operations:
a `check` loop cannot starve a `forget --prune`, nor the other way round (issue 20's load
campaign found that it could)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.errors import RepositoryLockedError
from weightvault.repository.locks import hold_lock, list_locks, lock_wait


def _foreign_lock(backend: LocalBackend, name: str, *, waiting: bool = False, pid: int | None = None,
                  created: float | None = None) -> None:
    """A maintenance lock (or ticket) of another live process on this host."""
    import socket

    t = time.time() if created is None else created
    backend.save(FileType.LOCK, name, json.dumps({
        "exclusive": False, "maintenance": True, **({"waiting": True} if waiting else {}),
        "host": socket.gethostname(), "pid": os.getpid() if pid is None else pid, "user": "other",
        "created": t, "refreshed": t}).encode())


def _wait_for(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _tickets(backend: LocalBackend) -> int:
    return sum(lk.waiting for lk in list_locks(backend))


def test_maintenance_waiters_are_served_first_come_first_served(tmp_path: Path) -> None:
    backend = LocalBackend(str(tmp_path / "r"))
    backend.create()
    _foreign_lock(backend, "held")
    order: list[str] = []

    def waiter(who: str) -> None:
        with lock_wait(30), hold_lock(backend, exclusive=False, maintenance=True):
            order.append(who)
            time.sleep(0.3)  # long enough for the other to try (and, without the queue, to win)

    a = threading.Thread(target=waiter, args=("first",))
    a.start()
    _wait_for(lambda: _tickets(backend) == 1)
    b = threading.Thread(target=waiter, args=("second",))
    b.start()
    _wait_for(lambda: _tickets(backend) == 2)
    time.sleep(0.5)  # both polling now
    backend.remove(FileType.LOCK, "held")
    a.join(30)
    b.join(30)
    assert order == ["first", "second"]
    assert list_locks(backend) == []  # tickets and locks all gone


def test_a_queued_ticket_keeps_others_from_jumping_the_queue_but_not_backups(tmp_path: Path) -> None:
    backend = LocalBackend(str(tmp_path / "r"))
    backend.create()
    _foreign_lock(backend, "queued", waiting=True)
    with pytest.raises(RepositoryLockedError, match="queued maintenance operation"), \
            hold_lock(backend, exclusive=False, maintenance=True):
        pass
    with hold_lock(backend, exclusive=False):  # a shared lock (a backup) never waits for tickets
        pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    backend.remove(FileType.LOCK, "queued")
    _foreign_lock(backend, "stale", waiting=True, pid=int(dead.stdout))  # its process is gone
    with hold_lock(backend, exclusive=False, maintenance=True):
        pass


def test_waiting_ends_at_the_deadline_and_leaves_no_ticket(tmp_path: Path) -> None:
    backend = LocalBackend(str(tmp_path / "r"))
    backend.create()
    _foreign_lock(backend, "held")
    t = time.monotonic()
    with pytest.raises(RepositoryLockedError), lock_wait(1.0), hold_lock(backend, exclusive=True):
        pass
    assert 0.9 <= time.monotonic() - t < 10
    assert [lk.name for lk in list_locks(backend)] == ["held"]


def test_cli_retry_lock_waits_for_the_lock(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    backend = LocalBackend(str(tmp_path / "repo"))
    _foreign_lock(backend, "held")
    env = {**os.environ, "WEIGHTVAULT_PASSWORD": PASSWORD}
    cmd = [sys.executable, "-m", "weightvault", "-r", str(tmp_path / "repo")]
    refused = subprocess.run([*cmd, "--retry-lock", "1s", "forget", "--keep-last", "1"], capture_output=True,
                             text=True, env=env, check=False)
    assert refused.returncode == 12 and "locked" in refused.stderr
    release = threading.Timer(1.5, lambda: backend.remove(FileType.LOCK, "held"))
    release.start()
    waited = subprocess.run([*cmd, "--retry-lock", "1min", "forget", "--keep-last", "1"], capture_output=True,
                            text=True, env=env, check=False)
    release.join()
    assert waited.returncode == 0, waited.stderr
    assert repo.snapshots() == [] and list_locks(backend) == []


@pytest.mark.parametrize("exclusive", [False, True])
def test_a_ticket_reads_as_a_lock_of_its_kind_to_a_reader_that_does_not_know_tickets(tmp_path: Path,
                                                                                     exclusive: bool) -> None:
    """FORMAT.md section 10: no version bump, because a reader that ignores "waiting" sees a
    maintenance or exclusive lock, which it waits for or refuses to run beside."""
    backend = LocalBackend(str(tmp_path / "r"))
    backend.create()
    _foreign_lock(backend, "held")

    def waiter() -> None:
        with lock_wait(30), hold_lock(backend, exclusive=exclusive, maintenance=not exclusive):
            pass

    t = threading.Thread(target=waiter)
    t.start()
    _wait_for(lambda: _tickets(backend) == 1)
    name = next(lk.name for lk in list_locks(backend) if lk.waiting)
    doc = json.loads(backend.load(FileType.LOCK, name))
    backend.remove(FileType.LOCK, "held")
    t.join(30)
    assert doc["waiting"] is True and doc["exclusive"] is exclusive
    assert doc["exclusive"] or doc["maintenance"]  # what an older reader's conflict rule looks at
