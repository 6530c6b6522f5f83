"""Azure Blob (``az://``, obstore) and Google Cloud Storage (``gs://``, google-cloud-storage)
against real emulators on 127.0.0.1 (Azurite from npm, gcp-storage-emulator from PyPI, started by
``weightvault.testing.cloudemu``): the conformance suite, error classification, backup / restore /
check / forget + prune end to end through the API and the CLI, and copy between S3, Azure and GCS.

One gap is the emulator's, not ours: gcp-storage-emulator ignores ``ifGenerationMatch``, so the
race between two create-only saves cannot be decided there (real GCS enforces it); the test that
the precondition is sent stands in for it (docs/CLOUD.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault.api import Repository, RetryPolicy, StorageOptions
from weightvault.backends.azure import AzureBackend, azure_settings, parse_az_url
from weightvault.backends.base import Backend, FileType
from weightvault.backends.factory import open_backend
from weightvault.backends.gcs import GcsBackend, parse_gs_url
from weightvault.backends.limits import LimitedBackend
from weightvault.backends.retry import RetryingBackend
from weightvault.errors import BackendError, ObjectExistsError, UsageError
from weightvault.testing.backend_conformance import BackendConformance
from weightvault.testing.cloudemu import AZURITE_KEY, AzureEndpoint, GcsEndpoint, azurite, gcs_emulator
from weightvault.testing.s3server import s3_endpoint


@pytest.fixture(scope="module")
def az() -> Iterator[AzureEndpoint]:
    with azurite() as ep:
        yield ep


@pytest.fixture(scope="module")
def gs() -> Iterator[GcsEndpoint]:
    with gcs_emulator() as ep:
        yield ep


def az_backend(ep: AzureEndpoint, name: str = "conf", multipart_threshold: int = 256 << 20,
               access_tier: str | None = None) -> AzureBackend:
    container, prefix = parse_az_url(ep.url(name))
    return AzureBackend(container, prefix, settings=azure_settings(ep.endpoint, env=ep.env),
                        multipart_threshold=multipart_threshold, access_tier=access_tier)


def gs_backend(ep: GcsEndpoint, name: str = "conf") -> GcsBackend:
    bucket, prefix = parse_gs_url(ep.url(name))
    return GcsBackend(bucket, prefix, endpoint=ep.endpoint)


class TestAzureBackend(BackendConformance):
    @pytest.fixture
    def backend(self, az: AzureEndpoint) -> Backend:
        b = az_backend(az)
        b.create()
        return b


class TestAzureBackendBlocks(BackendConformance):
    """A small block threshold: the large-object tests go through staged blocks + a block list."""

    @pytest.fixture
    def backend(self, az: AzureEndpoint) -> Backend:
        b = az_backend(az, multipart_threshold=1024 * 1024)
        b.create()
        return b


class TestRetryingAzureBackend(BackendConformance):
    @pytest.fixture
    def backend(self, az: AzureEndpoint, monkeypatch: pytest.MonkeyPatch) -> Backend:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", az.connection_string)
        b = open_backend(az.url("retry"), az.storage)
        b.create()
        return b


class TestGcsBackend(BackendConformance):
    @pytest.fixture
    def backend(self, gs: GcsEndpoint) -> Backend:
        b = gs_backend(gs)
        b.create()
        return b

    def test_create_only_race_has_one_winner(self, backend: Backend) -> None:
        pytest.skip("gcp-storage-emulator ignores ifGenerationMatch; test_gcs_create_only_sends_the_precondition"
                    " checks the request instead (docs/CLOUD.md)")


# -- URLs, credentials, errors ---------------------------------------------------------------------
def test_urls_parse_or_are_refused() -> None:
    assert parse_az_url("az://models/runs/a/") == ("models", "runs/a")
    assert parse_gs_url("gs://my_bucket.x") == ("my_bucket.x", "")
    for bad in ("az://Models/x", "az://ab/x", "az://a--b/x", "az://models/x/../y", "az://models//x"):
        with pytest.raises(UsageError):
            parse_az_url(bad)
    for bad in ("gs://", "gs://B/x", "gs://b/x/./y"):
        with pytest.raises(UsageError):
            parse_gs_url(bad)


def test_azure_credentials_come_from_the_usual_variables_and_never_show() -> None:
    cs = ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S3CRETKEY==;EndpointSuffix=core.windows.net")
    s = azure_settings(env={"AZURE_STORAGE_CONNECTION_STRING": cs})
    assert (s.account, s.endpoint, dict(s.secrets)) == ("acct", "https://acct.blob.core.windows.net",
                                                        {"access_key": "S3CRETKEY=="})
    assert "S3CRETKEY" not in repr(s)
    cli = azure_settings(env={"AZURE_STORAGE_ACCOUNT": "a2", "AZURE_STORAGE_SAS_TOKEN": "?sv=1&sig=SIG"})
    assert (cli.account, dict(cli.secrets)) == ("a2", {"sas_key": "sv=1&sig=SIG"})
    restic = azure_settings("http://127.0.0.1:1/x", env={"AZURE_ACCOUNT_NAME": "a3", "AZURE_ACCOUNT_KEY": "K"})
    assert (restic.account, restic.endpoint) == ("a3", "http://127.0.0.1:1/x")
    assert dict(restic.secrets) == {"access_key": "K"}
    with pytest.raises(UsageError, match="AccountName"):
        azure_settings(env={"AZURE_STORAGE_CONNECTION_STRING": "AccountKey=x"})


def test_azure_missing_container_bad_key_and_dead_endpoint_are_clear(az: AzureEndpoint,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    settings = azure_settings(az.endpoint, env=az.env)
    missing = AzureBackend("no-such-container", "p", settings=settings)
    with pytest.raises(BackendError) as ei:
        missing.create()
    assert "container 'no-such-container' does not exist" in str(ei.value) and ei.value.exit_code == 20
    rb = RetryingBackend(missing, RetryPolicy(attempts=5, base_delay=0.0))
    with pytest.raises(BackendError):
        rb.save(FileType.INDEX, "1" * 64, b"x")
    assert rb.stats.retries == 0  # permanent: not retried
    wrong = azure_settings(az.endpoint, env={"AZURE_STORAGE_ACCOUNT": "devstoreaccount1",
                                             "AZURE_STORAGE_KEY": "QUJD" + AZURITE_KEY[4:]})
    with pytest.raises(BackendError) as ei:
        AzureBackend(az.container, "p", settings=wrong).save(FileType.INDEX, "1" * 64, b"x")
    assert "access denied" in str(ei.value) and ei.value.hint and "AZURE_STORAGE" in ei.value.hint
    assert AZURITE_KEY[8:] not in str(ei.value)
    for k in [k for k in os.environ if k.startswith("AZURE_")]:
        monkeypatch.delenv(k)
    with pytest.raises(BackendError, match="Account must be specified") as ei:  # no credentials at all
        open_backend(az.url("none"))
    assert ei.value.hint and "AZURE_STORAGE_CONNECTION_STRING" in ei.value.hint
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", az.connection_string)
    b = open_backend(az.url("dead"), StorageOptions(azure_endpoint="http://127.0.0.1:9/devstoreaccount1",
                                                     retry=RetryPolicy(attempts=3, base_delay=0.0)))
    with pytest.raises(BackendError) as ei:
        b.stat(FileType.CONFIG, "config")
    assert ei.value.exit_code == 20 and "cannot connect to the Azure endpoint" in str(ei.value)
    assert isinstance(b, LimitedBackend) and isinstance(b.inner, RetryingBackend) and b.inner.stats.retries == 0


def test_gcs_missing_bucket_and_dead_endpoint_are_clear(gs: GcsEndpoint) -> None:
    b = GcsBackend("no-such-bucket-wv", "p", endpoint=gs.endpoint)
    with pytest.raises(BackendError) as ei:
        b.create()
    assert "bucket 'no-such-bucket-wv' does not exist" in str(ei.value) and ei.value.exit_code == 20
    b2 = open_backend(gs.url("dead"), StorageOptions(gcs_endpoint="http://127.0.0.1:9",
                                                      retry=RetryPolicy(attempts=3, base_delay=0.0)))
    with pytest.raises(BackendError) as ei:
        b2.stat(FileType.CONFIG, "config")
    assert ei.value.exit_code == 20 and "cannot connect to the GCS endpoint" in str(ei.value)


def test_gcs_requests_start_no_background_threads(gs: GcsEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """google-cloud-storage's bucket-metadata cache would fetch each bucket's metadata in a thread
    of its own on a download or a listing, retrying for minutes once the endpoint is gone (its
    retries' jitter then changed the global random state under unrelated tests): the backend
    turns it off."""
    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    b = open_backend(gs.url("nothreads"), StorageOptions(gcs_endpoint=gs.endpoint))
    b.save(FileType.INDEX, "0" * 64, b"x")
    assert b.load(FileType.INDEX, "0" * 64) == b"x" and b.stat(FileType.INDEX, "0" * 64) == 1
    assert [n for n, _ in b.list(FileType.INDEX)] == ["0" * 64]
    assert not [n for n in started if "background" in n], started


def test_gcs_create_only_sends_the_precondition(gs: GcsEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the emulator cannot decide is at least asked of the store: ``ifGenerationMatch=0``."""
    import google.cloud.storage.blob as gblob

    seen: list[object] = []
    real = gblob.Blob.upload_from_string

    def spy(self: gblob.Blob, data: bytes, *args: object, **kwargs: object) -> None:
        seen.append(kwargs.get("if_generation_match"))
        real(self, data, *args, **kwargs)

    monkeypatch.setattr(gblob.Blob, "upload_from_string", spy)
    b = gs_backend(gs)
    b.save(FileType.LOCK, "a" * 64, b"one", create_only=True)
    with pytest.raises(ObjectExistsError):
        b.save(FileType.LOCK, "a" * 64, b"two", create_only=True)
    b.save(FileType.INDEX, "b" * 64, b"x")
    assert seen == [0, None] and b.load(FileType.LOCK, "a" * 64) == b"one"


# -- end to end ----------------------------------------------------------------------------------
def _source(root: Path) -> Path:
    src = root / "run"
    write(src / "model.safetensors", os.urandom(3 * 1024 * 1024) + bytes(1024 * 1024))
    write(src / "config.json", b'{"hidden": 384}')
    write(src / "logs" / "train.log", b"step 1 loss 0.9\n" * 1000)
    os.symlink("model.safetensors", src / "latest")
    return src


@pytest.fixture(params=["az", "gs"])
def cloud(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, StorageOptions]:
    ep = request.getfixturevalue(request.param)
    for k, v in ep.env.items():
        monkeypatch.setenv(k, v)
    return ep.url("e2e"), ep.storage


def test_backup_restore_check_forget_prune(cloud: tuple[str, StorageOptions], tmp_path: Path) -> None:
    url, storage = cloud
    repo = Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=storage)
    src = _source(tmp_path)
    old = repo.backup([src], tags=["run=cloud"]).snapshot
    write(src / "model.safetensors", os.urandom(2 * 1024 * 1024))
    repo.backup([src])
    again = Repository.open(url, PASSWORD, storage=storage)
    again.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    assert again.check(read_data=True).ok
    before = again.stats().repository_bytes
    res = again.forget([old.id], prune=True).prune
    assert res is not None and res.deleted_packs >= 1
    assert again.stats().repository_bytes < before - 2 * 1024 * 1024
    again.restore("latest", tmp_path / "out2", verify=True)
    assert tree_digest(tmp_path / "out2" / "run") == tree_digest(src)
    assert again.check(read_data=True).ok


