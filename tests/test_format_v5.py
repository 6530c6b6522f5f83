"""Format version 5: a DELTA blob's inner codec 3, the element-wise integer difference from its base
(docs/FORMAT.md section 5), written only into version-5 repositories. Stored blobs are decoded
here by the independent decoder of tests/test_format_v3.py (written from the spec), never by
weightvault's own; a version-4 repository keeps getting only XOR deltas and stays readable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import PASSWORD, write
from test_format_v3 import SUB, decode, latest_manifest, master_key, parse_packs
from weightvault.api import Repository
from weightvault.codec.compress import DELTA, INNER_SUB, compress_best, decompress
from weightvault.errors import IntegrityError
from weightvault.format.layout import FORMAT_VERSION


def _checkpoint(path: Path, w: np.ndarray) -> None:
    """A one-tensor safetensors file (F32)."""
    raw = w.astype("<f4").tobytes()
    head = json.dumps({"w": {"dtype": "F32", "shape": list(w.shape), "data_offsets": [0, len(raw)]}}).encode()
    head += b" " * (-len(head) % 8)
    write(path, len(head).to_bytes(8, "little") + head + raw)


def _series(repo: Repository, src: Path) -> None:
    """Two backups of a second moment decaying between checkpoints (v <- 0.98 v + small), the way
    AdamW's exp_avg_sq drifts: its bit patterns move by small integer amounts."""
    rng = np.random.default_rng(7)
    v = (rng.standard_normal((1024, 512)).astype(np.float32) * 1e-3) ** 2
    for _ in range(2):
        _checkpoint(src / "optimizer.safetensors", v)
        assert repo.backup([src]).errors == []
        v = (0.98 * v + 1e-9 * rng.random(v.shape)).astype(np.float32)


def _inner_codecs(repo_path: Path) -> list[int]:
    keys = master_key(repo_path)
    blobs = parse_packs(repo_path, keys[0])
    seen: dict[bytes, bytes] = {}
    for bid in blobs:
        decode(blobs, keys, bid, seen)  # every blob decodes, by the spec, to its id
    from test_format_v3 import AAD_BLOB, open_env

    return [open_env(keys[0], s.envelope, AAD_BLOB + bytes((s.btype, s.codec)) + bid)[32]
            for bid, s in blobs.items() if s.codec == DELTA]


def test_a_version_5_repository_stores_drifting_values_as_integer_differences(
        repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    assert FORMAT_VERSION == 7 and json.loads((repo_path / "config").read_bytes())["version"] == 7
    src = tmp_path / "run"
    _series(repo, src)
    assert SUB in _inner_codecs(repo_path)
    manifest = latest_manifest(repo_path, parse_packs(repo_path, master_key(repo_path)[0]), master_key(repo_path))
    assert "run/optimizer.safetensors" in manifest
    repo.restore("latest", tmp_path / "out")
    assert (tmp_path / "out/run/optimizer.safetensors").read_bytes() == (src / "optimizer.safetensors").read_bytes()


def test_a_version_4_repository_gets_only_xor_deltas_and_reads_back(
        repo: Repository, repo_path: Path, tmp_path: Path) -> None:
    doc = json.loads((repo_path / "config").read_bytes())
    doc["version"] = 4
    (repo_path / "config").write_text(json.dumps(doc))
    repo = Repository.open(repo_path, PASSWORD)
    src = tmp_path / "run"
    _series(repo, src)
    inner = _inner_codecs(repo_path)
    assert inner and SUB not in inner  # a version-4 reader could not read an integer difference
    repo.restore("latest", tmp_path / "out")
    assert (tmp_path / "out/run/optimizer.safetensors").read_bytes() == (src / "optimizer.safetensors").read_bytes()
    assert json.loads((repo_path / "config").read_bytes())["version"] == 4  # never raised implicitly


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(["BF16", "F16", "F32", "F64"]),
    n=st.integers(1, 3000),
    extra=st.integers(0, 7),
    scale=st.sampled_from([0.0, 1e-6, 1e-3, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_integer_difference_round_trips_every_float_dtype(dtype: str, n: int, extra: int, scale: float,
                                                          seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}[dtype]
    base = rng.bytes(n * k + extra)
    words = np.frombuffer(base[: n * k], dtype=f"<u{k}")
    step = (rng.standard_normal(n) * scale * float(2 ** (8 * k - 12))).astype(np.int64)
    new = (words.astype(np.uint64) + step.astype(np.uint64)).astype(f"<u{k}").tobytes() + rng.bytes(extra)
    codec, payload = compress_best(new, 3, dtype, allow_byteplane=True, base=(b"\x05" * 32, base), allow_sub=True)
    assert decompress(codec, payload, len(new), base if codec == DELTA else None) == new
    assert len(payload) <= len(new)


def test_a_large_chunk_takes_the_difference_only_where_the_sample_says_it_codes_smaller() -> None:
    rng = np.random.default_rng(3)
    v = ((rng.standard_normal(1 << 20) * 1e-3) ** 2).astype(np.float32)  # 4 MiB
    decayed = (0.98 * v).astype(np.float32)
    codec, payload = compress_best(decayed.tobytes(), 3, "F32", True, (b"\x01" * 32, v.tobytes()), allow_sub=True)
    assert codec == DELTA and payload[32] == INNER_SUB
    xor_only = compress_best(decayed.tobytes(), 3, "F32", True, (b"\x01" * 32, v.tobytes()))[1]
    assert xor_only[32] != INNER_SUB and len(payload) < len(xor_only)
    assert decompress(codec, payload, len(v.tobytes()), v.tobytes()) == decayed.tobytes()
    flipped = v.view("<u4").copy()
    flipped[::5] ^= 1  # a few low bits flip (as in a BF16 export): the XOR codes that smaller
    codec, payload = compress_best(flipped.tobytes(), 3, "F32", True, (b"\x01" * 32, v.tobytes()), allow_sub=True)
    assert codec == DELTA and payload[32] != INNER_SUB


def test_malformed_integer_difference_payloads_are_refused() -> None:
    base = np.arange(1 << 16, dtype=np.float32).tobytes()
    data = (np.arange(1 << 16, dtype=np.float32) * 1.001).astype(np.float32).tobytes()
    codec, payload = compress_best(data, 3, "F32", True, (b"\x02" * 32, base), allow_sub=True)
    assert codec == DELTA
    sub = payload[:32] + bytes((INNER_SUB,)) + payload[33:]
    if payload[32] == INNER_SUB:
        assert decompress(DELTA, sub, len(data), base) == data
    with pytest.raises(IntegrityError, match="expected 1, 2, 3 or 4"):
        decompress(DELTA, payload[:32] + b"\x05" + payload[33:], len(data), base)
    with pytest.raises(IntegrityError):
        decompress(DELTA, sub[:40], len(data), base)  # truncated inner byteplane payload
