"""Files the real libraries write (safetensors 0.8, gguf-py, numpy), made here in tmp_path and read
back by those libraries: both parser modes accept them with the libraries' names, dtypes and
shapes, the splitters cut them by tensor (no CDC fallback), and a damaged copy fails the strict
mode with a message naming the tensor. Never cry wolf: what the library reads, we read."""

from __future__ import annotations

import io
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import assert_tiles
from weightvault.chunking.base import DTYPE_SIZES, Chunk, ChunkerParams
from weightvault.chunking.gguf import GGML_TYPES, gguf_header
from weightvault.chunking.numpy_formats import npz_arrays, parse_npy_header
from weightvault.chunking.registry import default_registry
from weightvault.chunking.safetensors import SAFETENSORS_DTYPE_BITS, parse_safetensors

# the dev extras install both; without them these tests are skipped, not failed
safetensors = pytest.importorskip("safetensors")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
gguf = pytest.importorskip("gguf")
gguf_quants = pytest.importorskip("gguf.quants")
Q = gguf.GGMLQuantizationType

DEFAULT = ChunkerParams()
SMALL = ChunkerParams(min_size=1024, avg_size=4096, max_size=16384)  # so KB-sized files are not one chunk


def chunks_of(path: Path, params: ChunkerParams = DEFAULT) -> tuple[str, list[Chunk]]:
    """The splitter the default registry picks for the file, and its chunks (which must tile it)."""
    data = path.read_bytes()
    splitter = default_registry().select(path.name.encode(), data[:65536])
    with open(path, "rb") as f:
        chunks = list(splitter.split(f, params))
    assert_tiles(chunks, data)
    return splitter.name, chunks


def strict_error(data: bytes, parse: Any) -> str:
    with pytest.raises(ValueError) as exc:
        parse(io.BytesIO(data), len(data), strict=True)
    return str(exc.value)


# -- safetensors: every dtype of the crate --------------------------------------------------------

# safetensors' Python names (TensorSpec dtypes, bindings/python/src/lib.rs) -> the header's names
SPEC_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "int32": "I32", "uint32": "U32",
    "int64": "I64", "uint64": "U64", "float16": "F16", "float32": "F32", "float64": "F64", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2": "F8_E5M2",
    "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0", "float4_e2m1fn_x2": "F4", "complex64": "C64",
}


def _library_file(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, tuple[int, ...]]]]:
    """Every dtype the library serialises (all but the F6 pair), written by ``safetensors.serialize``
    from raw buffers, with what the header must say for each."""
    rng = np.random.default_rng(7)
    keep: list[np.ndarray] = []
    specs: dict[str, Any] = {}
    want: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i, (spec, dtype) in enumerate(sorted(SPEC_DTYPES.items())):
        bits = SAFETENSORS_DTYPE_BITS[dtype]
        storage = (3, 8 + i)  # F4: two elements per byte, the header doubles the last dim
        buf = rng.integers(0, 2 if dtype == "BOOL" else 256, 3 * (8 + i) * max(bits, 8) // 8, dtype=np.uint8)
        keep.append(buf)
        specs[f"w.{dtype.lower()}"] = safetensors.TensorSpec(dtype=spec, shape=list(storage),
                                                             data_ptr=buf.ctypes.data, data_len=buf.nbytes)
        want[f"w.{dtype.lower()}"] = (dtype, (3, 2 * (8 + i)) if dtype == "F4" else storage)
    path = tmp_path / "all.safetensors"
    path.write_bytes(safetensors.serialize(specs, {"format": "np"}))
    del keep
    return path, want


def _f6_file(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, tuple[int, ...]]]]:
    """F6_E2M3 / F6_E3M2 (no Python writer knows them), laid out as the crate's writer lays files
    out: largest dtype first, header padded to 8 with spaces."""
    tensors = [("a.f32", "F32", (4, 4), bytes(64)), ("m.f6", "F6_E2M3", (4, 8), bytes(24)),
               ("n.f6", "F6_E3M2", (12,), bytes(9))]
    header: dict[str, Any] = {}
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    path = tmp_path / "f6.safetensors"
    path.write_bytes(struct.pack("<Q", len(hj)) + hj + data)
    return path, {n: (d, s) for n, d, s, _ in tensors}


