"""Backend wrappers: retries with backoff and jitter, concurrency and bandwidth limits, and the
fault injector's delay and periodic faults, the call counter, and capabilities forwarded by every
wrapper. Uses the in-memory and local backends; S3 is in tests/test_s3.py."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD
from weightvault.api import Repository, StorageOptions
from weightvault.backends.base import Backend, FileType
from weightvault.backends.factory import open_backend
from weightvault.backends.limits import LimitedBackend, TokenBucket, parse_rate
from weightvault.backends.local import LocalBackend
from weightvault.backends.memory import MemoryBackend
from weightvault.backends.retry import RetryingBackend, RetryPolicy
from weightvault.errors import BackendError, ObjectExistsError, ObjectNotFoundError, TransientBackendError
from weightvault.testing.backend_conformance import BackendConformance, LocalConformance
from weightvault.testing.counting import CountingBackend
from weightvault.testing.faults import FaultyBackend, transient_error

NAME = "ab" * 32


class TestRetryingBackendConforms(LocalConformance):
    def make_backend(self, tmp_path: Path) -> Backend:
        return RetryingBackend(LocalBackend(tmp_path / "repo"))


class TestLimitedBackendConforms(LocalConformance):
    def make_backend(self, tmp_path: Path) -> Backend:
        return LimitedBackend(LocalBackend(tmp_path / "repo"), max_concurrent=2, upload_bps=10**9, download_bps=10**9)


class TestCountingBackendConforms(LocalConformance):
    def make_backend(self, tmp_path: Path) -> Backend:
        return CountingBackend(LocalBackend(tmp_path / "repo"))


class TestUploadLimitedLocalConforms(LocalConformance):
    """What ``--limit-upload`` builds for a local repository (backends/factory.py)."""

    def make_backend(self, tmp_path: Path) -> Backend:
        backend = open_backend(tmp_path / "repo", StorageOptions(limit_upload=10**9, limit_download=10**9))
        assert isinstance(backend, LimitedBackend)
        return backend


class TestStackedWrappersOverMemoryConform(BackendConformance):
    """Every wrapper at once, over the in-memory backend (no temp objects, no retention)."""

    def make_backend(self, tmp_path: Path) -> Backend:
        return CountingBackend(FaultyBackend(LimitedBackend(RetryingBackend(MemoryBackend()), max_concurrent=4)))


# -- capabilities through wrappers -----------------------------------------------------------------
class _Retaining(MemoryBackend):
    """A store with retention and temp objects, recording what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.retained: list[tuple[FileType, str, datetime]] = []
        self.temp_calls: list[float] = []

    @property
    def supports_retention(self) -> bool:
        return True

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        self.load(ftype, name)
        self.retained.append((ftype, name, until))

    def remove_temp(self, min_age: float) -> int:
        self.temp_calls.append(min_age)
        return 3


_WRAPPERS: dict[str, Callable[[Backend], Backend]] = {
    "retry": RetryingBackend,
    "limits": lambda b: LimitedBackend(b, max_concurrent=1, upload_bps=10**9),
    "faults": FaultyBackend,
    "counting": CountingBackend,
}


@pytest.mark.parametrize("wrap", list(_WRAPPERS.values()), ids=list(_WRAPPERS))
def test_wrappers_forward_capabilities(wrap: Callable[[Backend], Backend]) -> None:
    inner = _Retaining()
    wrapped = wrap(inner)
    assert wrapped.supports_retention is True
    assert wrap(MemoryBackend()).supports_retention is False
    until = datetime.now(UTC) + timedelta(days=1)
    wrapped.save(FileType.SNAPSHOT, NAME, b"snap")
    wrapped.retain(FileType.SNAPSHOT, NAME, until)
    assert inner.retained == [(FileType.SNAPSHOT, NAME, until)]
    assert wrapped.remove_temp(42.0) == 3 and inner.temp_calls == [42.0]


