"""Pin the on-disk format, version 1, against docs/FORMAT.md.

These tests parse real repositories byte by byte with independent code (struct, cryptography,
blake3, zstandard, argon2) rather than the engine's own decoders, so a change to the format that
is not also a change to the spec fails here. Every future format change bumps the config version
and adds a test to this file.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path
from typing import Any

import blake3
import pytest
import zstandard
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.errors import IntegrityError, UnsupportedFormatError, WrongPasswordError
from weightvault.format.layout import CREATE_VERSION, FORMAT_VERSION, KIND_PACK_HEADER, blob_aad, kind_aad
from weightvault.repository.index import encode_index_file
from weightvault.repository.packer import PackBuilder, read_pack_header
from weightvault.repository.repo import Repository as Engine
from weightvault.types import BlobType

# The spec's constants, written out literally so that the code cannot drift from them silently.
ENTRY = struct.Struct("<BBHII32s")
TRAILER_MAGIC = b"WVP1"
AAD_BLOB, AAD_PACK_HEADER, AAD_INDEX, AAD_SNAPSHOT, AAD_KEY = (b"wv1" + bytes((k,)) for k in range(1, 6))


def engine(path: Path) -> Engine:
    return Engine.open(LocalBackend(path), PASSWORD.encode())


def open_env(key: bytes, env: bytes, aad: bytes) -> bytes:
    assert len(env) >= 12 + 16
    return ChaCha20Poly1305(key).decrypt(env[:12], env[12:], aad)


def decode_payload(codec: int, payload: bytes, raw_len: int) -> bytes:
    if codec == 0:
        out = payload
    else:
        assert codec == 1
        out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_len)
    assert len(out) == raw_len
    return out


def open_document(key: bytes, stored: bytes, aad: bytes) -> Any:
    plain = open_env(key, stored, aad)
    codec, raw_len = plain[0], struct.unpack("<Q", plain[1:9])[0]
    raw = decode_payload(codec, plain[9:], raw_len)
    doc = json.loads(raw)
    # canonical JSON: compact separators, sorted keys, UTF-8
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return doc


def files_in(root: Path, sub: str) -> list[Path]:
    return sorted(p for p in (root / sub).rglob("*") if p.is_file())


def set_config(repo_path: Path, **fields: object) -> None:
    doc = json.loads((repo_path / "config").read_bytes())
    doc.update(fields)
    (repo_path / "config").write_text(json.dumps(doc))


def backed_up(repo: Repository, tmp_path: Path) -> Path:
    """A source tree with a compressible file, an incompressible one, a symlink and a non-UTF-8 name."""
    src = tmp_path / "exp"
    write(src / "weights.bin", os.urandom(700_000))
    write(src / "log.txt", b"step 1 loss 0.5\n" * 40_000)
    write(src / "empty", b"")
    os.symlink("weights.bin", src / "latest")
    write(Path(os.fsdecode(os.fsencode(src) + b"/\xff-raw.bin")), b"not utf-8 name")
    res = repo.backup([src])
    assert res.errors == []
    return src


# -- versioning ----------------------------------------------------------------------------------


def test_newer_format_version_is_refused_with_exit_code_16(repo: Repository, repo_path: Path) -> None:
    set_config(repo_path, version=FORMAT_VERSION + 1)
    with pytest.raises(UnsupportedFormatError) as ei:
        Repository.open(repo_path, PASSWORD)
    assert ei.value.exit_code == 16
    msg = str(ei.value)
    assert f"version {FORMAT_VERSION + 1}" in msg
    assert f"1..{FORMAT_VERSION}" in msg
    assert ei.value.hint is not None and "upgrade" in ei.value.hint


@pytest.mark.parametrize("version", [0, -1, "1", 1.5, None])
def test_invalid_format_versions_are_refused(repo: Repository, repo_path: Path, version: object) -> None:
    set_config(repo_path, version=version)
    with pytest.raises(UnsupportedFormatError):
        Repository.open(repo_path, PASSWORD)


def test_current_version_opens(repo: Repository, repo_path: Path) -> None:
    assert json.loads((repo_path / "config").read_bytes())["version"] == CREATE_VERSION == 7
    assert FORMAT_VERSION == 7
    set_config(repo_path, version=1)  # rewritten, non-canonical JSON is still accepted (v1 still reads)
    assert Repository.open(repo_path, PASSWORD).id == repo.id


@pytest.mark.parametrize("fmt", ["restic", "weightvault-repository-v2", None])
def test_other_format_name_is_refused(repo: Repository, repo_path: Path, fmt: object) -> None:
    set_config(repo_path, format=fmt)
    with pytest.raises(UnsupportedFormatError) as ei:
        Repository.open(repo_path, PASSWORD)
    assert ei.value.exit_code == 16
    assert "not a weightvault repository" in str(ei.value)


# -- directory layout, config and key files ------------------------------------------------------


def test_directory_layout(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    backed_up(repo, tmp_path)
    top = sorted(p.name for p in repo_path.iterdir())
    assert top == ["config", "data", "index", "keys", "ledger", "locks", "plans", "snapshots"]
    assert sorted(p.name for p in (repo_path / "data").iterdir()) == [f"{i:02x}" for i in range(256)]
    for pack in files_in(repo_path, "data"):
        assert pack.parent.name == pack.name[:2]
        assert len(pack.name) == 64
    assert len(files_in(repo_path, "keys")) == 1
    assert files_in(repo_path, "locks") == []  # released after the backup
    assert not [p for p in repo_path.rglob(".*")]  # no temp files left behind
    for p in repo_path.rglob("*"):
        if p.is_file():
            assert p.stat().st_mode & 0o777 == 0o600, p


def test_config_document_fields(repo: Repository, repo_path: Path) -> None:
    doc = json.loads((repo_path / "config").read_bytes())
    assert doc["format"] == "weightvault-repository"
    assert set(doc) == {
        "format", "version", "id", "created", "chunker", "pack_size", "compression_level", "delta_max_depth"
    }
    assert doc["delta_max_depth"] == 8
    assert doc["id"] == repo.id and len(doc["id"]) == 64 and bytes.fromhex(doc["id"])
    assert doc["chunker"] == {"min": 256 * 1024, "avg": 1024 * 1024, "max": 8 * 1024 * 1024}
    assert doc["pack_size"] == 32 * 1024 * 1024
    assert doc["compression_level"] == 3


def test_key_file_unwraps_with_spec_algorithms(repo: Repository, repo_path: Path) -> None:
    (key_path,) = files_in(repo_path, "keys")
    raw = key_path.read_bytes()
    assert key_path.name == blake3.blake3(raw).hexdigest()
    doc = json.loads(raw)
    assert doc["version"] == 1 and doc["kdf"] == "argon2id"
    p = doc["kdf_params"]
    assert (p["memory_kib"], p["time_cost"], p["parallelism"]) == (FAST_KDF.memory_kib, FAST_KDF.time_cost, 1)
    salt = base64.b64decode(doc["salt"])
    assert len(salt) == 16
    wrap = hash_secret_raw(
        secret=PASSWORD.encode(),
        salt=salt,
        time_cost=p["time_cost"],
        memory_cost=p["memory_kib"],
        parallelism=p["parallelism"],
        hash_len=32,
        type=Type.ID,
    )
    envelope = base64.b64decode(doc["key"])
    secret = json.loads(open_env(wrap, envelope, AAD_KEY + repo.id.encode("ascii")))
    assert set(secret) == {"enc_key", "id_key", "chunker_seed"}
    eng = engine(repo_path)
    assert base64.b64decode(secret["enc_key"]) == eng.key.enc_key
    assert base64.b64decode(secret["id_key"]) == eng.key.id_key
    assert secret["chunker_seed"] == eng.key.chunker_seed
    # the envelope is bound to this repository's id
    other_id = os.urandom(32).hex().encode()
    with pytest.raises(InvalidTag):
        open_env(wrap, envelope, AAD_KEY + other_id)


def test_key_file_copied_to_another_repository_is_refused(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    Repository.init(other, "another password", kdf=FAST_KDF)
    for k in files_in(other, "keys"):
        k.unlink()
    (key_path,) = files_in(repo_path, "keys")
    (other / "keys" / key_path.name).write_bytes(key_path.read_bytes())
    with pytest.raises(WrongPasswordError):
        Repository.open(other, PASSWORD)


# -- packs and blobs -----------------------------------------------------------------------------


def test_pack_layout_byte_by_byte(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    src = backed_up(repo, tmp_path)
    eng = engine(repo_path)
    enc_key, id_key = eng.key.enc_key, eng.key.id_key
    packs = files_in(repo_path, "data")
    assert packs
    seen_codecs: set[int] = set()
    plaintexts: dict[bytes, bytes] = {}
    for pack in packs:
        data = pack.read_bytes()
        assert blake3.blake3(data).hexdigest() == pack.name  # unkeyed BLAKE3 of the whole file
        assert data[-4:] == TRAILER_MAGIC
        (hlen,) = struct.unpack("<I", data[-8:-4])
        header_start = len(data) - 8 - hlen
        header = open_env(enc_key, data[header_start:-8], AAD_PACK_HEADER)
        assert header and len(header) % 44 == 0 and ENTRY.size == 44
        offset = 0
        types = set()
        for i in range(0, len(header), 44):
            btype, codec, flags, length, raw_len, bid = ENTRY.unpack_from(header, i)
            assert btype in (1, 2) and codec in (0, 1) and flags == 0
            types.add(btype)
            seen_codecs.add(codec)
            env = data[offset : offset + length]
            plain = decode_payload(codec, open_env(enc_key, env, AAD_BLOB + bytes((btype, codec)) + bid), raw_len)
            assert blake3.blake3(plain, key=id_key).digest() == bid  # keyed BLAKE3 of the plaintext
            if codec == 1:
                assert env != plain and length < raw_len + 28
            else:
                assert length == raw_len + 28
            plaintexts[bid] = plain
            entry = eng.index.get(bid)
            assert entry is not None and entry.pack_id == pack.name
            assert (entry.blob.offset, entry.blob.length, entry.blob.raw_length) == (offset, length, raw_len)
            offset += length
        assert offset == header_start  # blobs tile the pack up to the header
        assert len(types) == 1  # v1 writers keep DATA and TREE blobs in separate packs
    assert seen_codecs == {0, 1}  # random data is stored raw, the log compresses
    # blobs concatenate to the files, in manifest order
    snap = repo.find_snapshot("latest")
    files = {n.path: n for n in repo.ls("latest") if n.type == "file"}
    for name in (b"weights.bin", b"log.txt", b"empty", b"\xff-raw.bin"):
        node = files[b"exp/" + name]
        with open(os.path.join(os.fsencode(src), name), "rb") as fh:
            assert b"".join(plaintexts[b] for b in node.blobs) == fh.read()
    assert files[b"exp/empty"].blobs == []
    assert all(b in plaintexts for b in snap.tree)


def test_snapshot_and_index_document_framing(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    backed_up(repo, tmp_path)
    eng = engine(repo_path)
    (snap_path,) = files_in(repo_path, "snapshots")
    stored = snap_path.read_bytes()
    assert snap_path.name == blake3.blake3(stored).hexdigest() == repo.find_snapshot("latest").id
    plain = open_env(eng.key.enc_key, stored, AAD_SNAPSHOT)
    assert plain[0] in (0, 1)
    (raw_len,) = struct.unpack("<Q", plain[1:9])
    doc = open_document(eng.key.enc_key, stored, AAD_SNAPSHOT)
    assert len(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()) == raw_len
    assert set(doc) == {
        "version",
        "time",
        "host",
        "user",
        "paths",
        "tags",
        "tree",
        "parent",
        "summary",
        "program_version",
    }
    assert doc["version"] == 1 and doc["parent"] is None
    assert doc["paths"] == [str(tmp_path / "exp")]
    assert all(len(h) == 64 for h in doc["tree"])
    # a snapshot's envelope is not accepted as an index (kind is bound into the AAD)
    with pytest.raises(InvalidTag):
        open_env(eng.key.enc_key, stored, AAD_INDEX)

    pack_names = {p.name for p in files_in(repo_path, "data")}
    described = set()
    for idx_path in files_in(repo_path, "index"):
        stored = idx_path.read_bytes()
        assert idx_path.name == blake3.blake3(stored).hexdigest()
        idx = open_document(eng.key.enc_key, stored, AAD_INDEX)
        assert set(idx) == {"version", "packs"} and idx["version"] == 1
        for p in idx["packs"]:
            described.add(p["id"])
            for blob_hex, btype, codec, offset, length, raw_len in p["blobs"]:
                entry = eng.index.get(bytes.fromhex(blob_hex))
                assert entry is not None and entry.pack_id == p["id"]
                assert (
                    int(entry.blob.type),
                    entry.blob.codec,
                    entry.blob.offset,
                    entry.blob.length,
                    entry.blob.raw_length,
                ) == (btype, codec, offset, length, raw_len)
    assert described == pack_names


def test_manifest_stream_is_json_lines_in_walk_order(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    backed_up(repo, tmp_path)
    eng = engine(repo_path)
    snap = repo.find_snapshot("latest")
    stream = b"".join(eng.load_blob(b) for b in snap.tree)
    assert stream.endswith(b"\n")
    lines = [json.loads(line) for line in stream.split(b"\n")[:-1]]
    paths = [d["path"].encode() if "path" in d else base64.b64decode(d["path_b64"]) for d in lines]
    assert paths == [b"exp", b"exp/empty", b"exp/latest", b"exp/log.txt", b"exp/weights.bin", b"exp/\xff-raw.bin"]
    by_path = dict(zip(paths, lines, strict=True))
    assert "path" not in by_path[b"exp/\xff-raw.bin"] and "path_b64" in by_path[b"exp/\xff-raw.bin"]
    assert by_path[b"exp"]["type"] == "dir" and "size" not in by_path[b"exp"]
    assert by_path[b"exp/latest"] == {**by_path[b"exp/latest"], "type": "symlink", "target": "weights.bin"}
    f = by_path[b"exp/log.txt"]
    assert set(f) == {"path", "type", "mode", "mtime_ns", "ctime_ns", "ino", "uid", "gid", "size", "blobs", "sha256"}
    assert f["size"] == 16 * 40_000 and len(f["sha256"]) == 64
    for tree_id in snap.tree:
        entry = eng.index.get(tree_id)
        assert entry is not None and entry.blob.type is BlobType.TREE


def test_blob_ids_are_keyed_per_repository(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    other_path = tmp_path / "other"
    other = Repository.init(other_path, PASSWORD, kdf=FAST_KDF)
    src = tmp_path / "same"
    write(src / "model.bin", os.urandom(300_000) + b"\0" * 300_000)
    repo.backup([src])
    other.backup([src])
    a, b = engine(repo_path), engine(other_path)
    blobs_a = {n.path: n.blobs for n in repo.ls("latest") if n.type == "file"}
    blobs_b = {n.path: n.blobs for n in other.ls("latest") if n.type == "file"}
    assert blobs_a.keys() == blobs_b.keys() == {b"same/model.bin"}
    ids_a = {e.blob.blob_id for e in a.index.entries()}
    ids_b = {e.blob.blob_id for e in b.index.entries()}
    assert ids_a and ids_b and not ids_a & ids_b
    data = (src / "model.bin").read_bytes()
    assert a.key.blob_id(data) != b.key.blob_id(data)
    assert a.key.blob_id(data) == blake3.blake3(data, key=a.key.id_key).digest() != blake3.blake3(data).digest()
    assert b"".join(a.load_blob(x) for x in blobs_a[b"same/model.bin"]) == data
    assert b"".join(b.load_blob(x) for x in blobs_b[b"same/model.bin"]) == data


# -- forward compatibility: unknown values are refused, never guessed -----------------------------


def _save_pack(eng: Engine, data: bytes) -> str:
    name = blake3.blake3(data).hexdigest()
    eng.backend.save(FileType.PACK, name, data)
    return name


@pytest.mark.parametrize(
    ("btype", "flags", "what"),
    [
        (9, 0, "unknown blob type 9"),
        (0, 0, "unknown blob type 0"),
        (1, 2, "unknown flags 0x2"),
        (2, 0x8000, "unknown flags"),
    ],
)
def test_pack_header_with_unknown_type_or_flags_is_refused(
    repo: Repository, repo_path: Path, btype: int, flags: int, what: str
) -> None:
    eng = engine(repo_path)
    plain = b"payload of a blob from the future"
    bid = eng.key.blob_id(plain)
    env = eng.key.seal(plain, AAD_BLOB + bytes((btype, 0)) + bid)
    header = eng.key.seal(ENTRY.pack(btype, 0, flags, len(env), len(plain), bid), kind_aad(KIND_PACK_HEADER))
    pack = bytes(env + header + struct.pack("<I", len(header)) + TRAILER_MAGIC)
    name = _save_pack(eng, pack)
    with pytest.raises(UnsupportedFormatError, match=what) as ei:
        read_pack_header(eng.backend, eng.key, name)
    assert ei.value.exit_code == 16
    # such a pack is never adopted into the index by recovery
    assert eng.recover_unindexed_packs() == 0
    assert files_in(repo_path, "index") == []


def test_pack_with_bad_trailer_is_an_integrity_error(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    backed_up(repo, tmp_path)
    eng = engine(repo_path)
    pack = files_in(repo_path, "data")[0]
    data = pack.read_bytes()
    name = _save_pack(eng, data[:-4] + b"WVP2")
    with pytest.raises(IntegrityError, match="magic"):
        read_pack_header(eng.backend, eng.key, name)
    name = _save_pack(eng, data[:-8] + struct.pack("<I", len(data)) + TRAILER_MAGIC)
    with pytest.raises(IntegrityError, match="does not fit"):
        read_pack_header(eng.backend, eng.key, name)


def test_unknown_codec_id_is_refused(repo: Repository, repo_path: Path) -> None:
    eng = engine(repo_path)
    plain = b"a blob written by a future codec " * 100
    bid = eng.key.blob_id(plain)
    future_codec = 7
    builder = PackBuilder()
    builder.add(
        bid, BlobType.DATA, future_codec, eng.key.seal(plain, blob_aad(BlobType.DATA, future_codec, bid)), len(plain)
    )
    pack_id, data = builder.finish(eng.key)
    eng.backend.save(FileType.PACK, pack_id, data)
    name, stored = encode_index_file(eng.key, {pack_id: builder.blobs})
    eng.backend.save(FileType.INDEX, name, stored)

    fresh = engine(repo_path)  # reads the codec id back from the index file
    assert fresh.lookup(bid).blob.codec == future_codec
    with pytest.raises(UnsupportedFormatError, match=f"codec id {future_codec}") as ei:
        fresh.load_blob(bid)
    assert ei.value.exit_code == 16
    # the header round-trips the codec byte untouched
    (entry,) = read_pack_header(fresh.backend, fresh.key, pack_id)
    assert entry.codec == future_codec


def test_codec_byte_is_bound_into_the_blob_aad(repo: Repository, repo_path: Path) -> None:
    """Relabelling a stored blob's codec (or type) without the key fails authentication."""
    eng = engine(repo_path)
    plain = b"0123456789" * 1000
    bid = eng.key.blob_id(plain)
    builder = PackBuilder()
    builder.add(
        bid,
        BlobType.DATA,
        1,
        eng.key.seal(zstandard.ZstdCompressor().compress(plain), blob_aad(BlobType.DATA, 1, bid)),
        len(plain),
    )
    pack_id, data = builder.finish(eng.key)
    (good,) = builder.blobs
    env = data[good.offset : good.offset + good.length]
    assert eng.decode_blob(pack_id, good, env) == plain
    for relabelled in (
        type(good)(bid, BlobType.DATA, 0, good.offset, good.length, good.raw_length),
        type(good)(bid, BlobType.TREE, 1, good.offset, good.length, good.raw_length),
        type(good)(bytes(32), BlobType.DATA, 1, good.offset, good.length, good.raw_length),
    ):
        with pytest.raises(IntegrityError, match="authentication failed"):
            eng.decode_blob(pack_id, relabelled, env)


