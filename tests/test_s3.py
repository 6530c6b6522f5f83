"""The S3 backend against a real S3-compatible server (moto's standalone server on 127.0.0.1,
started by ``weightvault.testing.s3server``; or any endpoint given by WEIGHTVAULT_TEST_S3_ENDPOINT):
the conformance suite, multipart uploads, error classification, and backup/restore/check end to
end through the API and the CLI, with and without injected transient faults."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.exceptions
import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault.api import Repository, RetryPolicy, StorageOptions
from weightvault.backends.base import Backend, FileType
from weightvault.backends.factory import open_backend
from weightvault.backends.limits import LimitedBackend
from weightvault.backends.retry import RetryingBackend
from weightvault.backends.s3 import S3Backend, parse_s3_url
from weightvault.errors import BackendError, ImmutableError, ObjectExistsError, RepositoryNotFoundError, UsageError
from weightvault.repository.repo import Repository as Engine
from weightvault.testing.backend_conformance import BackendConformance
from weightvault.testing.faults import FaultyBackend
from weightvault.testing.s3server import S3Endpoint, s3_endpoint

pytest.importorskip("moto", reason="moto[server] is a dev dependency (pip install -e .[dev])")


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Endpoint]:
    with s3_endpoint() as ep:
        yield ep


def s3_backend(ep: S3Endpoint, **kw: int) -> S3Backend:
    bucket, prefix = parse_s3_url(ep.url("conf"))
    return S3Backend(bucket, prefix, endpoint_url=ep.endpoint, **kw)  # type: ignore[arg-type]


class TestS3Backend(BackendConformance):
    @pytest.fixture
    def backend(self, s3: S3Endpoint) -> Backend:
        b = s3_backend(s3)
        b.create()
        return b


class TestS3BackendMultipart(BackendConformance):
    """Small multipart settings: the large-object tests go through multipart uploads."""

    @pytest.fixture
    def backend(self, s3: S3Endpoint) -> Backend:
        b = s3_backend(s3, multipart_threshold=5 * 1024 * 1024, multipart_chunk=5 * 1024 * 1024, max_concurrency=4)
        b.create()
        return b


class TestRetryingS3Backend(BackendConformance):
    @pytest.fixture
    def backend(self, s3: S3Endpoint) -> Backend:
        b = open_backend(s3.url("retry"), s3.storage)
        b.create()
        return b


# -- URLs and errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [("s3://b", ("b", "")), ("s3://b/", ("b", "")), ("s3://b/x/y/", ("b", "x/y")),
     ("s3://my-bucket/runs", ("my-bucket", "runs"))],
)
def test_parse_s3_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url", ["s3://", "s3:///x", "http://b/x", "s3://b/x/../y", "s3://b//x"])
def test_bad_s3_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        parse_s3_url(url)


def test_missing_bucket_is_a_clear_permanent_error(s3: S3Endpoint) -> None:
    b = S3Backend("no-such-bucket-wv", "p", endpoint_url=s3.endpoint)
    with pytest.raises(BackendError) as ei:
        b.create()
    assert "does not exist" in str(ei.value) and ei.value.exit_code == 20
    assert ei.value.hint and "bucket" in ei.value.hint
    # permanent: the retrying wrapper does not retry it
    rb = RetryingBackend(b, RetryPolicy(attempts=5, base_delay=0.0))
    with pytest.raises(BackendError):
        rb.load(FileType.CONFIG, "config")
    assert rb.stats.retries == 0


def test_an_endpoint_that_never_answered_fails_fast_and_a_lost_one_is_transient(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket_port() as port:
        endpoint = f"http://127.0.0.1:{port}"
        b = open_backend("s3://b/p", StorageOptions(s3_endpoint=endpoint,
                                                     retry=RetryPolicy(attempts=3, base_delay=0.0)))
        with pytest.raises(BackendError) as ei:  # a wrong --s3-endpoint: no retries, the endpoint named
            b.stat(FileType.CONFIG, "config")
        assert ei.value.exit_code == 20 and f"cannot connect to the S3 endpoint {endpoint}" in str(ei.value)
        assert isinstance(b, LimitedBackend) and isinstance(b.inner, RetryingBackend)  # connections, then retries
        assert b.inner.stats.retries == 0
        s3b = b.inner.inner
        assert isinstance(s3b, S3Backend)
        s3b.reached = True  # it answered before: now a refused connection is a blip, retried, then exit 21
        with pytest.raises(BackendError) as ei:
            b.stat(FileType.CONFIG, "config")
    assert ei.value.exit_code == 21 and "transient" in str(ei.value)
    assert b.inner.stats.retries == 2 and b.inner.stats.gave_up == 1


class socket_port:
    """A local port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return int(self.s.getsockname()[1])  # bound, not listening: connections are refused

    def __exit__(self, *exc: object) -> None:
        self.s.close()