def test_prune_removes_old_temp_files_under_the_upload_limit(tmp_path: Path) -> None:
    """With ``--limit-upload`` the local backend sits under a LimitedBackend; prune's cleanup of
    leftover temp files must still reach it (it used to find nothing and silently do nothing)."""
    path = tmp_path / "repo"
    storage = StorageOptions(limit_upload=10**9)
    assert isinstance(open_backend(path, storage), LimitedBackend)
    Repository.init(path, PASSWORD, kdf=FAST_KDF, storage=storage)
    stale = path / FileType.PACK.value / "ab" / ".tmp-0123456789abcdef"  # as LocalBackend.save names them
    fresh = path / FileType.INDEX.value / ".tmp-fedcba9876543210"
    for p in (stale, fresh):
        p.write_bytes(b"half written")
    long_ago = time.time() - 7 * 86400
    os.utime(stale, (long_ago, long_ago))
    res = Repository.open(path, PASSWORD, storage=storage).prune()
    assert res.temp_files_removed == 1
    assert not stale.exists()
    assert fresh.exists()  # younger than prune's TEMP_MIN_AGE: a save may still be writing it


# -- counting --------------------------------------------------------------------------------------
def test_counting_backend_counts_per_file_type() -> None:
    cb = CountingBackend(MemoryBackend())
    cb.save(FileType.PACK, NAME, b"0123456789")
    cb.save(FileType.INDEX, NAME, b"idx")
    assert cb.load(FileType.PACK, NAME, 2, 4) == b"2345"
    cb.load(FileType.PACK, NAME)
    with pytest.raises(ObjectNotFoundError):
        cb.load(FileType.SNAPSHOT, NAME)
    list(cb.list(FileType.SNAPSHOT))
    assert cb.loads[FileType.PACK] == 2 and cb.load_bytes[FileType.PACK] == 14
    assert cb.loads[FileType.SNAPSHOT] == 1 and cb.load_bytes[FileType.SNAPSHOT] == 0
    assert cb.lists[FileType.SNAPSHOT] == 1 and cb.lists[FileType.PACK] == 0
    assert cb.saves[FileType.PACK] == 1 and cb.save_bytes[FileType.PACK] == 10
    assert cb.saves[FileType.INDEX] == 1 and cb.save_bytes[FileType.INDEX] == 3
    cb.reset()
    assert not (cb.loads or cb.load_bytes or cb.lists or cb.saves or cb.save_bytes)
    assert cb.loads[FileType.PACK] == 0


def _retrying(inner: Backend, attempts: int = 5) -> tuple[RetryingBackend, list[float]]:
    sleeps: list[float] = []
    rb = RetryingBackend(inner, RetryPolicy(attempts=attempts, base_delay=1.0, max_delay=4.0),
                         sleep=sleeps.append, rng=random.Random(7))
    return rb, sleeps


def test_transient_errors_are_retried_with_capped_jittered_backoff() -> None:
    fb = FaultyBackend(MemoryBackend())
    fb.save(FileType.INDEX, NAME, b"data")
    fb.fail("load", error=transient_error, times=4)
    rb, sleeps = _retrying(fb, attempts=5)
    assert rb.load(FileType.INDEX, NAME) == b"data"
    assert rb.stats.retries == 4 and rb.stats.by_op == {"load": 4} and rb.stats.gave_up == 0
    caps = [1.0, 2.0, 4.0, 4.0]  # base * 2**(i-1), capped at max_delay
    assert len(sleeps) == 4 and all(0 <= s <= c for s, c in zip(sleeps, caps, strict=True))
    assert len(set(sleeps)) == 4  # jittered, not a fixed schedule


def test_retries_give_up_with_a_hint_and_exit_21() -> None:
    fb = FaultyBackend(MemoryBackend())
    fb.fail("stat", error=transient_error, times=10)
    rb, sleeps = _retrying(fb, attempts=3)
    with pytest.raises(TransientBackendError) as ei:
        rb.stat(FileType.INDEX, NAME)
    assert ei.value.exit_code == 21 and ei.value.hint and "3 attempts" in ei.value.hint
    assert rb.stats.retries == 2 and rb.stats.gave_up == 1 and len(sleeps) == 2


@pytest.mark.parametrize("error", [ObjectNotFoundError("x"), BackendError("access denied")])
def test_permanent_errors_are_not_retried(error: BackendError) -> None:
    fb = FaultyBackend(MemoryBackend())
    fb.fail("load", error=lambda t, n: error)
    rb, sleeps = _retrying(fb)
    with pytest.raises(type(error)):
        rb.load(FileType.INDEX, NAME)
    assert rb.stats.retries == 0 and sleeps == []