def test_copy_between_s3_azure_and_gcs(az: AzureEndpoint, gs: GcsEndpoint, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A hot S3 repository replicated to Azure and to GCS; each replica restores what was backed up."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", az.connection_string)
    src = _source(tmp_path)
    with s3_endpoint() as s3:
        hot = Repository.init(s3.url("hot"), PASSWORD, kdf=FAST_KDF, storage=s3.storage)
        hot.backup([src])
        write(src / "config.json", b'{"hidden": 1024}')
        hot.backup([src])
        on_az = Repository.init(az.url("replica"), "azure password", kdf=FAST_KDF, storage=az.storage)
        assert len(hot.copy_to(on_az).copied) == 2
    on_gs = Repository.init(gs.url("replica"), "gcs password", kdf=FAST_KDF, storage=gs.storage)
    assert len(on_az.copy_to(on_gs).copied) == 2  # Azure -> GCS, no S3 needed any more
    for i, repo in enumerate((on_az, on_gs)):
        repo.restore("latest", tmp_path / f"out{i}", verify=True)
        assert tree_digest(tmp_path / f"out{i}" / "run") == tree_digest(src)
        assert repo.check(read_data=True).ok


def test_cli_backup_and_restore_with_environment_credentials(az: AzureEndpoint, gs: GcsEndpoint,
                                                             tmp_path: Path) -> None:
    src = _source(tmp_path)
    for name, ep in (("az", az), ("gs", gs)):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WEIGHTVAULT_", "AZURE_"))}
        env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"), **ep.env)
        url = ep.url("cli")

        def wv(*args: str | Path, env: dict[str, str] = env, url: str = url) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "weightvault", "-r", url, *map(str, args)],
                                  capture_output=True, text=True, env=env, timeout=300)

        for args in (("init",), ("backup", src), ("check", "--read-data"), ("restore", "latest", "--target",
                                                                            tmp_path / f"cli-{name}", "--verify")):
            r = wv(*args)
            assert r.returncode == 0, (name, args, r.stderr)
        assert tree_digest(tmp_path / f"cli-{name}" / "run") == tree_digest(src)
        snaps = wv("snapshots", "--json")
        assert snaps.returncode == 0 and len(json.loads(snaps.stdout)) == 1, snaps.stderr


