"""Format version 3: codec 3 (DELTA), FLAG_BASE in pack headers, the base element of index rows, the
manifest ``tensors`` hint, the config's ``delta_max_depth`` and the v2 compatibility rule.

Like tests/test_format.py and tests/test_format_v2.py, these tests parse real repositories with
independent code written from docs/FORMAT.md (struct, argon2, cryptography's ChaCha20-Poly1305,
blake3, zstandard, numpy): the master key is unwrapped from the key file, pack headers, blob
envelopes, index and snapshot documents and the manifest stream are opened here, and delta and
byteplane payloads are decoded here, never by weightvault's own decoders.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any, NamedTuple

import blake3
import numpy as np
import pytest
import zstandard
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from conftest import PASSWORD, write
from weightvault.api import Repository
from weightvault.errors import UnsupportedFormatError

# The spec's constants, written out literally so that the code cannot drift from them silently.
ENTRY = struct.Struct("<BBHII32s")
FLAG_BASE = 1
ZSTD, BYTEPLANE, DELTA = 1, 2, 3
SUB = 3  # a DELTA's inner codec byte for the integer difference (format version 5)
CAST = 4  # a DELTA's inner codec byte for a BF16 cast of an F32 base (format version 7)
AAD_BLOB, AAD_PACK_HEADER, AAD_INDEX, AAD_SNAPSHOT, AAD_KEY = (b"wv1" + bytes((k,)) for k in range(1, 6))


class Stored(NamedTuple):
    """One pack header entry, its stored envelope and where it lives."""

    btype: int
    codec: int
    flags: int
    offset: int
    raw_len: int
    base: bytes | None
    envelope: bytes
    pack: str


def open_env(key: bytes, env: bytes, aad: bytes) -> bytes:
    assert len(env) >= 12 + 16
    return ChaCha20Poly1305(key).decrypt(env[:12], env[12:], aad)


def master_key(repo_path: Path) -> tuple[bytes, bytes]:
    """(enc_key, id_key) unwrapped from the key file with argon2id and ChaCha20-Poly1305 (section 3)."""
    repo_id = json.loads((repo_path / "config").read_bytes())["id"]
    (key_path,) = sorted((repo_path / "keys").iterdir())
    doc = json.loads(key_path.read_bytes())
    p = doc["kdf_params"]
    wrap = hash_secret_raw(
        secret=PASSWORD.encode(),
        salt=base64.b64decode(doc["salt"]),
        time_cost=p["time_cost"],
        memory_cost=p["memory_kib"],
        parallelism=p["parallelism"],
        hash_len=32,
        type=Type.ID,
    )
    secret = json.loads(open_env(wrap, base64.b64decode(doc["key"]), AAD_KEY + repo_id.encode("ascii")))
    return base64.b64decode(secret["enc_key"]), base64.b64decode(secret["id_key"])


def parse_packs(repo_path: Path, enc_key: bytes) -> dict[bytes, Stored]:
    """Every blob of every pack, from the trailer and header envelope (section 6)."""
    out: dict[bytes, Stored] = {}
    for pack in sorted(p for p in (repo_path / "data").rglob("*") if p.is_file() and p.name[0] != "."):
        data = pack.read_bytes()
        assert blake3.blake3(data).hexdigest() == pack.name and data[-4:] == b"WVP1"
        (hlen,) = struct.unpack("<I", data[-8:-4])
        header_start = len(data) - 8 - hlen
        header = open_env(enc_key, data[header_start:-8], AAD_PACK_HEADER)
        i = offset = entries = deltas = 0
        while i < len(header):
            btype, codec, flags, length, raw_len, bid = ENTRY.unpack_from(header, i)
            i += ENTRY.size
            assert btype in (1, 2) and flags & ~FLAG_BASE == 0
            base = None
            if flags & FLAG_BASE:
                base, deltas = header[i : i + 32], deltas + 1
                i += 32
                assert len(base) == 32
            out[bid] = Stored(btype, codec, flags, offset, raw_len, base, data[offset : offset + length], pack.name)
            offset, entries = offset + length, entries + 1
        assert i == len(header) and offset == header_start  # blobs tile the pack up to the header
        assert hlen == 44 * entries + 32 * deltas + 28
    return out


def byteplane_decode(payload: bytes, raw_len: int, rotated: bool | None = None) -> bytes:
    """A BYTEPLANE payload decoded as section 5 describes it (``rotated``: the flag expected, if any)."""
    version, k, flags, count = payload[:4]
    assert (version, count, flags & ~1) == (1, k, 0) and k in (2, 4, 8)
    assert rotated is None or bool(flags & 1) == rotated
    tail_len = payload[4 + 5 * k]
    n, pos = (raw_len - tail_len) // k, 5 + 5 * k
    assert tail_len < k and k * n + tail_len == raw_len
    planes = np.empty((n, k), dtype=np.uint8)
    for j in range(k):
        codec, length = struct.unpack_from("<BI", payload, 4 + 5 * j)
        body = payload[pos : pos + length]
        pos += length
        if codec == 1:
            assert zstandard.frame_content_size(body) == n
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=n)
        assert codec in (0, 1) and len(body) == n
        planes[:, j] = np.frombuffer(body, dtype=np.uint8)
    assert pos + tail_len == len(payload)
    words = planes.view(f"<u{k}").reshape(n)
    if flags & 1:  # undo the left rotation by one bit
        words = (words >> 1) | (words << (8 * k - 1))
    return words.tobytes() + payload[pos:]


def decode(blobs: dict[bytes, Stored], keys: tuple[bytes, bytes], bid: bytes, seen: dict[bytes, bytes]) -> bytes:
    """A blob's plaintext, deltas resolved through their bases; every result's keyed BLAKE3 is checked."""
    if bid in seen:
        return seen[bid]
    s = blobs[bid]
    payload = open_env(keys[0], s.envelope, AAD_BLOB + bytes((s.btype, s.codec)) + bid)
    if s.codec == 0:
        plain = payload
    elif s.codec == ZSTD:
        plain = zstandard.ZstdDecompressor().decompress(payload, max_output_size=s.raw_len)
    elif s.codec == BYTEPLANE:
        plain = byteplane_decode(payload, s.raw_len)
    else:
        assert s.codec == DELTA and s.base is not None and payload[:32] == s.base != bid
        base = decode(blobs, keys, s.base, seen)
        inner_codec, inner = payload[32], payload[33:]
        if inner_codec == CAST:  # format version 7: a BF16 chunk as its F32 base rounded, XOR a residual
            assert len(base) == 2 * s.raw_len and s.raw_len % 2 == 0
            x = np.frombuffer(base, dtype="<u4").astype(np.uint64)
            rounded = ((x + 0x7FFF + ((x >> 16) & 1)) % (1 << 32)) >> 16
            residual = np.frombuffer(zstandard.ZstdDecompressor().decompress(inner, max_output_size=s.raw_len),
                                     dtype="<u2")
            plain = bytes((rounded.astype("<u2") ^ residual).tobytes())
            assert blake3.blake3(plain, key=keys[1]).digest() == bid
            seen[bid] = plain
            return plain
        assert len(base) == s.raw_len
        assert inner_codec in (ZSTD, BYTEPLANE, SUB)
        if inner_codec == ZSTD:
            diff = zstandard.ZstdDecompressor().decompress(inner, max_output_size=s.raw_len)
        else:
            diff = byteplane_decode(inner, s.raw_len, rotated=False)
        assert len(diff) == s.raw_len
        plain = (np.frombuffer(diff, dtype=np.uint8) ^ np.frombuffer(base, dtype=np.uint8)).tobytes()
        if inner_codec == SUB:  # format version 5: k-byte elements were subtracted, the tail XORed
            k = inner[1]
            whole = s.raw_len // k * k
            added = np.frombuffer(diff[:whole], dtype=f"<u{k}") + np.frombuffer(base[:whole], dtype=f"<u{k}")
            plain = added.tobytes() + plain[whole:]
    assert len(plain) == s.raw_len
    assert blake3.blake3(plain, key=keys[1]).digest() == bid
    seen[bid] = plain
    return plain


def open_document(enc_key: bytes, stored: bytes, aad: bytes) -> Any:
    """codec (u8) || raw length (u64 LE) || payload, inside an envelope (section 7)."""
    plain = open_env(enc_key, stored, aad)
    codec, (raw_len,) = plain[0], struct.unpack("<Q", plain[1:9])
    assert codec in (0, 1)
    raw = plain[9:] if codec == 0 else zstandard.ZstdDecompressor().decompress(plain[9:], max_output_size=raw_len)
    assert len(raw) == raw_len
    return json.loads(raw)


def latest_manifest(repo_path: Path, blobs: dict[bytes, Stored], keys: tuple[bytes, bytes]) -> dict[str, Any]:
    """path -> node of the newest snapshot's manifest stream, read from its TREE blobs (section 8)."""
    docs = [open_document(keys[0], p.read_bytes(), AAD_SNAPSHOT) for p in (repo_path / "snapshots").iterdir()]
    newest = max(docs, key=lambda d: d["time"])
    seen: dict[bytes, bytes] = {}
    stream = b"".join(decode(blobs, keys, bytes.fromhex(t), seen) for t in newest["tree"])
    assert stream.endswith(b"\n")
    nodes = [json.loads(line) for line in stream.split(b"\n")[:-1]]
    return {n["path"]: n for n in nodes}


