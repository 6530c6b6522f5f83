"""Crypto: AEAD envelopes, keyed blob ids, the KDF's defaults, and that secrets never leak."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from conftest import FAST_KDF, PASSWORD, write
from weightvault import api
from weightvault.backends.local import LocalBackend
from weightvault.codec.crypto import (
    KdfParams,
    MasterKey,
    derive_key,
    open_envelope,
    open_envelope_into_new,
    seal_envelope,
)
from weightvault.errors import IntegrityError
from weightvault.format.layout import KIND_INDEX, NONCE_SIZE, OVERHEAD, blob_aad, kind_aad
from weightvault.repository.repo import Repository as Engine
from weightvault.types import BlobType

KEY = bytes(range(32))
AAD = kind_aad(KIND_INDEX)


@pytest.mark.parametrize("size", [0, 1, 1000, 1 << 20])
def test_envelope_roundtrip(size: int) -> None:
    plain = os.urandom(size)
    env = seal_envelope(KEY, plain, AAD)
    assert len(env) == size + OVERHEAD
    assert open_envelope(KEY, env, AAD, "x") == plain
    assert open_envelope(KEY, memoryview(bytes(env)), AAD, "x") == plain
    opened = open_envelope_into_new(KEY, memoryview(bytes(env)), AAD, "x")
    assert isinstance(opened, bytearray) and opened == plain
    if size >= 16:
        assert plain[:16] not in bytes(env), "ciphertext must not contain the plaintext"


def test_nonces_are_fresh() -> None:
    envs = {bytes(seal_envelope(KEY, b"same plaintext", AAD)) for _ in range(50)}
    assert len(envs) == 50
    assert len({e[:NONCE_SIZE] for e in envs}) == 50


OPENERS = [open_envelope, open_envelope_into_new]


@pytest.mark.parametrize("opener", OPENERS)
def test_every_flipped_bit_is_detected(opener: Callable[[bytes, bytes, bytes, str], bytes | bytearray]) -> None:
    env = bytes(seal_envelope(KEY, b"forty bytes of a small document payload!", AAD))
    for pos in range(len(env)):
        for bit in (0x01, 0x80):
            bad = bytearray(env)
            bad[pos] ^= bit
            with pytest.raises(IntegrityError, match="index/abc: authentication failed"):
                opener(KEY, bytes(bad), AAD, "index/abc")


@pytest.mark.parametrize("opener", OPENERS)
def test_truncated_extended_or_wrong_key_is_detected(
    opener: Callable[[bytes, bytes, bytes, str], bytes | bytearray],
) -> None:
    env = bytes(seal_envelope(KEY, b"payload", AAD))
    for bad in (env[:-1], env[: OVERHEAD - 1], b"", env + b"\x00", env[1:]):
        with pytest.raises(IntegrityError):
            opener(KEY, bad, AAD, "x")
    with pytest.raises(IntegrityError):
        opener(bytes(32), env, AAD, "x")


def test_associated_data_binds_type_codec_and_id() -> None:
    mk = MasterKey.generate()
    data = b"tensor bytes" * 100
    bid = mk.blob_id(data)
    aad = blob_aad(BlobType.DATA, 0, bid)
    env = mk.seal(data, aad)
    assert mk.open(env, aad, "blob") == data
    other_id = mk.blob_id(b"another blob")
    wrongs = [blob_aad(BlobType.TREE, 0, bid), blob_aad(BlobType.DATA, 1, bid), blob_aad(BlobType.DATA, 0, other_id),
              kind_aad(KIND_INDEX), b""]
    for wrong in wrongs:
        with pytest.raises(IntegrityError):
            mk.open(env, wrong, "blob")


def test_blob_ids_are_keyed() -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    data = b"same weights"
    assert a.blob_id(data) == a.blob_id(data) == blake3.blake3(data, key=a.id_key).digest()
    assert a.blob_id(data) != b.blob_id(data)
    assert a.blob_id(data) != blake3.blake3(data).digest()


# -- KDF -----------------------------------------------------------------------------------------
def test_default_kdf_meets_owasp_minimum() -> None:
    p = KdfParams()
    assert p.memory_kib >= 19 * 1024 and p.time_cost >= 2 and p.parallelism >= 1
    p.validate()


def test_derive_key_depends_on_password_salt_and_params() -> None:
    salt = b"s" * 16
    k = derive_key(b"pw", salt, FAST_KDF)
    assert len(k) == 32 and derive_key(b"pw", salt, FAST_KDF) == k
    assert derive_key(b"pw2", salt, FAST_KDF) != k
    assert derive_key(b"pw", b"t" * 16, FAST_KDF) != k
    assert derive_key(b"pw", salt, KdfParams(FAST_KDF.memory_kib, FAST_KDF.time_cost + 1, 1)) != k


@pytest.mark.parametrize("params", [KdfParams(4, 1, 1), KdfParams(8192, 0, 1), KdfParams(8192, 1, 0),
                                    KdfParams(8 * 1024 * 1024, 1, 1)])
def test_invalid_kdf_params_refused(params: KdfParams) -> None:
    with pytest.raises(IntegrityError):
        derive_key(b"pw", b"s" * 16, params)


def test_new_repository_uses_default_kdf(tmp_path: Path) -> None:
    api.Repository.init(tmp_path / "repo", PASSWORD)
    (keyfile,) = (tmp_path / "repo" / "keys").iterdir()
    params = json.loads(keyfile.read_bytes())["kdf_params"]
    d = KdfParams()
    assert params == {"memory_kib": d.memory_kib, "time_cost": d.time_cost, "parallelism": d.parallelism}


# -- secrets stay secret -------------------------------------------------------------------------
def _encodings(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
            base64.urlsafe_b64encode(secret), base64.b64encode(secret).rstrip(b"=")]


def _secrets(path: Path) -> tuple[MasterKey, list[bytes]]:
    key = Engine.open(LocalBackend(path), PASSWORD.encode()).key
    forms = [f for s in (key.enc_key, key.id_key) for f in _encodings(s)]
    return key, [*forms, PASSWORD.encode()]


def test_no_plaintext_key_material_in_the_repository(repo_path: Path, repo: api.Repository, tmp_path: Path) -> None:
    write(tmp_path / "src" / "f.bin", os.urandom(300_000))
    repo.backup([tmp_path / "src"])
    repo.add_key("a second password", kdf=FAST_KDF)
    key, forms = _secrets(repo_path)
    files = [p for p in repo_path.rglob("*") if p.is_file()]
    assert len(files) >= 6
    for p in files:
        content = p.read_bytes()
        for f in forms:
            assert f not in content, f"{p.relative_to(repo_path)} contains secret material"
    for keyfile in (repo_path / "keys").iterdir():
        doc = json.loads(keyfile.read_bytes())
        assert set(doc) == {"version", "kdf", "kdf_params", "salt", "key", "created", "host", "user"}
        assert str(key.chunker_seed) not in json.dumps(doc)


def test_master_key_repr_hides_secrets(repo_path: Path, repo: api.Repository) -> None:
    key, forms = _secrets(repo_path)
    shown = "\n".join([repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})]).encode()
    assert b"redacted" in shown
    for f in forms:
        assert f not in shown
    for s in (key.enc_key, key.id_key):
        assert repr(s).encode() not in shown
    assert not hasattr(key, "__dict__")  # nothing for vars()/generic dumpers to walk


def test_logs_carry_no_secrets(repo_path: Path, repo: api.Repository, tmp_path: Path,
                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    src = write(tmp_path / "src" / "f.bin", os.urandom(100_000)).parent
    repo.backup([src])
    (repo_path / "index" / "0").write_bytes(b"not an index")  # provoke a logged warning
    again = api.Repository.open(repo_path, PASSWORD)
    again.check(read_data=True)
    with pytest.raises(Exception):  # noqa: B017 - any failure; we only inspect what was logged
        api.Repository.open(repo_path, "wrong password " + PASSWORD)
    _, forms = _secrets(repo_path)
    assert caplog.records, "expected the damaged index file to be logged"
    text = caplog.text.encode()
    for f in forms:
        assert f not in text