@pytest.mark.parametrize("which", ["az", "gs"])
def test_backup_restore_through_injected_faults(which: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault-injecting proxy (503, reset, lost answer after the write, 1.5 s delay) in front of
    the emulator answers one request in six with a fault: backup, restore and check complete
    through the retries, and what was restored is what was backed up."""
    import dataclasses
    import urllib.parse

    ep = request.getfixturevalue(which)
    for k, v in ep.env.items():
        monkeypatch.setenv(k, v)
    up = urllib.parse.urlsplit(ep.endpoint)
    counts = tmp_path / "faults.json"
    proxy = subprocess.Popen([sys.executable, "-m", "weightvault.testing.s3faults", "--upstream",
                              f"{up.scheme}://{up.netloc}", "--rate", "0.17", "--seed", "11", "--counts", str(counts)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None
        faulty = proxy.stdout.readline().split()[-1] + up.path  # the account's path, for Azurite
        retry = RetryPolicy(attempts=10, base_delay=0.01, max_delay=0.2)
        storage = dataclasses.replace(ep.storage, retry=retry,
                                      **({"azure_endpoint": faulty} if which == "az" else {"gcs_endpoint": faulty}))
        url = ep.url("faults")
        repo = Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=storage)
        src = _source(tmp_path)
        repo.backup([src])
        repo.restore("latest", tmp_path / "out", verify=True)
        assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
        assert repo.check().ok
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        if proxy.stdout is not None:
            proxy.stdout.close()
    fired = json.loads(counts.read_text())
    assert fired["503"] + fired["reset"] + fired["lost-answer"] >= 3, fired  # the retries had work to do
    direct = Repository.open(url, PASSWORD, storage=ep.storage)  # no proxy: what was stored is whole
    assert direct.check(read_data=True).ok


def test_azure_access_tier_applies_to_data_packs_and_archive_is_refused(az: AzureEndpoint, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", az.connection_string)
    import dataclasses

    url = az.url("tier")
    storage = dataclasses.replace(az.storage, azure_access_tier="Cool")
    repo = Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=storage)
    src = _source(tmp_path)
    repo.backup([src])
    prefix = url.split("/", 3)[3] + "/"
    client = BlobServiceClient.from_connection_string(az.connection_string).get_container_client(az.container)
    tiers = {b.name[len(prefix):]: b.blob_tier for b in client.list_blobs(name_starts_with=prefix)}
    packs = {k: v for k, v in tiers.items() if k.startswith("data/")}
    assert "Cool" in packs.values() and "Hot" in packs.values()  # data packs Cool, the tree pack not
    assert all(v == "Hot" for k, v in tiers.items() if not k.startswith("data/"))
    repo.restore("latest", tmp_path / "out", verify=True)  # Cool is online
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    archived = next(k for k, v in packs.items() if v == "Cool")
    client.get_blob_client(prefix + archived).set_standard_blob_tier("Archive")  # someone archived it
    with pytest.raises(BackendError) as ei:
        Repository.open(url, PASSWORD, storage=az.storage).restore("latest", tmp_path / "out2")
    assert ei.value.exit_code == 25 and "Archive tier" in str(ei.value) and "--thaw" in str(ei.value.hint)


def test_azure_archive_tier_is_thawed_by_rehydration(az: AzureEndpoint, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Data packs in the Archive tier: a restore is refused (exit 25) until `thaw` asks for their
    rehydration (Set Blob Tier to Cool, priority from the tier); Azurite rehydrates at once."""
    import dataclasses

    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", az.connection_string)
    url = az.url("archive")
    repo = Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=dataclasses.replace(az.storage,
                                                                                     azure_access_tier="Archive"))
    src = _source(tmp_path)
    repo.backup([src])
    assert repo.check().ok and repo.check().cold_packs >= 1
    with pytest.raises(BackendError) as ei:
        repo.restore("latest", tmp_path / "out")
    assert ei.value.exit_code == 25
    first = repo.thaw("latest", tier="Expedited")
    assert first.requested == first.packs >= 1 and not first.ready
    prefix = url.split("/", 3)[3] + "/"
    client = BlobServiceClient.from_connection_string(az.connection_string).get_container_client(az.container)
    assert {b.blob_tier for b in client.list_blobs(name_starts_with=prefix + "data/")} >= {"Cool"}
    assert repo.thaw("latest").ready
    repo.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
