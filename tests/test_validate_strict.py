"""One parser per format: the splitter's lenient mode accepts what it can still cut at tensor
boundaries, validation's strict mode (the same parser) refuses what a loader should not trust."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import write
from test_splitter_gguf import LAYOUT, kv_u32, write_gguf
from test_splitter_safetensors import PARAMS, build
from weightvault.api import Repository
from weightvault.chunking.gguf import gguf_tensors
from weightvault.chunking.numpy_formats import NpySplitter, npz_arrays, parse_npy_header
from weightvault.chunking.safetensors import SafetensorsSplitter, parse_safetensors
from weightvault.chunking.torchzip import torch_zip_members
from weightvault.ops.validate import structure

TENSORS = [("a", "F32", (4, 8), bytes(128)), ("b", "F16", (16,), bytes(32))]


def _npy(arr: np.ndarray, trailing: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue() + trailing


@pytest.mark.parametrize(("data", "problem"), [
    (build(TENSORS, pad=16), "tensor 'b' starts at 144: a gap precedes it"),
    (build(TENSORS, trailing=b"\0" * 8), "the data section has 168 bytes, the tensors cover 160 (truncated or padded)"),
])
def test_safetensors_gaps_split_leniently_and_fail_strictly(data: bytes, problem: str) -> None:
    lenient = parse_safetensors(io.BytesIO(data), len(data))
    assert [(t.name, t.dtype, t.shape) for t in lenient.tensors] == [("a", "F32", (4, 8)), ("b", "F16", (16,))]
    chunks = list(SafetensorsSplitter().split(io.BytesIO(data), PARAMS))
    assert {c.tensor for c in chunks} >= {"__header__", "a"}  # still tensor-aware, not CDC
    with pytest.raises(ValueError) as ei:
        parse_safetensors(io.BytesIO(data), len(data), strict=True)
    assert str(ei.value) == problem
    with pytest.raises(ValueError):
        structure("safetensors", io.BytesIO(data), len(data))


@pytest.mark.parametrize("header", [
    b"[" * 100_000,  # nesting deep enough to exhaust the JSON decoder's recursion
    json.dumps({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}).encode(),  # unhashable dtype
    json.dumps({"a": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 4]}}).encode(),
])
def test_hostile_safetensors_headers_are_value_errors_in_both_modes(header: bytes) -> None:
    data = struct.pack("<Q", len(header)) + header + bytes(4)
    for strict in (False, True):
        with pytest.raises(ValueError):
            parse_safetensors(io.BytesIO(data), len(data), strict=strict)


def test_npy_trailing_bytes_pass_and_extra_keys_are_strict_failures() -> None:
    arr = np.arange(12, dtype="<f4").reshape(3, 4)
    padded = _npy(arr, _npy(arr))  # np.save(f, a); np.save(f, b): np.load reads the first array
    for strict in (False, True):
        h = parse_npy_header(io.BytesIO(padded), len(padded), strict=strict)
        assert (h.descr, h.shape, h.data_length, h.dtype) == ("<f4", (3, 4), 48, "F32")
    assert any(c.dtype == "F32" for c in NpySplitter().split(io.BytesIO(padded), PARAMS))
    short = _npy(arr)[:-4]
    with pytest.raises(ValueError, match=r"44 data bytes for shape \(3, 4\) of <f4 \(48 needed\)"):
        parse_npy_header(io.BytesIO(short), len(short), strict=True)
    ok = _npy(arr)
    assert structure("npy", io.BytesIO(ok), len(ok)) == {"": ("<f4", (3, 4))}
    key = b"'extra': 1, "
    extra = ok.replace(b"'shape'", key + b"'shape'").replace(b" " * len(key) + b"\n", b"\n")
    assert len(extra) == len(ok)
    parse_npy_header(io.BytesIO(extra), len(extra))
    with pytest.raises(ValueError, match="keys"):
        parse_npy_header(io.BytesIO(extra), len(extra), strict=True)
    objects = _npy(np.array([1, "x"], dtype=object))
    with pytest.raises(ValueError, match="Python objects"):
        parse_npy_header(io.BytesIO(objects), len(objects), strict=True)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_headers_are_read_without_the_arrays(save: object) -> None:
    buf = io.BytesIO()
    save(buf, w=np.zeros((64, 32), dtype="<f2"), n=np.arange(5))  # type: ignore[operator]
    data = buf.getvalue()
    arrays = npz_arrays(io.BytesIO(data), len(data), check_crc=True)
    assert {k: (h.descr, h.shape) for k, h in arrays.items()} == {"w": ("<f2", (64, 32)), "n": ("<i8", (5,))}
    torn = bytearray(data)
    torn[-30] ^= 0xFF  # inside the central directory
    with pytest.raises(ValueError):
        npz_arrays(io.BytesIO(bytes(torn)), len(torn))


def test_torch_zip_needs_an_archive_pickle() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data/0", bytes(64))
    data = buf.getvalue()
    with pytest.raises(ValueError, match=r"without <archive>/data\.pkl"):
        torch_zip_members(io.BytesIO(data), len(data))


def test_gguf_misaligned_offsets_are_strict_failures() -> None:
    data, _ = write_gguf(LAYOUT, alignment=32)
    tensors = gguf_tensors(io.BytesIO(data), len(data), strict=True)
    assert tensors[0] == ("token_embd.weight", 0, (256, 300))
    assert structure("gguf", io.BytesIO(data), len(data))["blk.0.attn_q.weight"] == ("ggml-8", (256, 256))
    bad = data.replace(kv_u32(b"general.alignment", 32), kv_u32(b"general.alignment", 64))
    assert len(gguf_tensors(io.BytesIO(bad), len(bad))) == len(LAYOUT)  # the splitter's checks pass
    with pytest.raises(ValueError, match="is not 64-byte aligned"):
        gguf_tensors(io.BytesIO(bad), len(bad), strict=True)


def test_level_2_refuses_a_gap_the_splitter_accepted(repo: Repository, tmp_path: Path) -> None:
    src = write(tmp_path / "run" / "model.safetensors", build(TENSORS, pad=16)).parent
    snap = repo.backup([src]).snapshot.id
    (bad,) = repo.validate(snap, src, level=3).failed
    assert bad.passed == 1 and bad.problems == ["level 2: safetensors: tensor 'b' starts at 144: a gap precedes it"]