def test_conditional_create_is_used_or_detected(s3: S3Endpoint) -> None:
    b = s3_backend(s3)
    assert not b.reached
    b.create()
    assert b.reached  # the endpoint answered: from now on a refused connection is transient
    b.save(FileType.LOCK, "a" * 64, b"one", create_only=True)
    with pytest.raises(ObjectExistsError):
        b.save(FileType.LOCK, "a" * 64, b"two", create_only=True)
    assert b.conditional_create in (True, False)
    assert b.load(FileType.LOCK, "a" * 64) == b"one"


def test_prefixes_isolate_repositories(s3: S3Endpoint) -> None:
    a, b = s3_backend(s3), s3_backend(s3)
    a.create()
    b.create()
    a.save(FileType.INDEX, "1" * 64, b"x")
    assert list(b.list(FileType.INDEX)) == []
    assert list(a.list(FileType.INDEX)) == [("1" * 64, 1)]


# -- end to end ----------------------------------------------------------------------------------
def _source(root: Path) -> Path:
    src = root / "run"
    write(src / "model.safetensors", os.urandom(3 * 1024 * 1024) + bytes(1024 * 1024))
    write(src / "config.json", b'{"hidden": 384}')
    write(src / "logs" / "train.log", b"step 1 loss 0.9\n" * 1000)
    os.symlink("model.safetensors", src / "latest")
    return src


def test_backup_restore_check_through_s3(s3: S3Endpoint, tmp_path: Path) -> None:
    url = s3.url("e2e")
    repo = Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=s3.storage)
    assert repo.location.startswith("s3://")
    src = _source(tmp_path)
    first = repo.backup([src], tags=["run=s3"]).snapshot
    write(src / "config.json", b'{"hidden": 768}')
    repo.backup([src])
    again = Repository.open(url, PASSWORD, storage=s3.storage)
    assert next(s.id for s in again.snapshots()) == first.id
    again.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    assert again.check(read_data=True).ok
    with pytest.raises(RepositoryNotFoundError):
        Repository.open(s3.url("nothing-here"), PASSWORD, storage=s3.storage)


def test_forget_and_prune_through_s3_beside_a_running_client(s3: S3Endpoint, tmp_path: Path) -> None:
    """Two-phase prune on object storage: condemned while another client holds a lock, deleted by
    the next prune once it is gone; what is kept restores and checks clean."""
    from weightvault.backends.factory import open_backend as _open
    from weightvault.repository.locks import hold_lock

    url = s3.url("prune")
    repo = Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=s3.storage)
    src = _source(tmp_path)
    old = repo.backup([src]).snapshot.id
    write(src / "model.safetensors", os.urandom(2 * 1024 * 1024))
    repo.backup([src])
    before = repo.stats().repository_bytes
    with hold_lock(_open(url, s3.storage), exclusive=False):
        first = repo.forget([old], prune=True).prune
        assert first is not None and first.pending_packs >= 1 and first.deleted_packs == 0
    second = repo.prune()
    assert second.deleted_packs >= 1 and second.pending_packs == 0
    assert repo.stats().repository_bytes < before - 3 * 1024 * 1024
    again = Repository.open(url, PASSWORD, storage=s3.storage)
    again.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    assert again.check(read_data=True).ok


def test_copy_from_local_disk_to_s3_and_back(s3: S3Endpoint, tmp_path: Path) -> None:
    """Replication to object storage: copy into S3 (another key), restore from there, copy back."""
    local = Repository.init(tmp_path / "local", PASSWORD, kdf=FAST_KDF)
    src = _source(tmp_path)
    local.backup([src])
    write(src / "config.json", b'{"hidden": 1024}')
    local.backup([src])
    remote = Repository.init(s3.url("replica"), "remote password", kdf=FAST_KDF, storage=s3.storage)
    res = local.copy_to(remote)
    assert len(res.copied) == 2 and res.packs_verified >= 1
    remote.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    assert remote.check(read_data=True).ok
    back = Repository.init(tmp_path / "back", PASSWORD, kdf=FAST_KDF)
    assert len(remote.copy_to(back).copied) == 2
    back.restore("latest", tmp_path / "out2")
    assert tree_digest(tmp_path / "out2" / "run") == tree_digest(src)


