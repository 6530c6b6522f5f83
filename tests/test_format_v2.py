"""Format version 2: codec 2 (byteplane) and the v1 compatibility rule of docs/FORMAT.md.

A v2 writer stores float tensor chunks with codec 2; a repository whose config says version 1 stays
readable and writable but never receives a codec-2 blob, so version-1 readers can still read it.
The byteplane payload is decoded here by independent code written from the spec (struct, zstandard
and integer arithmetic), not by ``codec.floatplanes``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository
from weightvault.backends.base import FileType
from weightvault.backends.local import LocalBackend
from weightvault.codec.compress import decompress
from weightvault.errors import UnsupportedFormatError
from weightvault.format.layout import FORMAT_VERSION, blob_aad
from weightvault.repository.repo import Repository as Engine
from weightvault.types import BlobType, PackedBlob

BYTEPLANE = 2  # the spec's codec id, written out literally


def set_version(repo_path: Path, version: int) -> None:
    doc = json.loads((repo_path / "config").read_bytes())
    doc["version"] = version
    (repo_path / "config").write_text(json.dumps(doc))


def safetensors_file(path: Path) -> bytes:
    """A small safetensors file with one F32 and one BF16 tensor of weight-like values."""
    rng = np.random.default_rng(7)
    f32 = rng.normal(0, 0.04, 64 * 1024).astype("<f4").tobytes()
    words = np.frombuffer(rng.normal(0, 0.04, 96 * 1024).astype("<f4").tobytes(), dtype="<u4")
    bf16 = (words >> 16).astype("<u2").tobytes()
    meta = {
        "a.weight": {"dtype": "F32", "shape": [64, 1024], "data_offsets": [0, len(f32)]},
        "b.weight": {"dtype": "BF16", "shape": [96, 1024], "data_offsets": [len(f32), len(f32) + len(bf16)]},
    }
    head = json.dumps(meta).encode()
    head += b" " * (-len(head) % 8)
    data = struct.pack("<Q", len(head)) + head + f32 + bf16
    write(path, data)
    return data


def engine(path: Path) -> Engine:
    return Engine.open(LocalBackend(path), PASSWORD.encode())


def codecs_of(path: Path) -> set[int]:
    return {e.blob.codec for e in engine(path).index.entries() if e.blob.type == BlobType.DATA}


def spec_decode(payload: bytes, raw_length: int) -> bytes:
    """The byteplane payload decoded as docs/FORMAT.md section 5 describes it."""
    version, k, flags, count = payload[:4]
    assert (version, count, flags & ~1) == (1, k, 0) and k in (2, 4, 8)
    entries = [struct.unpack_from("<BI", payload, 4 + 5 * j) for j in range(k)]
    tail_len = payload[4 + 5 * k]
    n = (raw_length - tail_len) // k
    pos, planes = 5 + 5 * k, []
    for codec, length in entries:
        body = payload[pos : pos + length]
        pos += length
        plane = body if codec == 0 else zstandard.ZstdDecompressor().decompress(body, max_output_size=n)
        assert len(plane) == n
        planes.append(plane)
    bits = 8 * k
    out = bytearray()
    for i in range(n):
        word = sum(planes[j][i] << (8 * j) for j in range(k))
        if flags & 1:
            word = (word >> 1) | ((word & 1) << (bits - 1))  # undo the left rotation by one bit
        out += word.to_bytes(k, "little")
    return bytes(out) + payload[pos : pos + tail_len]


def test_new_repositories_are_version_7(repo: Repository, repo_path: Path) -> None:
    assert FORMAT_VERSION == 7
    assert json.loads((repo_path / "config").read_bytes())["version"] == 7


def test_v2_backup_stores_float_tensors_with_byteplane(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    original = safetensors_file(tmp_path / "src" / "model.safetensors")
    repo.backup([tmp_path / "src"])
    assert BYTEPLANE in codecs_of(repo_path)
    repo.restore("latest", tmp_path / "out")
    assert (tmp_path / "out" / "src" / "model.safetensors").read_bytes() == original


def test_v1_repository_stays_v1_and_gets_no_byteplane_blobs(repo_path: Path, tmp_path: Path) -> None:
    Repository.init(repo_path, PASSWORD, kdf=FAST_KDF)
    set_version(repo_path, 1)  # as an older weightvault would have created it
    repo = Repository.open(repo_path, PASSWORD)
    original = safetensors_file(tmp_path / "src" / "model.safetensors")
    repo.backup([tmp_path / "src"])
    eng = engine(repo_path)
    eng.save_blob(BlobType.DATA, safetensors_file(tmp_path / "x")[-64 * 1024 :], dtype="BF16")
    eng.flush()
    codecs = codecs_of(repo_path)
    assert BYTEPLANE not in codecs and 1 in codecs  # zstd (codec 1) is still used
    assert json.loads((repo_path / "config").read_bytes())["version"] == 1  # never raised implicitly
    Repository.open(repo_path, PASSWORD).restore("latest", tmp_path / "out")
    assert (tmp_path / "out" / "src" / "model.safetensors").read_bytes() == original


def test_byteplane_blob_matches_the_spec(repo: Repository, repo_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = (np.frombuffer(rng.normal(0, 0.05, 20_001).astype("<f4").tobytes(), dtype="<u4") >> 16).astype("<u2")
    plain = data.tobytes() + b"\x42"  # an odd length: a one-byte tail
    eng = engine(repo_path)
    bid, new = eng.save_blob(BlobType.DATA, plain, dtype="BF16")
    eng.flush()
    assert new
    eng = engine(repo_path)
    entry = eng.lookup(bid)
    assert entry.blob.codec == BYTEPLANE
    assert eng.load_blob(bid) == plain
    envelope = eng.backend.load(FileType.PACK, entry.pack_id, entry.blob.offset, entry.blob.length)
    payload = eng.key.open(envelope, blob_aad(BlobType.DATA, BYTEPLANE, bid), "blob")
    assert payload[:4] == bytes((1, 2, 1, 2))
    assert spec_decode(payload, len(plain)) == plain
    assert len(payload) < 0.75 * len(plain)


def test_unknown_codec_is_still_refused(repo: Repository, repo_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError):
        decompress(9, b"anything", 8)
    eng = engine(repo_path)
    bid = eng.key.blob_id(b"payload")
    envelope = eng.key.seal(b"payload", blob_aad(BlobType.DATA, 9, bid))
    blob = PackedBlob(bid, BlobType.DATA, 9, 0, len(envelope), 7)
    with pytest.raises(UnsupportedFormatError) as ei:
        eng.decode_blob("0" * 64, blob, bytes(envelope))
    assert ei.value.exit_code == 16


def test_version_8_is_refused(repo: Repository, repo_path: Path) -> None:
    set_version(repo_path, 8)
    with pytest.raises(UnsupportedFormatError) as ei:
        Repository.open(repo_path, PASSWORD)
    assert ei.value.exit_code == 16 and "1..7" in str(ei.value)