def test_prune_plan_document_and_maintenance_lock(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    """Version 4: a plan is a sealed document of kind PLAN (6) in plans/; a maintenance lock is
    a shared lock with "maintenance": true."""
    from weightvault.repository.locks import hold_lock

    src = backed_up(repo, tmp_path)
    old = repo.find_snapshot("latest").id
    (src / "weights.bin").write_bytes(os.urandom(300_000))
    repo.backup([src])
    repo.forget([old])
    backend = LocalBackend(repo_path)
    with hold_lock(backend, exclusive=False, maintenance=True) as name:
        lock = json.loads((repo_path / "locks" / name).read_bytes())
        assert lock["exclusive"] is False and lock["maintenance"] is True
    with hold_lock(backend, exclusive=False) as name:
        assert "maintenance" not in json.loads((repo_path / "locks" / name).read_bytes())
        repo.prune()  # condemns, waits for the shared lock above
        (plan_path,) = files_in(repo_path, "plans")
    stored = plan_path.read_bytes()
    assert plan_path.name == blake3.blake3(stored).hexdigest()
    eng = engine(repo_path)
    doc = open_document(eng.key.enc_key, stored, b"wv1" + bytes((6,)))
    assert set(doc) == {"version", "created", "host", "packs", "waiting"} and doc["version"] == 1
    assert doc["waiting"] == [name]
    assert doc["packs"] == sorted(doc["packs"]) and set(doc["packs"]) <= {p.name for p in files_in(repo_path, "data")}
    with pytest.raises(InvalidTag):
        open_env(eng.key.enc_key, stored, AAD_INDEX)
    repo.prune()
    assert files_in(repo_path, "plans") == []
    assert not set(doc["packs"]) & {p.name for p in files_in(repo_path, "data")}
