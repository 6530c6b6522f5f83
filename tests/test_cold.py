"""Cold storage classes against moto's S3 (which models storage classes, InvalidObjectState and
RestoreObject): data packs written to GLACIER while trees and metadata stay readable, a restore
refused with exit 25 until thawed, the request / come back / restore flow of `restore --thaw`,
and a tier run into a cold repository. moto restores at once; the hours a real restore takes are
only a real cloud's (docs/CLOUD.md)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault.api import Repository
from weightvault.errors import ColdDataError, UsageError
from weightvault.testing.s3server import S3Endpoint, s3_endpoint


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with s3_endpoint() as ep:
        yield ep


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "run"
    write(src / "model.safetensors", os.urandom(2 * 1024 * 1024))
    write(src / "optimizer.pt", os.urandom(1024 * 1024))
    write(src / "config.json", b'{"hidden": 384}')
    return src


def _classes(s3: S3Endpoint, url: str) -> dict[str, str]:
    prefix = url.split("/", 3)[3] + "/"
    out: dict[str, str] = {}
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix):]] = o.get("StorageClass", "STANDARD")
    return out


def _cold_repo(s3: S3Endpoint, tmp_path: Path, cls: str = "GLACIER") -> tuple[str, Any, Repository, Path]:
    url = s3.url("cold")
    storage = dataclasses.replace(s3.storage, s3_storage_class=cls)
    repo = Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=storage)
    src = _src(tmp_path)
    repo.backup([src])
    return url, storage, repo, src


def test_only_data_packs_go_cold_and_metadata_stays_readable(s3: S3Endpoint, tmp_path: Path) -> None:
    url, storage, repo, _ = _cold_repo(s3, tmp_path)
    classes = _classes(s3, url)
    from weightvault.ops.thaw import packs_for

    data = packs_for(repo._repo, repo.find_snapshot("latest"))
    packs = {k.rsplit("/", 1)[-1]: v for k, v in classes.items() if k.startswith("data/")}
    assert data and all(packs[p] == "GLACIER" for p in data)
    assert any(v == "STANDARD" for p, v in packs.items() if p not in data)  # the tree pack
    assert all(v == "STANDARD" for k, v in classes.items() if not k.startswith("data/"))
    again = Repository.open(url, PASSWORD, storage=storage)  # keys, config, index, snapshots: readable
    assert {os.path.basename(n.path) for n in again.ls("latest")} >= {b"model.safetensors", b"config.json"}
    res = again.check()  # what cannot be read offline is a warning, never damage
    assert res.ok and res.cold_packs == len(data), res.errors
    assert all("offline storage class" in w for w in res.warnings)


def test_a_restore_of_cold_data_is_refused_until_thawed(s3: S3Endpoint, tmp_path: Path) -> None:
    _, _, repo, src = _cold_repo(s3, tmp_path)
    with pytest.raises(ColdDataError) as ei:
        repo.restore("latest", tmp_path / "out")
    assert ei.value.exit_code == 25 and "offline storage class" in str(ei.value)
    assert ei.value.hint and "--thaw" in ei.value.hint
    assert not (tmp_path / "out" / "run" / "model.safetensors").exists()  # nothing that looks complete
    first = repo.thaw("latest", days=2, tier="Bulk")
    assert first.requested == first.packs > 0 and first.bytes_requested >= 3 * 1024 * 1024 and not first.ready
    assert first.cost_usd >= 0 and "48 hours" in first.typical_wait
    second = repo.thaw("latest", days=2, tier="Bulk")  # moto restores at once: now online, nothing asked again
    assert second.ready and second.requested == 0
    repo.restore("latest", tmp_path / "out2", verify=True)
    assert tree_digest(tmp_path / "out2" / "run") == tree_digest(src)


def test_thaw_of_only_some_files_asks_for_fewer_packs(s3: S3Endpoint, tmp_path: Path) -> None:
    _, _, repo, _ = _cold_repo(s3, tmp_path)
    some = repo.thaw("latest", includes=["run/config.json"])
    assert 0 < some.packs <= repo.thaw("latest").packs
    with pytest.raises(UsageError, match="restore tier"):
        repo.thaw("latest", tier="Fast")
    local = Repository.init(tmp_path / "local", PASSWORD, kdf=FAST_KDF)
    local.backup([_src(tmp_path / "l")])
    with pytest.raises(UsageError, match="no cold storage"):
        local.thaw("latest")


def test_infrequent_access_classes_need_no_thaw(s3: S3Endpoint, tmp_path: Path) -> None:
    url, _, repo, src = _cold_repo(s3, tmp_path, "GLACIER_IR")
    assert "GLACIER_IR" in _classes(s3, url).values()
    assert repo.thaw("latest").ready
    repo.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)


def test_cli_restore_thaw_requests_then_comes_back_and_restores(s3: S3Endpoint, tmp_path: Path) -> None:
    url, _, _, src = _cold_repo(s3, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))

    def wv(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", "-r", url, "--s3-endpoint", s3.endpoint,
                               *map(str, args)], capture_output=True, text=True, env=env, timeout=300)

    plain = wv("restore", "latest", "--target", tmp_path / "a")
    assert plain.returncode == 25 and "--thaw" in plain.stderr, plain.stderr
    asked = wv("restore", "latest", "--target", tmp_path / "a", "--thaw", "--restore-tier", "Standard")
    assert asked.returncode == 25, asked.stderr
    assert "requested now" in asked.stderr and "run the same command again" in asked.stderr
    back = wv("restore", "latest", "--target", tmp_path / "a", "--thaw", "--verify")
    assert back.returncode == 0, back.stderr
    assert tree_digest(tmp_path / "a" / "run") == tree_digest(src)


def test_cli_restore_thaw_waits_within_the_timeout(s3: S3Endpoint, tmp_path: Path) -> None:
    url, _, _, src = _cold_repo(s3, tmp_path, "DEEP_ARCHIVE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(WEIGHTVAULT_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"))
    r = subprocess.run([sys.executable, "-m", "weightvault", "-r", url, "--s3-endpoint", s3.endpoint, "restore",
                        "latest", "--target", str(tmp_path / "b"), "--thaw", "--restore-timeout", "2min",
                        "--restore-poll", "1s"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("thaw ") >= 2  # asked, then looked again
    assert tree_digest(tmp_path / "b" / "run") == tree_digest(src)


def test_a_policy_repository_with_a_storage_class_gets_cold_packs_from_copy(s3: S3Endpoint, tmp_path: Path) -> None:
    """The policy's ``storage_class`` is what `copy` and `tier run` (the same fleet) write with."""
    from weightvault import api

    url = s3.url("arch")
    Repository.init(tmp_path / "hot", PASSWORD, kdf=FAST_KDF).backup([_src(tmp_path)])
    Repository.init(url, PASSWORD, kdf=FAST_KDF, storage=s3.storage)
    policy = tmp_path / "policy.toml"
    policy.write_text(f"""version = 1
[repositories.hot]
url = "{tmp_path / 'hot'}"
password_env = "WV_TEST_PW"
[repositories.arch]
url = "{url}"
tier = "archive"
storage_class = "DEEP_ARCHIVE"
s3_endpoint = "{s3.endpoint}"
password_env = "WV_TEST_PW"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(HOME=str(tmp_path / "home"), WV_TEST_PW=PASSWORD, WEIGHTVAULT_POLICY=str(policy))
    r = subprocess.run([sys.executable, "-m", "weightvault", "copy", "--from", "hot", "--to", "arch"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    packs = {k: v for k, v in _classes(s3, url).items() if k.startswith("data/")}
    assert "DEEP_ARCHIVE" in packs.values() and "STANDARD" in packs.values()  # data cold, the tree pack not
    bad = policy.read_text().replace('storage_class = "DEEP_ARCHIVE"', 'storage_class = "FROZEN"')
    with pytest.raises(api.ConfigFileError if hasattr(api, "ConfigFileError") else Exception, match="FROZEN"):
        api.parse_policy(bad)


def test_a_drill_of_cold_data_is_skipped_unless_allowed(s3: S3Endpoint, tmp_path: Path) -> None:
    _, _, repo, _ = _cold_repo(s3, tmp_path)
    skipped = repo.drill(level=1, record=False)
    assert skipped.skipped and "cold storage" in skipped.skipped and not skipped.ok and skipped.error is None
    asked = repo.drill(level=1, record=False, allow_cold=True)  # requests the restore: not online yet
    assert asked.skipped and "requested" in asked.skipped
    done = repo.drill(level=1, record=False, allow_cold=True)  # moto restored at once: drilled now
    assert done.ok and done.skipped is None and done.files == 3


def test_verify_skips_cold_files_with_a_reason_never_calls_them_damaged(s3: S3Endpoint, tmp_path: Path) -> None:
    _, _, repo, _ = _cold_repo(s3, tmp_path)
    res = repo.verify("latest")
    assert res.damaged == [] and len(res.cold) == 3 and res.files == 0
    repo.thaw("latest")
    repo.thaw("latest")  # moto: online now
    again = repo.verify("latest")
    assert again.ok and again.cold == [] and again.files == 3