def _numpy_file(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, tuple[int, ...]]]]:
    """``safetensors_numpy.save_file`` with every dtype numpy has (one tensor over 256 KiB)."""
    rng = np.random.default_rng(3)
    arrays = {f"np.{t}": rng.integers(0, 100, (5, 7)).astype(t) for t in
              ("float64", "float32", "float16", "int64", "uint64", "int32", "uint32", "int16", "uint16", "int8",
               "uint8", "bool", "complex64")}
    arrays["big.f32"] = rng.standard_normal((300, 256), dtype=np.float32)
    path = tmp_path / "np.safetensors"
    safetensors_numpy.save_file(arrays, str(path), metadata={"k": "v"})
    names = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "uint64": "U64", "int32": "I32",
             "uint32": "U32", "int16": "I16", "uint16": "U16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
             "complex64": "C64"}
    return path, {k: (names[str(v.dtype)], v.shape) for k, v in arrays.items()}


def _edit_shape(data: bytes, name: str) -> bytes:
    """The file with the first dimension of tensor ``name`` changed in the header (same width)."""
    (n,) = struct.unpack_from("<Q", data)
    head = data[8:8 + n]
    at = head.index(json.dumps(name).encode() + b":{")  # the crate writes compact JSON
    s0 = head.index(b'"shape":[', at) + len(b'"shape":[')
    s1 = head.index(b"]", s0)
    dims = [int(x) for x in head[s0:s1].split(b",")]
    dims[0] += 1 if dims[0] % 10 != 9 else -1
    return data[:8] + head[:s0] + b",".join(b"%d" % d for d in dims) + head[s1:] + data[8 + n:]


@pytest.mark.parametrize("make", [_library_file, _f6_file, _numpy_file], ids=["serialize", "f6", "numpy"])
def test_safetensors_written_by_the_library(make: Any, tmp_path: Path) -> None:
    path, want = make(tmp_path)
    data = path.read_bytes()
    # the library reads it back as described
    seen = {name: (info["dtype"], tuple(info["shape"])) for name, info in safetensors.deserialize(data)}
    assert seen == want
    if make is _numpy_file:
        with safetensors.safe_open(str(path), "numpy") as f:
            assert {k: f.get_tensor(k).shape for k in f.keys()} == {k: s for k, (_, s) in want.items()}  # noqa: SIM118
    assert set(SAFETENSORS_DTYPE_BITS) >= {d for d, _ in want.values()}
    for strict in (False, True):
        h = parse_safetensors(io.BytesIO(data), len(data), strict=strict)
        assert {t.name: (t.dtype, t.shape) for t in h.tensors} == want and h.warnings == []
    name, chunks = chunks_of(path)
    assert name == "safetensors" and chunks[0].tensor == "__header__"
    h = parse_safetensors(io.BytesIO(data), len(data))
    starts = {t.start: t for t in h.tensors}
    for c in chunks[1:]:  # tensor chunks only, cut where tensors (or tensor groups) start
        assert c.tensor in want
        assert c.dtype == (want[c.tensor][0] if want[c.tensor][0] in DTYPE_SIZES else None)
        assert c.part > 0 or starts[c.offset].name == c.tensor

    # damaged copies: truncated, and a shape edited in place
    cut = data[:-5]
    assert "tensor '" in strict_error(cut, parse_safetensors)
    with pytest.raises(safetensors.SafetensorError):
        safetensors.deserialize(cut)
    for t in h.tensors:
        bad = _edit_shape(data, t.name)
        assert len(bad) == len(data)
        assert f"tensor {t.name!r}" in strict_error(bad, parse_safetensors)
    with pytest.raises(safetensors.SafetensorError):
        safetensors.deserialize(bad)


def test_safetensors_unknown_dtype_in_a_library_file_is_a_warning(tmp_path: Path) -> None:
    path, _ = _numpy_file(tmp_path)
    data = path.read_bytes()
    bad = data.replace(b'"dtype":"I16"', b'"dtype":"Z16"', 1)  # a dtype a later library might add
    assert bad != data
    for strict in (False, True):
        h = parse_safetensors(io.BytesIO(bad), len(bad), strict=strict)
        assert [t.name for t in h.tensors if t.dtype == "Z16"] == ["np.int16"]
        assert len(h.warnings) == 1 and "'np.int16'" in h.warnings[0] and "'Z16'" in h.warnings[0]
    (tmp_path / "z.safetensors").write_bytes(bad)
    name, chunks = chunks_of(tmp_path / "z.safetensors")
    assert name == "safetensors" and all(c.tensor is not None for c in chunks)