# -- a checkpoint that drifts between backups ----------------------------------------------------


class Model:
    """Three F32 tensors and one BF16 tensor of weight-like values, nudged by every ``step``."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(11)
        shapes = {"embed.weight": (512, 512), "layer.0.weight": (384, 384), "layer.1.weight": (384, 384)}
        self.w = {name: self.rng.normal(0, 0.05, shape).astype(np.float32) for name, shape in shapes.items()}
        self.w["head.weight"] = self.rng.normal(0, 0.05, (256, 512)).astype(np.float32)

    def step(self) -> None:
        for v in self.w.values():
            v += (1e-4 * self.rng.standard_normal(v.shape)).astype(np.float32)

    def save(self, path: Path) -> None:
        meta: dict[str, object] = {}
        parts: list[bytes] = []
        pos = 0
        for name, v in self.w.items():
            if name == "head.weight":  # BF16: the top 16 bits of each float32 word
                dtype, raw = "BF16", (v.view("<u4") >> 16).astype("<u2").tobytes()
            else:
                dtype, raw = "F32", v.astype("<f4").tobytes()
            meta[name] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [pos, pos + len(raw)]}
            parts.append(raw)
            pos += len(raw)
        head = json.dumps(meta).encode()
        head += b" " * (-len(head) % 8)
        write(path, struct.pack("<Q", len(head)) + head + b"".join(parts))


def backups(repo: Repository, src: Path, model: Model, count: int) -> None:
    for i in range(count):
        if i:
            model.step()
        model.save(src / "model.safetensors")
        assert repo.backup([src]).errors == []


@pytest.fixture
def drifted(repo: Repository, tmp_path: Path) -> Path:
    """Two backups of one safetensors file, with a small training step in between: its source dir."""
    src = tmp_path / "run"
    backups(repo, src, Model(), 2)
    return src


def set_config(repo_path: Path, version: int) -> None:
    doc = json.loads((repo_path / "config").read_bytes())
    doc["version"] = version
    doc.pop("delta_max_depth", None)
    (repo_path / "config").write_text(json.dumps(doc))


# -- tests ---------------------------------------------------------------------------------------


def test_new_config_has_delta_max_depth(repo: Repository, repo_path: Path) -> None:
    doc = json.loads((repo_path / "config").read_bytes())
    assert doc["version"] == 7 and doc["delta_max_depth"] == 8


def test_delta_blobs_in_pack_headers_decode_independently(repo_path: Path, drifted: Path) -> None:
    keys = master_key(repo_path)
    blobs = parse_packs(repo_path, keys[0])
    deltas = {bid: s for bid, s in blobs.items() if s.codec == DELTA}
    assert deltas
    for s in blobs.values():
        assert (s.codec == DELTA) == bool(s.flags & FLAG_BASE) == (s.base is not None)
    inner_codecs = set()
    seen: dict[bytes, bytes] = {}
    for bid, s in deltas.items():
        assert s.btype == 1 and s.base is not None and s.base in blobs
        payload = open_env(keys[0], s.envelope, AAD_BLOB + bytes((s.btype, DELTA)) + bid)
        assert payload[:32] == s.base and payload[32] in (ZSTD, BYTEPLANE)
        inner_codecs.add(payload[32])
        assert blobs[s.base].raw_len == s.raw_len
        assert len(decode(blobs, keys, bid, seen)) == s.raw_len  # id re-checked after XOR with the base
        assert len(s.envelope) - 28 <= 0.9 * s.raw_len  # DELTA_MIN_GAIN: never larger than RAW - 10 %
    assert BYTEPLANE in inner_codecs  # float tensor deltas are byte planes of the XOR
    node = latest_manifest(repo_path, blobs, keys)["run/model.safetensors"]
    data = (drifted / "model.safetensors").read_bytes()
    assert set(map(bytes.fromhex, node["blobs"])) & deltas.keys()
    restored = b"".join(decode(blobs, keys, bytes.fromhex(b), seen) for b in node["blobs"])
    assert restored == data and node["size"] == len(data)
    assert node["sha256"] == hashlib.sha256(restored).hexdigest()


def test_index_rows_of_delta_blobs_carry_the_base(repo_path: Path, drifted: Path) -> None:
    keys = master_key(repo_path)
    blobs = parse_packs(repo_path, keys[0])
    described: set[bytes] = set()
    for idx_path in (repo_path / "index").iterdir():
        doc = open_document(keys[0], idx_path.read_bytes(), AAD_INDEX)
        assert doc["version"] == 1
        for p in doc["packs"]:
            for row in p["blobs"]:
                s = blobs[bytes.fromhex(row[0])]
                assert s.pack == p["id"]
                assert row[1:6] == [s.btype, s.codec, s.offset, len(s.envelope), s.raw_len]
                if s.codec == DELTA:
                    assert s.base is not None and len(row) == 7 and row[6] == s.base.hex()
                    described.add(bytes.fromhex(row[0]))
                else:
                    assert len(row) == 6
    assert described == {bid for bid, s in blobs.items() if s.codec == DELTA} != set()


def test_manifest_tensors_are_parallel_to_blobs(repo_path: Path, drifted: Path) -> None:
    keys = master_key(repo_path)
    node = latest_manifest(repo_path, parse_packs(repo_path, keys[0]), keys)["run/model.safetensors"]
    data = (drifted / "model.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    tensors = node["tensors"]
    assert isinstance(tensors, list) and len(tensors) == len(node["blobs"])
    # the splitter names the safetensors header chunk "__header__", without a dtype hint
    assert tensors[0] == ["__header__", 0, None]
    named = set()
    for t in tensors[1:]:
        if t is None:
            continue
        name, part, dtype = t  # exactly three elements
        assert isinstance(part, int) and part >= 0
        assert name in header and dtype == header[name]["dtype"]
        named.add(name)
    assert named == set(header)


def test_version_2_repository_gets_no_deltas(repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    src, model = tmp_path / "run", Model()
    backups(repo, src, model, 1)
    set_config(repo_path, 2)  # as a version-2 weightvault would have written it
    v2 = Repository.open(repo_path, PASSWORD)
    model.step()
    backups(v2, src, model, 2)
    doc = json.loads((repo_path / "config").read_bytes())
    assert doc["version"] == 2 and "delta_max_depth" not in doc  # never raised implicitly
    keys = master_key(repo_path)
    blobs = parse_packs(repo_path, keys[0])
    assert {s.codec for s in blobs.values()} <= {0, ZSTD, BYTEPLANE} and BYTEPLANE in {s.codec for s in blobs.values()}
    assert not any(s.flags or s.base for s in blobs.values())
    node = latest_manifest(repo_path, blobs, keys)["run/model.safetensors"]
    seen: dict[bytes, bytes] = {}
    restored = b"".join(decode(blobs, keys, bytes.fromhex(b), seen) for b in node["blobs"])
    assert restored == (src / "model.safetensors").read_bytes()


def test_version_8_is_refused(repo: Repository, repo_path: Path) -> None:
    set_config(repo_path, 8)
    with pytest.raises(UnsupportedFormatError) as ei:
        Repository.open(repo_path, PASSWORD)
    assert ei.value.exit_code == 16 and "1..7" in str(ei.value) and "version 8" in str(ei.value)
