"""KMS-wrapped repository keys (format version 6) against moto's KMS on 127.0.0.1: a repository
opened without a password by a host that may use the key, rotation, a revoked key, a key file
copied to another repository, the format read by independent code, older readers refusing a
version-6 repository, and the CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from conftest import FAST_KDF, PASSWORD, tree_digest, write
from weightvault.api import Repository
from weightvault.errors import IntegrityError, KeyServiceError, UnsupportedFormatError, UsageError, WrongPasswordError
from weightvault.testing.s3server import S3Endpoint, s3_endpoint


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Endpoint]:
    with s3_endpoint() as ep:  # moto's server answers KMS on the same port
        yield ep


@pytest.fixture
def kms(moto: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    monkeypatch.setenv("WEIGHTVAULT_KMS_ENDPOINT", moto.endpoint)
    return boto3.client("kms", endpoint_url=moto.endpoint, region_name="us-east-1")


def new_key(kms: Any) -> str:
    return str(kms.create_key(Description="weightvault test")["KeyMetadata"]["Arn"])


def _id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]  # moto's key-state calls take the key id


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "run"
    write(src / "model.safetensors", os.urandom(300_000))
    write(src / "config.json", b'{"hidden": 384}')
    return src


def _key_docs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_bytes()) for p in sorted((path / "keys").iterdir())]


def test_a_kms_repository_opens_without_a_password(kms: Any, tmp_path: Path) -> None:
    arn = new_key(kms)
    path = tmp_path / "repo"
    repo = Repository.init(path, None, kms=f"aws:{arn}")
    src = _src(tmp_path)
    repo.backup([src])
    assert json.loads((path / "config").read_bytes())["version"] == 7  # the version init writes (>= 6)
    [doc] = _key_docs(path)
    assert doc["kdf"] == "kms" and doc["kms"] == f"aws:{arn}" and doc["kms_key_id"] == arn and "salt" not in doc
    again = Repository.open(path, None)
    again.restore("latest", tmp_path / "out", verify=True)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    assert again.check(read_data=True).ok
    with pytest.raises(WrongPasswordError) as ei:  # a password opens only password keys; there are none
        Repository.open(path, PASSWORD)
    assert ei.value.hint and "KMS key when no password is given" in ei.value.hint


def test_the_key_file_holds_only_the_wrapped_key_as_format_md_says(kms: Any, tmp_path: Path) -> None:
    """Independent reader: KMS Decrypt of ``wrapped_key`` under the encryption context, then the
    ChaCha20-Poly1305 envelope with AAD b"wv1" || 0x05 || repository id (docs/FORMAT.md section 3)."""
    path = tmp_path / "repo"
    repo = Repository.init(path, None, kms=f"aws:{new_key(kms)}")
    [doc] = _key_docs(path)
    wrapped = base64.b64decode(doc["wrapped_key"])
    plain = kms.decrypt(CiphertextBlob=wrapped, EncryptionContext={"weightvault-repository": repo.id})["Plaintext"]
    assert len(plain) == 32 and plain not in (path / "keys" / os.listdir(path / "keys")[0]).read_bytes()
    env = base64.b64decode(doc["key"])
    secret = json.loads(ChaCha20Poly1305(plain).decrypt(env[:12], env[12:], b"wv1\x05" + repo.id.encode()))
    assert set(secret) == {"chunker_seed", "enc_key", "id_key"}
    with pytest.raises(Exception, match="InvalidCiphertext"):  # the context binds it to this repository
        kms.decrypt(CiphertextBlob=wrapped, EncryptionContext={"weightvault-repository": "0" * 64})


def test_rotation_keeps_every_snapshot_readable(kms: Any, tmp_path: Path) -> None:
    first, second = new_key(kms), new_key(kms)
    path = tmp_path / "repo"
    repo = Repository.init(path, None, kms=f"aws:{first}")
    src = _src(tmp_path)
    snap = repo.backup([src]).snapshot
    name, raised = repo.add_kms_key(f"aws:{second}")
    assert raised is None  # already version 6
    repo.add_key(PASSWORD, kdf=FAST_KDF)
    old = next(k.name for k in repo.list_keys() if k.kms == f"aws:{first}")
    with pytest.raises(UsageError, match="is using"):  # not the key this session opened with
        repo.remove_key(old)
    assert Repository.open(path, PASSWORD).remove_key(old) == old
    kms.disable_key(KeyId=_id(first))  # the old KMS key may go: nothing needs it any more
    for opened in (Repository.open(path, None), Repository.open(path, PASSWORD)):
        opened.restore(snap.id, tmp_path / f"out-{opened.current_key[:6]}", verify=True)
        assert tree_digest(tmp_path / f"out-{opened.current_key[:6]}" / "run") == tree_digest(src)
    assert Repository.open(path, None).current_key == name


@pytest.fixture
def iam_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, str]]:
    """A moto server that enforces IAM (after 4 unauthenticated calls: the readiness probe, then
    creating an admin): yields the admin's IAM and KMS clients and the endpoint; the process runs
    as user "host", whose policy allows kms:Decrypt and kms:GenerateDataKey."""
    import boto3

    from weightvault.testing.s3server import _free_port, _wait_ready

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ep = f"http://127.0.0.1:{port}"
        _wait_ready(ep, proc)
        allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1")
        iam.create_user(UserName="admin")
        k = iam.create_access_key(UserName="admin")["AccessKey"]
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(allow))
        admin = {"aws_access_key_id": k["AccessKeyId"], "aws_secret_access_key": k["SecretAccessKey"],
                 "region_name": "us-east-1", "endpoint_url": ep}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="host")
        hk = iam.create_access_key(UserName="host")["AccessKey"]
        use = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
                                                       "Action": ["kms:Decrypt", "kms:GenerateDataKey"]}]}
        iam.put_user_policy(UserName="host", PolicyName="use-key", PolicyDocument=json.dumps(use))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", hk["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", hk["SecretAccessKey"])
        monkeypatch.setenv("WEIGHTVAULT_KMS_ENDPOINT", ep)
        yield iam, boto3.client("kms", **admin), ep
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_revoked_kms_key_is_a_clear_error_and_a_password_key_still_opens(iam_moto: tuple[Any, Any, str],
                                                                          tmp_path: Path) -> None:
    iam, admin_kms, _ = iam_moto
    arn = new_key(admin_kms)
    path = tmp_path / "repo"
    repo = Repository.init(path, PASSWORD, kdf=FAST_KDF, kms=f"aws:{arn}")  # both keys, as the warning advises
    assert sorted(bool(k.kms) for k in repo.list_keys()) == [False, True]
    assert Repository.open(path, None).id == repo.id  # the host's role may use the key
    iam.delete_user_policy(UserName="host", PolicyName="use-key")  # revoked
    with pytest.raises(KeyServiceError) as ei:
        Repository.open(path, None)
    assert ei.value.exit_code == 24 and f"access to AWS KMS key {arn} denied" in str(ei.value)
    assert ei.value.hint and "kms:Decrypt" in ei.value.hint
    assert Repository.open(path, PASSWORD).id == repo.id  # the password key still opens it


@pytest.mark.parametrize(("code", "said"), [("DisabledException", "is disabled"),
                                            ("KMSInvalidStateException", "pending deletion"),
                                            ("NotFoundException", "does not exist")])
def test_a_disabled_or_deleted_key_is_named_as_such(code: str, said: str) -> None:
    """moto does not refuse Decrypt under a disabled key, so the translation of the errors AWS
    documents for it is checked on the error itself (docs/CLOUD.md names the gap)."""
    import botocore.exceptions

    from weightvault.kms.aws import AwsKms

    err = botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "Decrypt")
    out = AwsKms("arn:aws:kms:eu-west-1:1:key/k")._error(err, "arn:aws:kms:eu-west-1:1:key/k", "unwrap")
    assert isinstance(out, KeyServiceError) and said in str(out) and out.exit_code == 24


def test_a_kms_key_file_copied_to_another_repository_does_not_open_it(kms: Any, tmp_path: Path) -> None:
    arn = new_key(kms)
    a = Repository.init(tmp_path / "a", None, kms=f"aws:{arn}")
    Repository.init(tmp_path / "b", None, kms=f"aws:{arn}")
    for p in (tmp_path / "b" / "keys").iterdir():
        p.unlink()
    for p in (tmp_path / "a" / "keys").iterdir():
        (tmp_path / "b" / "keys" / p.name).write_bytes(p.read_bytes())
    with pytest.raises(IntegrityError, match="does not unwrap"):
        Repository.open(tmp_path / "b", None)
    assert Repository.open(tmp_path / "a", None).id == a.id


def test_adding_a_kms_key_raises_a_version_5_repository_which_older_readers_then_refuse(
        kms: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "repo"
    Repository.init(path, PASSWORD, kdf=FAST_KDF)
    doc = json.loads((path / "config").read_bytes())
    (path / "config").write_text(json.dumps({**doc, "version": 5}))  # as a format-5 weightvault made it
    repo = Repository.open(path, PASSWORD)
    _, raised = repo.add_kms_key(f"aws:{new_key(kms)}")
    assert raised == 5 and json.loads((path / "config").read_bytes())["version"] == 6
    assert Repository.open(path, None).id == repo.id == Repository.open(path, PASSWORD).id
    import weightvault.repository.config as config

    monkeypatch.setattr(config, "FORMAT_VERSION", 5)  # a weightvault that reads versions 1..5
    with pytest.raises(UnsupportedFormatError, match=r"1\.\.5"):
        Repository.open(path, PASSWORD)


def test_bad_specs_and_no_key_at_all_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a key service"):
        Repository.init(tmp_path / "r", None, kms="vault:transit/x")
    with pytest.raises(UsageError, match="needs a password or a KMS key"):
        Repository.init(tmp_path / "r2", None)
    repo = Repository.init(tmp_path / "r3", PASSWORD, kdf=FAST_KDF)
    with pytest.raises(WrongPasswordError, match="has no KMS key"):
        Repository.open(tmp_path / "r3", None)
    assert repo.id


def test_cli_init_kms_then_backup_restore_and_key_list_without_a_password(kms: Any, moto: S3Endpoint,
                                                                          tmp_path: Path) -> None:
    arn = new_key(kms)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    env.update(HOME=str(tmp_path / "home"), WEIGHTVAULT_KMS_ENDPOINT=moto.endpoint)
    path = tmp_path / "repo"

    def wv(*args: str | Path, repo: Path = path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", "-r", str(repo), *map(str, args)],
                              capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)

    r = wv("init", "--kms", f"aws:{arn}")
    assert r.returncode == 0 and "only the KMS key opens this repository" in r.stderr, r.stderr
    src = _src(tmp_path)
    for args in (("backup", src), ("restore", "latest", "--target", tmp_path / "out", "--verify")):
        r = wv(*args)
        assert r.returncode == 0, (args, r.stderr)
    assert tree_digest(tmp_path / "out" / "run") == tree_digest(src)
    keys = json.loads(wv("key", "list", "--json").stdout)
    assert [(k["kind"], k["kms"], k["current"]) for k in keys] == [("kms", f"aws:{arn}", True)]
    bad = wv("init", "--kms", "nope:x", repo=tmp_path / "other")
    assert bad.returncode == 2 and "not a key service" in bad.stderr and not (tmp_path / "other").exists()
    env["WEIGHTVAULT_KMS_ENDPOINT"] = "http://127.0.0.1:9"  # KMS unreachable from this host
    r = wv("snapshots")
    assert r.returncode == 24 and f"AWS KMS key {arn}" in r.stderr, r.stderr


def test_a_policy_repository_with_a_kms_key_needs_no_password_entry(kms: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from weightvault import api

    for k in ("WEIGHTVAULT_PASSWORD", "WEIGHTVAULT_PASSWORD_FILE"):
        monkeypatch.delenv(k, raising=False)
    a = Repository.init(tmp_path / "kms", None, kms=f"aws:{new_key(kms)}")
    Repository.init(tmp_path / "plain", PASSWORD, kdf=FAST_KDF)
    spec = api.parse_policy(f"""version = 1
[repositories.kms]
url = "{tmp_path / 'kms'}"
[repositories.plain]
url = "{tmp_path / 'plain'}"
""")
    fleet = api.Fleet(spec)
    assert fleet["kms"].id == a.id
    with pytest.raises(UsageError, match="no password for repository plain, and it has no KMS key"):
        fleet["plain"]