# -- GGUF: gguf-py's writer in both byte orders ---------------------------------------------------


def _gguf_file(path: Path, endian: Any) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    """F32, F16 and quantised tensors (quantised by gguf.quants, or raw blocks for types it cannot
    quantise); per tensor, (ggml type, dims as stored, its bytes)."""
    rng = np.random.default_rng(11)
    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    w.add_uint32("test.count", 7)
    w.add_string("test.name", "weightvault")
    w.add_array("test.list", [1, 2, 3])
    x = rng.standard_normal((4, 256), dtype=np.float32)
    tensors: dict[str, tuple[int, np.ndarray]] = {
        "f32": (Q.F32, x), "f16": (Q.F16, x[:3, :64].astype(np.float16)),
        "q8_0": (Q.Q8_0, gguf_quants.quantize(x, Q.Q8_0)), "q4_0": (Q.Q4_0, gguf_quants.quantize(x, Q.Q4_0)),
        "q5_1": (Q.Q5_1, gguf_quants.quantize(x, Q.Q5_1)), "mxfp4": (Q.MXFP4, gguf_quants.quantize(x, Q.MXFP4)),
        "tq2_0": (Q.TQ2_0, gguf_quants.quantize(x, Q.TQ2_0)),
    }
    for qtype in (Q.Q4_K, Q.Q6_K, Q.IQ4_XS, Q.IQ2_XXS, Q.Q1_0):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        tensors[qtype.name.lower()] = (qtype, rng.integers(0, 256, (2, 512 // block * size), dtype=np.uint8))
    out: dict[str, tuple[int, tuple[int, ...], bytes]] = {}
    for name, (qtype, arr) in tensors.items():
        plain = qtype in (Q.F32, Q.F16)
        shape = arr.shape if plain else gguf_quants.quant_shape_from_byte_shape(arr.shape, qtype)
        raw = arr.astype(arr.dtype.newbyteorder(">")).tobytes() if endian == gguf.GGUFEndian.BIG else arr.tobytes()
        out[name] = (int(qtype), tuple(reversed(shape)), raw)  # GGUF stores dims innermost first
        w.add_tensor(name, arr, raw_dtype=None if plain else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.mark.parametrize("order", ["little", "big"])
def test_gguf_written_by_the_library(order: str, tmp_path: Path) -> None:
    endian = gguf.GGUFEndian.BIG if order == "big" else gguf.GGUFEndian.LITTLE
    path = tmp_path / f"m-{order}.gguf"
    want = _gguf_file(path, endian)
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, 4)[0] == (3 if order == "little" else 3 << 24)
    reader = gguf.GGUFReader(str(path))
    assert {t.name: (int(t.tensor_type), tuple(int(d) for d in t.shape)) for t in reader.tensors} == {
        k: (t, dims) for k, (t, dims, _) in want.items()}
    offsets = {t.name: int(t.data_offset) for t in reader.tensors}
    for t in reader.tensors:  # and the library's reader finds our bytes where it says they are
        assert data[t.data_offset:t.data_offset + t.n_bytes] == want[t.name][2]
    for strict in (False, True):
        h = gguf_header(io.BytesIO(data), len(data), strict=strict)
        assert (h.byte_order, h.version, h.warnings) == (order, 3, [])
        assert {name: (t, dims) for name, t, dims in h.tensors} == {k: (t, d) for k, (t, d, _) in want.items()}
        assert all(t in GGML_TYPES for _, t, _ in h.tensors)
    assert h.data_start == min(offsets.values())
    name, chunks = chunks_of(path, SMALL)
    assert name == "gguf"
    for tname, start in offsets.items():
        mine = [c for c in chunks if c.tensor == tname]
        assert mine and mine[0].offset == start and mine[0].part == 0
        plain = {int(Q.F32): "F32", int(Q.F16): "F16"}.get(want[tname][0])
        assert all(c.dtype == (plain if order == "little" else None) for c in mine)
    assert all(c.tensor is None for c in chunks if c.offset < min(offsets.values()))

    # damaged copies: truncated inside the last tensor, and a shape edited in the tensor infos
    last = max(offsets, key=lambda k: offsets[k])
    cut = data[:offsets[last] + 10]
    assert f"tensor {last!r}" in strict_error(cut, gguf_header)
    o = ">" if order == "big" else "<"
    info = struct.pack(o + "Q", len(b"q8_0")) + b"q8_0" + struct.pack(o + "IQQ", 2, 256, 4)
    assert data.count(info) == 1
    bad = data.replace(info, info[:-8] + struct.pack(o + "Q", 8))  # 4 rows -> 8
    assert "tensor 'q8_0'" in strict_error(bad, gguf_header)


def test_gguf_unknown_type_in_a_library_file_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    want = _gguf_file(path, gguf.GGUFEndian.LITTLE)
    data = path.read_bytes()
    info = struct.pack("<Q", len(b"q4_k")) + b"q4_k" + struct.pack("<I2Q", 2, *want["q4_k"][1])
    pos = data.index(info) + len(info)
    bad = data[:pos] + struct.pack("<I", 250) + data[pos + 4:]  # a type id ggml may assign later
    for strict in (False, True):
        h = gguf_header(io.BytesIO(bad), len(bad), strict=strict)
        assert ("q4_k", 250, want["q4_k"][1]) in h.tensors
        assert len(h.warnings) == 1 and "'q4_k'" in h.warnings[0] and "250" in h.warnings[0]


# -- numpy: a 600-field structured array ----------------------------------------------------------

FIELDS = np.dtype([(f"field_{i:04d}", "<f4" if i % 3 else "<i8", (2,) if i % 5 == 0 else ()) for i in range(600)])


def test_npy_with_a_600_field_header(tmp_path: Path) -> None:
    arr = np.zeros(10, dtype=FIELDS)
    arr["field_0002"] = np.arange(10)
    path = tmp_path / "table.npy"
    np.save(path, arr)
    data = path.read_bytes()
    (hlen,) = struct.unpack_from("<H", data, 8)
    assert data[6] == 1 and 10_000 < hlen < 65_536  # np.load needs max_header_size for it
    assert (np.load(path, max_header_size=hlen) == arr).all()
    for strict in (False, True):
        h = parse_npy_header(io.BytesIO(data), len(data), strict=strict)
        assert (h.shape, h.itemsize, h.data_offset, h.data_length) == ((10,), FIELDS.itemsize, 10 + hlen, arr.nbytes)
        assert h.descr.startswith("[('field_0000', '<i8', (2,)), ('field_0001', '<f4')")
    name, chunks = chunks_of(path)
    assert name == "npy" and [(c.offset, c.tensor) for c in chunks] == [(0, "__header__"), (10 + hlen, None)]

    assert "(10,)" in strict_error(data[:-7], parse_npy_header)
    bad = data.replace(b"'shape': (10,)", b"'shape': (11,)")
    assert bad != data and "shape (11,)" in strict_error(bad, parse_npy_header)
    with pytest.raises(ValueError):
        np.load(io.BytesIO(bad), max_header_size=hlen)


def test_npz_with_a_600_field_member(tmp_path: Path) -> None:
    path = tmp_path / "tables.npz"
    np.savez(path, table=np.zeros(10, dtype=FIELDS), small=np.arange(12, dtype="<f4"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.load(path, max_header_size=100_000) as z:
            assert z["table"].dtype == FIELDS
    data = path.read_bytes()
    arrays = npz_arrays(io.BytesIO(data), len(data), check_crc=True)
    assert {k: (h.shape, h.itemsize) for k, h in arrays.items()} == {"table": ((10,), FIELDS.itemsize),
                                                                     "small": ((12,), 4)}
    name, chunks = chunks_of(path)
    assert name == "npz" and {"table", "small"} <= {c.tensor for c in chunks}
    bad = data.replace(b"'shape': (10,)", b"'shape': (11,)")
    with pytest.raises(ValueError, match=r"^table: .*shape"):
        npz_arrays(io.BytesIO(bad), len(bad))