def test_retention_locked_snapshot_gets_s3_object_lock(s3: S3Endpoint, tmp_path: Path) -> None:
    """With Object Lock on the bucket, a snapshot backed up with a retention lock has its objects
    (snapshot, packs, keys, config) retained until the same date: S3 refuses to delete them."""
    import dataclasses
    from datetime import UTC, datetime, timedelta

    import botocore.exceptions

    if s3.external:
        pytest.skip("needs a bucket with Object Lock created by the test")
    bucket = f"locked-{os.urandom(4).hex()}"
    client = s3.client()
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    storage = dataclasses.replace(s3.storage, s3_object_lock="GOVERNANCE")
    url = f"s3://{bucket}/repo"
    repo = Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=storage)
    src = _source(tmp_path)
    plain = repo.backup([src]).snapshot
    until = datetime.now(UTC) + timedelta(days=3)
    locked = repo.backup([src], lock_until=until).snapshot

    def retention(key: str) -> datetime | None:
        until: datetime | None = client.head_object(Bucket=bucket, Key=key).get("ObjectLockRetainUntilDate")
        return until

    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    packs = [k for k in keys if "/data/" in k]
    assert retention(f"repo/snapshots/{plain.id}") is None
    got = retention(f"repo/snapshots/{locked.id}")
    assert got is not None and abs((got - until).total_seconds()) < 2
    assert all(retention(k) is not None for k in packs)  # the second backup reused every pack
    assert retention("repo/config") is not None
    assert all(retention(k) is not None for k in keys if "/keys/" in k)
    assert all(retention(k) is None for k in keys if "/index/" in k)  # prune may rewrite the index
    version = client.head_object(Bucket=bucket, Key=packs[0])["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        client.delete_object(Bucket=bucket, Key=packs[0], VersionId=version)
    assert "AccessDenied" in str(ei.value)
    with pytest.raises(ImmutableError):
        repo.forget([locked.id])


def test_backup_survives_one_in_five_requests_failing(s3: S3Endpoint, tmp_path: Path) -> None:
    """Transient faults on every 5th request: the retrying wrapper absorbs them all."""
    url = s3.url("flaky")
    Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=s3.storage)
    bucket, prefix = parse_s3_url(url)
    faulty = FaultyBackend(S3Backend(bucket, prefix, endpoint_url=s3.endpoint))
    retrying = RetryingBackend(faulty, RetryPolicy(attempts=4, base_delay=0.0))
    faulty.fail_every(5)
    eng = Engine.open(retrying, PASSWORD.encode())
    src = _source(tmp_path)
    from weightvault.ops.backup import backup
    from weightvault.ops.restore import restore

    with eng.lock():
        snap = backup(eng, [str(src)]).snapshot
        restore(eng, snap, str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    assert retrying.stats.retries >= 3 and retrying.stats.gave_up == 0
    assert len(faulty.fired) == retrying.stats.retries


def test_cli_with_s3_url_and_endpoint(s3: S3Endpoint, tmp_path: Path) -> None:
    url = s3.url("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))

    def wv(*args: str | Path, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "weightvault", "-r", url, "--s3-endpoint", s3.endpoint,
                               "--limit-upload", "200MiB", *map(str, args)],
                              env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert proc.returncode == code, proc.stdout + proc.stderr
        return proc

    wv("init", "--delta-depth", "4")
    src = _source(tmp_path)
    wv("backup", src)
    wv("restore", "latest", "--target", tmp_path / "out")
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    wv("check", "--read-data")
    assert wv("init", code=13).returncode == 13
    bad = subprocess.run([sys.executable, "-m", "weightvault", "-r", url, "--limit-upload", "fast", "snapshots"],
                         env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and "--limit-upload" in bad.stderr


def test_large_pack_uses_multipart_and_round_trips(s3: S3Endpoint) -> None:
    b = s3_backend(s3, multipart_threshold=5 * 1024 * 1024, multipart_chunk=5 * 1024 * 1024)
    b.create()
    data = os.urandom(13 * 1024 * 1024 + 7)
    name = hashlib.sha256(data).hexdigest()
    b.save(FileType.PACK, name, data)
    head = s3.client().head_object(Bucket=b.bucket, Key=b._key(FileType.PACK, name))
    assert "-" in head["ETag"]  # a multipart ETag is "<md5 of part md5s>-<parts>"
    assert b.load(FileType.PACK, name, 12 * 1024 * 1024, 1024) == data[12 << 20 : (12 << 20) + 1024]


def test_remove_temp_aborts_stale_multipart_uploads_under_the_prefix(s3: S3Endpoint) -> None:
    """An interrupted multipart save leaves an incomplete upload (invisible, still billed):
    remove_temp aborts those older than min_age under this repository's prefix, nothing else."""
    b, other = s3_backend(s3), s3_backend(s3)  # two repositories in one bucket
    b.create()
    client, name = s3.client(), "ab" * 32
    mine = client.create_multipart_upload(Bucket=b.bucket, Key=b._key(FileType.PACK, name))["UploadId"]
    theirs = client.create_multipart_upload(Bucket=other.bucket, Key=other._key(FileType.PACK, name))["UploadId"]
    try:
        started = {u["UploadId"]: u["Initiated"] for u in client.list_multipart_uploads(Bucket=b.bucket)["Uploads"]}
        if abs(datetime.now(UTC) - started[mine]) < timedelta(minutes=10):  # moto reports a fixed date in 2010
            assert b.remove_temp(3600.0) == 0  # just started: it may be a save still running
            time.sleep(1.1)
        assert b.remove_temp(0.5) == 1
        left = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=b.bucket).get("Uploads", [])}
        assert mine not in left and theirs in left
        assert b.remove_temp(0.0) == 0
    finally:
        client.abort_multipart_upload(Bucket=other.bucket, Key=other._key(FileType.PACK, name), UploadId=theirs)


def test_remove_temp_keeps_multipart_uploads_younger_than_min_age() -> None:
    """The age rule, with a stub client (moto reports every upload as started in 2010)."""
    now = datetime.now(UTC)
    uploads = [{"Key": "p/data/ab/old", "UploadId": "old", "Initiated": now - timedelta(hours=2)},
               {"Key": "p/data/ab/new", "UploadId": "new", "Initiated": now - timedelta(minutes=1)}]
    aborted: list[str] = []

    class Client:
        def get_paginator(self, op: str) -> Client:
            assert op == "list_multipart_uploads"
            return self

        def paginate(self, *, Bucket: str, Prefix: str) -> list[dict[str, object]]:
            assert (Bucket, Prefix) == ("b", "p/")
            return [{"Uploads": uploads}]

        def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> None:
            aborted.append(UploadId)

    assert S3Backend("b", "p", client=Client()).remove_temp(3600.0) == 1
    assert aborted == ["old"]
    # a repository at the bucket's root: another program's upload there is not ours to abort
    uploads[:] = [{"Key": "videos/big.mp4", "UploadId": "foreign", "Initiated": now - timedelta(days=3)},
                  {"Key": "index/cd", "UploadId": "ours", "Initiated": now - timedelta(days=3)}]
    aborted.clear()

    class RootClient(Client):
        def paginate(self, *, Bucket: str, Prefix: str) -> list[dict[str, object]]:
            return [{"Uploads": uploads}]

    assert S3Backend("b", "", client=RootClient()).remove_temp(3600.0) == 1
    assert aborted == ["ours"]


def test_remove_temp_without_permission_to_list_uploads_warns(caplog: pytest.LogCaptureFixture) -> None:
    """A policy without s3:ListBucketMultipartUploads (docs/S3.md's lists) must not fail prune."""
    denied = {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}

    class Client:
        def get_paginator(self, op: str) -> Client:
            return self

        def paginate(self, **kw: str) -> list[dict[str, object]]:
            raise botocore.exceptions.ClientError(denied, "ListMultipartUploads")  # type: ignore[arg-type]

    assert S3Backend("b", "p", client=Client()).remove_temp(3600.0) == 0
    assert "access denied" in caplog.text


def test_many_writers_at_once_lose_nothing(s3: S3Endpoint, tmp_path: Path) -> None:
    """Four writer processes (four "hosts") back up into one S3 repository at the same time, twice;
    the sources share a large file, so the writers race to store the same blobs. Afterwards check
    --read-data is clean and every snapshot restores exactly."""
    url = s3.url("writers")
    Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=s3.storage)
    shared = os.urandom(6 * 1024 * 1024)
    sources = []
    for i in range(4):
        src = tmp_path / f"node{i}" / "run"
        write(src / "shared.bin", shared)
        write(src / f"rank{i}.bin", os.urandom(2 * 1024 * 1024 + i))
        write(src / "log.txt", f"node {i}\n".encode() * 500)
        sources.append(src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    expected: dict[str, dict[str, tuple[str, object]]] = {}
    for round_ in range(2):
        procs = [
            subprocess.Popen([sys.executable, "-m", "weightvault", "-r", url, "--s3-endpoint", s3.endpoint,
                              "backup", str(src), "--host", f"node{i}", "--tag", f"round={round_}", "--json"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            for i, src in enumerate(sources)
        ]
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()
            snap_id = json.loads(out)["snapshot"]["id"]
            expected[snap_id] = tree_digest(sources[i])
        for i, src in enumerate(sources):  # change every source between rounds
            write(src / "log.txt", f"node {i} round {round_ + 1}\n".encode() * 500)
    repo = Repository.open(url, PASSWORD, storage=s3.storage)
    assert {s.id for s in repo.snapshots()} == set(expected)
    result = repo.check(read_data=True)
    assert result.ok, result.errors
    for snap_id, digest in expected.items():
        target = tmp_path / "out" / snap_id
        repo.restore(snap_id, target, verify=True)
        assert tree_digest(target / "run") == digest
    # the shared file's blobs are stored, possibly more than once under the race, but are all readable
    assert repo.stats(None).files == 4 * 3 * 2


def test_killed_backup_resumes_reusing_uploaded_packs(s3: S3Endpoint, tmp_path: Path) -> None:
    """SIGKILL a backup after its first pack reached the bucket; the next backup adopts the
    uploaded packs and uploads only the rest."""
    import signal
    import time

    url = s3.url("resume")
    Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=s3.storage)
    src = tmp_path / "run"
    for i in range(4):
        write(src / f"shard{i}.bin", os.urandom(20 * 1024 * 1024))
    total = 80 * 1024 * 1024
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    base = [sys.executable, "-m", "weightvault", "-r", url, "--s3-endpoint", s3.endpoint]
    bucket, prefix = parse_s3_url(url)
    client = s3.client()

    def packs() -> int:
        return int(client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/data/").get("KeyCount", 0))

    with subprocess.Popen([*base, "--limit-upload", "24M", "backup", str(src)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 120
        while packs() == 0:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    uploaded = packs()
    assert uploaded >= 1
    repo = Repository.open(url, PASSWORD, storage=s3.storage)
    assert repo.snapshots() == []  # nothing committed
    second = subprocess.run([*base, "backup", str(src), "--json"], env=env, capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stderr
    added = json.loads(second.stdout)["snapshot"]["summary"]["stored_bytes_added"]
    assert added <= total - uploaded * 30 * 1024 * 1024  # each adopted pack (~32 MiB) was not uploaded again
    repo = Repository.open(url, PASSWORD, storage=s3.storage)
    assert repo.check(read_data=True).ok
    repo.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)


def test_missing_credentials_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with socket_port() as port:
        b = open_backend("s3://b/p", StorageOptions(s3_endpoint=f"http://127.0.0.1:{port}"))
        with pytest.raises(BackendError) as ei:
            b.stat(FileType.CONFIG, "config")
    assert ei.value.exit_code == 20 and "no S3 credentials" in str(ei.value)
    assert ei.value.hint and "AWS_ACCESS_KEY_ID" in ei.value.hint


def test_locks_on_object_storage(s3: S3Endpoint) -> None:
    """Shared locks coexist; an exclusive lock is refused while one is held, and vice versa; a
    lock file is removed when its holder finishes."""
    from weightvault.errors import RepositoryLockedError
    from weightvault.repository.locks import hold_lock, list_locks

    url = s3.url("locks")
    Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=s3.storage)
    backend = open_backend(url, s3.storage)
    with hold_lock(backend, exclusive=False), hold_lock(backend, exclusive=False):
        assert len(list_locks(backend)) == 2
        with pytest.raises(RepositoryLockedError), hold_lock(backend, exclusive=True):
            pass
    with hold_lock(backend, exclusive=True), pytest.raises(RepositoryLockedError), \
            hold_lock(backend, exclusive=False):
        pass
    assert list_locks(backend) == []