def test_create_only_save_that_landed_before_a_transient_error_succeeds() -> None:
    class LandsThenFails(MemoryBackend):
        """The first create-only save is stored, but its response is lost (a timeout)."""

        failed = False

        def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
            super().save(ftype, name, data, create_only=create_only)
            if not self.failed:
                self.failed = True
                raise TransientBackendError("response lost")

    inner = LandsThenFails()
    rb, _ = _retrying(inner)
    rb.save(FileType.LOCK, NAME, b"mine", create_only=True)  # no ObjectExistsError for our own object
    assert inner.load(FileType.LOCK, NAME) == b"mine"
    with pytest.raises(ObjectExistsError):  # someone else's lock is still refused
        rb.save(FileType.LOCK, NAME, b"theirs", create_only=True)


def test_create_only_save_that_the_storage_client_retried_itself_succeeds() -> None:
    """botocore retries a PUT whose answer was lost by itself; the retry finds the name taken
    (412), and no transient error ever reached us: an object holding our bytes is ours."""
    inner = MemoryBackend()
    inner.save(FileType.LOCK, NAME, b"mine", create_only=True)  # what the lost-answer attempt stored
    rb, _ = _retrying(inner)
    rb.save(FileType.LOCK, NAME, b"mine", create_only=True)
    assert rb.stats.retries == 0
    with pytest.raises(ObjectExistsError):
        rb.save(FileType.LOCK, NAME, b"theirs", create_only=True)


def test_listing_is_retried_as_a_whole() -> None:
    fb = FaultyBackend(MemoryBackend())
    for i in range(3):
        fb.save(FileType.INDEX, f"{i:02x}" * 32, b"x")
    fb.fail("list", error=transient_error)
    rb, _ = _retrying(fb)
    assert sorted(n for n, _ in rb.list(FileType.INDEX)) == sorted(f"{i:02x}" * 32 for i in range(3))


# -- limits ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [("50M", 50_000_000), ("50MB", 50_000_000), ("10MiB", 10 * 1024**2), ("800k", 800_000), ("1.5G", 1_500_000_000),
     ("2048", 2048), ("5MiB/s", 5 * 1024**2)],
)
def test_parse_rate(text: str, value: int) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["", "fast", "10X", "-5M", "0"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_token_bucket_paces_bytes() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(1000, clock=lambda: now[0], sleep=sleep)
    bucket.take(1000)  # the initial burst
    assert slept == []
    bucket.take(500)  # 500 bytes over budget at 1000 B/s: half a second
    assert slept == [pytest.approx(0.5)]
    now[0] += 2.0  # idle time refills at most one second's worth
    bucket.take(1000)
    assert len(slept) == 1
    bucket.take(3000)  # a large object passes after its time, never starved
    assert slept[-1] == pytest.approx(3.0)


def test_upload_limit_slows_saves_down() -> None:
    lb = LimitedBackend(MemoryBackend(), upload_bps=4 * 1024 * 1024)
    start = time.monotonic()
    for i in range(3):
        lb.save(FileType.PACK, f"{i:02x}" * 32, bytes(4 * 1024 * 1024))
    assert time.monotonic() - start >= 1.5  # 12 MiB at 4 MiB/s with a 4 MiB burst: >= 2 s nominal


def test_concurrency_limit_is_respected() -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    class Slow(MemoryBackend):
        def stat(self, ftype: FileType, name: str) -> int:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1
            return 0

    lb = LimitedBackend(Slow(), max_concurrent=2)
    threads = [threading.Thread(target=lb.stat, args=(FileType.INDEX, NAME)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2


# -- fault injector additions ---------------------------------------------------------------------
def test_fail_every_and_delay() -> None:
    fb = FaultyBackend(MemoryBackend())
    fb.save(FileType.INDEX, NAME, b"x")
    fb.fail_every(3)
    outcomes = []
    for _ in range(6):
        try:
            fb.stat(FileType.INDEX, NAME)
            outcomes.append("ok")
        except TransientBackendError:
            outcomes.append("fail")
    assert outcomes == ["ok", "ok", "fail", "ok", "ok", "fail"]
    fb.clear()
    fb.delay("load", seconds=0.05)
    start = time.monotonic()
    assert fb.load(FileType.INDEX, NAME) == b"x"  # delayed, not corrupted
    assert time.monotonic() - start >= 0.05
    fb.delay("save", seconds=0.0)
    fb.save(FileType.INDEX, "cd" * 32, b"y")  # delayed, not dropped
    assert fb.load(FileType.INDEX, "cd" * 32) == b"y"
