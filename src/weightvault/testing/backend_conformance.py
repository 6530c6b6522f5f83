"""The backend conformance suite: the contract of ``weightvault.backends.base`` as pytest tests.

Subclass it in a test module (the subclass name must start with ``Test``) and override
``make_backend``; every backend must pass it unchanged::

    class TestLocalBackend(BackendConformance):
        def make_backend(self, tmp_path: Path) -> Backend:
            return LocalBackend(tmp_path / "repo")

``make_backend`` returns a backend on which ``create()`` has not been called yet. A backend that
leaves temporary objects overrides ``plant_temp`` too, so ``remove_temp``'s age rule is tested;
``LocalConformance`` does that for a ``LocalBackend`` at ``tmp_path / "repo"``, bare or wrapped::

    class TestRetryingBackend(LocalConformance):
        def make_backend(self, tmp_path: Path) -> Backend:
            return RetryingBackend(LocalBackend(tmp_path / "repo"))
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from weightvault.backends.base import THAW_STATES, Backend, FileType, data_pack_saves
from weightvault.backends.local import LocalBackend
from weightvault.errors import BackendError, ObjectExistsError, ObjectNotFoundError, TransientBackendError

__all__ = ["BackendConformance", "LocalConformance"]

_NAMED = [t for t in FileType if t is not FileType.CONFIG]


def _name(i: int) -> str:
    return f"{i:02x}" + os.urandom(31).hex()


class BackendConformance:
    """Contract tests. Not collected itself (no ``Test`` prefix); subclasses are."""

    def make_backend(self, tmp_path: Path) -> Backend:
        raise NotImplementedError("override make_backend in the subclass")

    def plant_temp(self, backend: Backend, tmp_path: Path, age: float) -> Callable[[], bool] | None:
        """Leave a temporary object as an interrupted save on ``backend`` would, ``age`` seconds
        old, and return a function telling whether it still exists. The default, None: this
        backend leaves none (or the suite cannot age one), so only the count is checked."""
        return None

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        b = self.make_backend(tmp_path)
        b.create()
        return b

    # -- save / load -----------------------------------------------------------------------------
    @pytest.mark.parametrize("ftype", list(FileType), ids=lambda t: t.value)
    def test_save_load_roundtrip(self, backend: Backend, ftype: FileType) -> None:
        name = "config" if ftype is FileType.CONFIG else _name(7)
        data = os.urandom(1000) + b"\x00" * 100
        backend.save(ftype, name, data)
        assert backend.load(ftype, name) == data
        assert backend.stat(ftype, name) == len(data)
        assert list(backend.list(ftype)) == [(name, len(data))]

    def test_empty_object(self, backend: Backend) -> None:
        name = _name(1)
        backend.save(FileType.INDEX, name, b"")
        assert backend.load(FileType.INDEX, name) == b""
        assert backend.stat(FileType.INDEX, name) == 0

    def test_ranges(self, backend: Backend) -> None:
        name = _name(2)
        data = os.urandom(4096)
        backend.save(FileType.PACK, name, data)
        assert backend.load(FileType.PACK, name, 0, 10) == data[:10]
        assert backend.load(FileType.PACK, name, 100, 1000) == data[100:1100]
        assert backend.load(FileType.PACK, name, 4000) == data[4000:]
        assert backend.load(FileType.PACK, name, 4088, 8) == data[-8:]
        assert backend.load(FileType.PACK, name, 0, None) == data

    def test_range_past_end_raises(self, backend: Backend) -> None:
        name = _name(3)
        backend.save(FileType.PACK, name, b"x" * 100)
        with pytest.raises(BackendError):
            backend.load(FileType.PACK, name, 90, 20)
        with pytest.raises(BackendError):
            backend.load(FileType.PACK, name, 200, 1)

    def test_missing_object(self, backend: Backend) -> None:
        for ftype in FileType:
            name = "config" if ftype is FileType.CONFIG else _name(4)
            with pytest.raises(ObjectNotFoundError):
                backend.load(ftype, name)
            with pytest.raises(ObjectNotFoundError):
                backend.load(ftype, name, 0, 10)
            with pytest.raises(ObjectNotFoundError):
                backend.stat(ftype, name)

    def test_large_object(self, backend: Backend) -> None:
        name = _name(5)
        data = os.urandom(24 * 1024 * 1024 + 123)
        backend.save(FileType.PACK, name, data)
        assert backend.stat(FileType.PACK, name) == len(data)
        assert backend.load(FileType.PACK, name, 17 * 1024 * 1024, 1 << 20) == data[17 << 20 : 18 << 20]
        assert backend.load(FileType.PACK, name) == data

    # -- listing ---------------------------------------------------------------------------------
    def test_list_by_type(self, backend: Backend) -> None:
        saved: dict[FileType, dict[str, int]] = {}
        for ftype in _NAMED:
            saved[ftype] = {}
            for i in range(5):
                name, data = _name(i * 40), os.urandom(i * 10 + 1)
                backend.save(ftype, name, data)
                saved[ftype][name] = len(data)
        for ftype in _NAMED:
            listed = list(backend.list(ftype))
            assert len(listed) == len(saved[ftype])  # no duplicates
            assert dict(listed) == saved[ftype]
        assert list(backend.list(FileType.CONFIG)) == []

    def test_list_empty(self, backend: Backend) -> None:
        for ftype in FileType:
            assert list(backend.list(ftype)) == []

    # -- remove ----------------------------------------------------------------------------------
    def test_remove_is_idempotent(self, backend: Backend) -> None:
        name = _name(6)
        backend.save(FileType.LOCK, name, b"lock")
        backend.remove(FileType.LOCK, name)
        with pytest.raises(ObjectNotFoundError):
            backend.load(FileType.LOCK, name)
        assert list(backend.list(FileType.LOCK)) == []
        backend.remove(FileType.LOCK, name)
        backend.remove(FileType.PACK, _name(9))  # never existed

    def test_remove_only_named_object(self, backend: Backend) -> None:
        a, b = _name(1), _name(1)
        backend.save(FileType.SNAPSHOT, a, b"a")
        backend.save(FileType.SNAPSHOT, b, b"b")
        backend.save(FileType.INDEX, a, b"index")
        backend.remove(FileType.SNAPSHOT, a)
        assert dict(backend.list(FileType.SNAPSHOT)) == {b: 1}
        assert backend.load(FileType.INDEX, a) == b"index"

    # -- create-only and overwrite ---------------------------------------------------------------
    def test_create_only(self, backend: Backend) -> None:
        name = _name(8)
        backend.save(FileType.LOCK, name, b"first", create_only=True)
        with pytest.raises(ObjectExistsError) as ei:
            backend.save(FileType.LOCK, name, b"second", create_only=True)
        assert name in str(ei.value)
        assert backend.load(FileType.LOCK, name) == b"first"
        assert list(backend.list(FileType.LOCK)) == [(name, 5)]

    def test_create_only_race_has_one_winner(self, backend: Backend) -> None:
        name = _name(10)
        wins: list[int] = []
        losses: list[int] = []
        barrier = threading.Barrier(8)

        def contend(i: int) -> None:
            barrier.wait()
            try:
                backend.save(FileType.LOCK, name, f"owner {i}".encode(), create_only=True)
                wins.append(i)
            except ObjectExistsError:
                losses.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and len(losses) == 7
        assert backend.load(FileType.LOCK, name) == f"owner {wins[0]}".encode()

    def test_overwrite(self, backend: Backend) -> None:
        name = _name(11)
        backend.save(FileType.LOCK, name, b"old")
        backend.save(FileType.LOCK, name, b"new and longer")
        assert backend.load(FileType.LOCK, name) == b"new and longer"
        backend.save(FileType.LOCK, name, b"new and longer")  # same bytes again: idempotent
        assert list(backend.list(FileType.LOCK)) == [(name, 14)]

    def test_overwrite_is_atomic_for_readers(self, backend: Backend) -> None:
        name = _name(12)
        versions = [bytes([v]) * (64 * 1024 * (v + 1)) for v in range(4)]
        backend.save(FileType.LOCK, name, versions[0])
        stop = threading.Event()
        seen: list[bytes] = []

        def read() -> None:
            while not stop.is_set():
                seen.append(backend.load(FileType.LOCK, name))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for i in range(40):
                backend.save(FileType.LOCK, name, versions[i % 4])
        finally:
            stop.set()
            reader.join()
        assert seen
        assert all(s in versions for s in seen), "a reader saw a partial or mixed object"

    # -- misc ------------------------------------------------------------------------------------
    def test_location_and_free_space(self, backend: Backend) -> None:
        assert isinstance(backend.location, str) and backend.location
        free, total = backend.free_space(), backend.total_space()
        assert free is None or free >= 0
        assert total is None or (total > 0 and (free is None or free <= total))

    # -- capabilities ----------------------------------------------------------------------------
    def test_supports_retention_is_a_constant_bool(self, backend: Backend) -> None:
        assert type(backend.supports_retention) is bool
        assert backend.supports_retention == backend.supports_retention

    def test_retain_works_or_refuses_clearly(self, backend: Backend) -> None:
        name = _name(13)
        backend.save(FileType.SNAPSHOT, name, b"snapshot")
        until = datetime.now(UTC) + timedelta(minutes=5)
        if backend.supports_retention:
            backend.retain(FileType.SNAPSHOT, name, until)
            backend.retain(FileType.SNAPSHOT, name, until)  # idempotent
            with pytest.raises(ObjectNotFoundError):
                backend.retain(FileType.SNAPSHOT, _name(14), until)
        else:
            with pytest.raises(BackendError, match="retention is not supported") as ei:
                backend.retain(FileType.SNAPSHOT, name, until)
            assert not isinstance(ei.value, (TransientBackendError, ObjectNotFoundError))
        assert backend.load(FileType.SNAPSHOT, name) == b"snapshot"

    def test_thaw_of_an_online_object_or_a_clear_refusal(self, backend: Backend) -> None:
        assert type(backend.supports_cold) is bool and backend.supports_cold == backend.supports_cold
        name = _name(16)
        with data_pack_saves():
            backend.save(FileType.PACK, name, b"pack")  # a data pack: a cold class may take it, if set
        if backend.supports_cold:
            assert backend.thaw(FileType.PACK, name, 1, "Standard") in THAW_STATES
            with pytest.raises(ObjectNotFoundError):
                backend.thaw(FileType.PACK, _name(17), 1, "Standard")
        else:
            with pytest.raises(BackendError, match="cold storage is not supported") as ei:
                backend.thaw(FileType.PACK, name, 1, "Standard")
            assert not isinstance(ei.value, (TransientBackendError, ObjectNotFoundError))
            assert backend.load(FileType.PACK, name) == b"pack"

    # -- temporary objects -----------------------------------------------------------------------
    def test_remove_temp_never_removes_complete_objects(self, backend: Backend) -> None:
        saved = {t: ("config" if t is FileType.CONFIG else _name(15), os.urandom(50)) for t in FileType}
        for t, (name, data) in saved.items():
            backend.save(t, name, data)
        n = backend.remove_temp(0.0)
        assert type(n) is int and n >= 0
        for t, (name, data) in saved.items():
            assert backend.load(t, name) == data
            assert list(backend.list(t)) == [(name, len(data))]
        assert backend.remove_temp(0.0) == 0  # nothing left to remove the second time

    def test_remove_temp_removes_only_stale_temp_objects(self, backend: Backend, tmp_path: Path) -> None:
        stale = self.plant_temp(backend, tmp_path, 7200.0)
        fresh = self.plant_temp(backend, tmp_path, 0.0)
        name = _name(16)
        backend.save(FileType.PACK, name, b"pack")
        if stale is None or fresh is None:
            assert backend.remove_temp(3600.0) == 0
        else:
            assert stale() and fresh()
            assert backend.remove_temp(3600.0) == 1
            assert not stale(), "a temp object older than min_age was kept"
            assert fresh(), "a temp object younger than min_age (a save in progress?) was removed"
            assert backend.remove_temp(3600.0) == 0
        assert list(backend.list(FileType.PACK)) == [(name, 4)]


class LocalConformance(BackendConformance):
    """The suite for a ``LocalBackend`` at ``tmp_path / "repo"``, bare (the default) or under
    wrappers (override ``make_backend``); it plants ``.tmp-*`` files the way LocalBackend names
    the temp files of its saves."""

    def make_backend(self, tmp_path: Path) -> Backend:
        return LocalBackend(tmp_path / "repo")

    def plant_temp(self, backend: Backend, tmp_path: Path, age: float) -> Callable[[], bool] | None:
        path = tmp_path / "repo" / FileType.PACK.value / "ab" / f".tmp-{secrets.token_hex(8)}"
        path.write_bytes(b"half a pack")
        then = time.time() - age
        os.utime(path, (then, then))
        return path.exists
